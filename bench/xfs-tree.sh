#!/usr/bin/env bash
# Benchmark of snapshot/xfs against the kernel's XFS on the same image.
#
#   bench/xfs-tree.sh [WORKDIR]      (root; default WORKDIR /tmp/snapscan-xfs-bench)
#
# Builds WORKDIR/xfs-bench.img (v5, made through a loop mount): small/ holds
# 20,000 files of 1-16 KiB in 100 folders, big/file holds 1 GiB. Then reads
# every file from a read-only kernel mount with cat (page cache warm: the
# second of two runs is timed) and through the package
# (BenchmarkReadTree, SNAPSCAN_BENCH_DIR=WORKDIR), single-threaded both.
# The machine's load shows in the numbers: run it a few times.
set -euo pipefail
W=${1:-/tmp/snapscan-xfs-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$W"
IMG=$W/xfs-bench.img
MNT=$(mktemp -d)
trap 'umount "$MNT" 2>/dev/null || true; rmdir "$MNT"' EXIT

if [ ! -e "$W/.done" ]; then
	rm -f "$IMG"; truncate -s 2G "$IMG"
	mkfs.xfs -q -L bench "$IMG"
	mount -o loop "$IMG" "$MNT"
	mkdir "$MNT/small" "$MNT/big"
	head -c 1G /dev/urandom >"$MNT/big/file"
	head -c 200M /dev/urandom >"$W/pool"
	i=0
	for d in $(seq -w 0 99); do
		mkdir "$MNT/small/d$d"
		for f in $(seq -w 0 199); do
			n=$(( (i * 7919) % 15360 + 1024 ))
			dd if="$W/pool" of="$MNT/small/d$d/f$f" bs=$n count=1 skip=$((i * 4096)) iflag=skip_bytes status=none
			i=$((i + 1))
		done
	done
	rm "$W/pool"
	umount "$MNT"
	touch "$W/.done"
fi

mount -o loop,ro "$IMG" "$MNT"
small_bytes=$(du -sb --apparent-size "$MNT/small" | cut -f1)
kernel() { # label dir
	(cd "$MNT" && find "$2" -type f -print0 | xargs -0 cat >/dev/null) # warm
	local t0 t1
	t0=$(date +%s.%N)
	(cd "$MNT" && find "$2" -type f -print0 | xargs -0 cat >/dev/null)
	t1=$(date +%s.%N)
	echo "$1 $t0 $t1"
}
read -r _ s0 s1 < <(kernel small small)
# The big file through dd, not cat: every byte copied to user space, as
# the Go reader does (cat to /dev/null can take a shorter path).
(cd "$MNT" && dd if=big/file of=/dev/null bs=128K status=none) # warm
b0=$(date +%s.%N)
(cd "$MNT" && dd if=big/file of=/dev/null bs=128K status=none)
b1=$(date +%s.%N)
umount "$MNT"
awk -v s0="$s0" -v s1="$s1" -v b0="$b0" -v b1="$b1" -v sb="$small_bytes" 'BEGIN {
	printf "kernel mount, 20000 small files: %.3f s, %.0f files/s, %.1f MB/s\n", s1 - s0, 20000 / (s1 - s0), sb / 1e6 / (s1 - s0)
	printf "kernel mount, 1 GiB file:        %.3f s, %.1f MB/s\n", b1 - b0, 1073741824 / 1e6 / (b1 - b0)
}'
cd "$ROOT"
SNAPSCAN_BENCH_DIR=$W go test ./snapshot/xfs/ -run '^$' -bench BenchmarkReadTree -benchtime 3x -count 1
