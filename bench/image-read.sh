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
# raw disk's SHA-256. The reference in every round is qemu's own reader on
# the same image (`qemu-img bench`, 4 MiB sequential reads through the
# page cache), and raw through snapshot is compared with
# `cat disk.raw >/dev/null`. Page cache warm.
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
images="disk.raw:raw disk.qcow2:qcow2 disk-zlib.qcow2:qcow2 disk-zstd.qcow2:qcow2 monolithicSparse.vmdk:vmdk
	streamOptimized.vmdk:vmdk monolithicFlat.vmdk:vmdk twoGbMaxExtentSparse.vmdk:vmdk twoGbMaxExtentFlat.vmdk:vmdk
	dynamic.vhd:vpc fixed.vhd:vpc dynamic.vhdx:vhdx fixed.vhdx:vhdx"
# qemubench IMAGE FORMAT: the reference, qemu's own reader, reading the
# same disk start to end in 4 MiB requests through the page cache.
qemubench() {
	local size count t
	size=$(qemu-img info -f "$2" --output=json "$DIR/$1" | awk -F'[:,]' '/"virtual-size"/ { print $2 + 0; exit }')
	count=$(( (size + 4194303) / 4194304 ))
	t=$(qemu-img bench -f "$2" -t writeback -c "$count" -s 4M -S 4M -d 1 "$DIR/$1" | awk '/Run completed in/ { print $4 }')
	awk -v n="$size" -v t="$t" -v f="$1" 'BEGIN { printf "BenchmarkQemu/%s 1 0 ns/op %.1f MB/s\n", f, n / 1e6 / t }'
}
go test -c -o "$DIR/snapshot.test" ./snapshot/
for round in 1 2 3; do
	s=$(date +%s.%N); cat "$DIR/disk.raw" >/dev/null; e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" -v n="$(stat -c %s "$DIR/disk.raw")" -v r=$round \
		'BEGIN { printf "round %d BenchmarkCat/disk.raw 1 0 ns/op %.1f MB/s\n", r, n / 1e6 / (e - s) }'
	"$DIR/snapshot.test" -test.run '^$' -test.bench BenchmarkDiskRead -test.benchtime 1x | sed "s/^/round $round /"
	for i in $images; do qemubench "${i%%:*}" "${i##*:}" | sed "s/^/round $round /"; done
done | tee "$DIR/result.txt"
echo
echo "best round of 3 for each image. 'vs raw': its alloc-MB/s over raw's (disk.raw through snapshot)"
echo "in that round; 'vs qemu': its MB/s over qemu-img bench's on the same image in that round;"
echo "for BenchmarkCat, 'vs raw' is raw through snapshot over cat:"
awk '$3 ~ /^Benchmark/ {
	r = $2; n = $3; sub(/-[0-9]+$/, "", n); q = sub(/^BenchmarkQemu\//, "", n); sub(/^BenchmarkDiskRead\//, "", n)
	for (i = 4; i < NF; i++) {
		if ($(i+1) == "MB/s") { if (q) qm[r, n] = $i; else m[r, n] = $i }
		if ($(i+1) == "alloc-MB/s") a[r, n] = $i
		if ($(i+1) == "%compressed") c[n] = $i
	}
	if (!q) names[n] = 1
	rounds[r] = 1
}
END {
	for (n in names) {
		cat = n ~ /^BenchmarkCat/; best = -1
		for (r in rounds) { x = cat ? m[r, n] : a[r, n]; if (x > best) { best = x; br = r } }
		ratio = cat ? 100 * m[br, "disk.raw"] / m[br, n] : 100 * a[br, n] / a[br, "disk.raw"]
		if (cat) { printf "%-26s %9.1f %11s %6.0f%% %10s %8s %11s\n", n, m[br, n], "-", ratio, "-", "-", "-"; continue }
		printf "%-26s %9.1f %11.1f %6.0f%% %10.1f %7.0f%% %10s%%\n", n, m[br, n], a[br, n], ratio, qm[br, n], 100 * m[br, n] / qm[br, n], c[n]
	}
}' "$DIR/result.txt" | sort | sed '1i image                           MB/s  alloc-MB/s  vs raw  qemu MB/s  vs qemu  compressed'
