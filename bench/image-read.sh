#!/usr/bin/env bash
# Issue 11.8's image-read benchmark: every format read end to end through
# snapshot.Open (BenchmarkDiskRead), on real file-system data: an ext4
# made by mkfs.ext4 -d from /usr/bin, /usr/include, /usr/share/doc and
# /usr/share/locale (binaries, headers, documentation, message catalogs:
# data that compresses the way guests' data does), in a 1280 MiB disk
# whose free space stays unallocated.
#
# Every image converted from that raw disk is benchmarked: qcow2 (plain,
# zlib- and zstd-compressed), VMDK monolithicSparse, streamOptimized,
# monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, VHD dynamic
# and fixed, VHDX dynamic and fixed. For each it reports the best of three
# rounds of MB/s of virtual disk, alloc-MB/s (the raw disk's allocated
# bytes per second: unallocated ranges cost a format nothing, so this is
# the fair figure), the ratio to raw read through snapshot in the same
# round, and the share of data stored compressed (from Map; for qcow2 also
# qemu-img check's figure). Each timed read was first checked against the
# raw disk's SHA-256. Raw through snapshot is also compared with
# `cat disk.raw >/dev/null` in the same rounds. Page cache warm.
#
#   bench/image-read.sh [DIR]
set -euo pipefail
DIR=${1:-/tmp/snapscan-image-bench}
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
mkdir -p "$DIR"

if [[ ! -f $DIR/.done3 ]]; then
	rm -rf "$DIR"/* "$DIR"/.done*
	stage="$DIR/stage"
	mkdir -p "$stage/share"
	cp -a /usr/bin /usr/include "$stage/"
	cp -a /usr/share/doc /usr/share/locale "$stage/share/"
	truncate -s 1280M "$DIR/disk.raw"
	mkfs.ext4 -q -L usr -d "$stage" "$DIR/disk.raw"
	rm -rf "$stage"
	sha256sum "$DIR/disk.raw" | cut -d' ' -f1 >"$DIR/disk.raw.sha256"
	# Allocated bytes of the raw disk: what qemu-img map calls data.
	qemu-img map --output=json -f raw "$DIR/disk.raw" |
		awk -F'[:,]' '/"data": true/ { for (i = 1; i < NF; i++) if ($i ~ /"length"/) s += $(i+1) } END { printf "%d\n", s }' >"$DIR/disk.raw.alloc"
	conv() { qemu-img convert -f raw "$@"; }
	conv -O qcow2 "$DIR/disk.raw" "$DIR/disk.qcow2"
	conv -O qcow2 -c "$DIR/disk.raw" "$DIR/disk-zlib.qcow2"
	conv -O qcow2 -c -o compression_type=zstd "$DIR/disk.raw" "$DIR/disk-zstd.qcow2"
	for sub in monolithicSparse streamOptimized monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
		conv -O vmdk -o subformat=$sub "$DIR/disk.raw" "$DIR/$sub.vmdk"
	done
	conv -O vpc -o subformat=dynamic,force_size=on "$DIR/disk.raw" "$DIR/dynamic.vhd"
	conv -O vpc -o subformat=fixed,force_size=on "$DIR/disk.raw" "$DIR/fixed.vhd"
	conv -O vhdx -o subformat=dynamic "$DIR/disk.raw" "$DIR/dynamic.vhdx"
	conv -O vhdx -o subformat=fixed "$DIR/disk.raw" "$DIR/fixed.vhdx"
	touch "$DIR/.done3"
fi
echo "disk.raw: $(stat -c %s "$DIR/disk.raw") bytes, $(cat "$DIR/disk.raw.alloc") allocated"
for q in disk.qcow2 disk-zlib.qcow2 disk-zstd.qcow2; do
	printf '%-20s qemu-img check: ' "$q"
	qemu-img check "$DIR/$q" | grep -o '[0-9.]*% fragmented, [0-9.]*% compressed clusters' || echo '?'
done
cat "$DIR"/* >/dev/null 2>&1 || true # page cache warm

export SNAPSCAN_BENCH_DIR=$DIR
go test -c -o "$DIR/snapshot.test" ./snapshot/
for round in 1 2 3; do
	s=$(date +%s.%N); cat "$DIR/disk.raw" >/dev/null; e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" -v n="$(stat -c %s "$DIR/disk.raw")" -v r=$round \
		'BEGIN { printf "round %d BenchmarkCat/disk.raw 1 0 ns/op %.1f MB/s\n", r, n / 1e6 / (e - s) }'
	"$DIR/snapshot.test" -test.run '^$' -test.bench BenchmarkDiskRead -test.benchtime 1x | sed "s/^/round $round /"
done | tee "$DIR/result.txt"
echo
echo "best round of 3 for each image; 'vs raw' is its alloc-MB/s over raw's (disk.raw through"
echo "snapshot) in that same round; for BenchmarkCat it is raw through snapshot over cat, MB/s:"
awk '$3 ~ /^Benchmark/ {
	r = $2; n = $3; sub(/-[0-9]+$/, "", n); sub(/^BenchmarkDiskRead\//, "", n)
	for (i = 4; i < NF; i++) {
		if ($(i+1) == "MB/s") m[r, n] = $i
		if ($(i+1) == "alloc-MB/s") a[r, n] = $i
		if ($(i+1) == "%compressed") c[n] = $i
	}
	names[n] = 1; rounds[r] = 1
}
END {
	printf "%-28s %9s %11s %7s %11s\n", "image", "MB/s", "alloc-MB/s", "vs raw", "compressed"
	for (n in names) {
		cat = n ~ /^BenchmarkCat/; best = -1
		for (r in rounds) { x = cat ? m[r, n] : a[r, n]; if (x > best) { best = x; br = r } }
		ratio = cat ? 100 * m[br, "disk.raw"] / m[br, n] : 100 * a[br, n] / a[br, "disk.raw"]
		printf "%-28s %9.1f %11s %6.0f%% %10s\n", n, m[br, n], cat ? "-" : sprintf("%.1f", a[br, n]), ratio, cat ? "-" : c[n] "%"
	}
}' "$DIR/result.txt" | sort
