#!/usr/bin/env bash
# Measures reading a tree of 20,000 small files and one 1 GiB file from an
# NTFS image: through snapshot/ntfs (BenchmarkReadTree) and through an
# ntfs-3g mount of the same image (cat of every file), page cache warm.
# Usage: bench/ntfs-tree.sh [WORKDIR]   (root, /dev/fuse; about 1.2 GiB)
set -euo pipefail
work=${1:-/tmp/snapscan-bench-ntfs}
repo=$(cd "$(dirname "$0")/.." && pwd)
img="$work/ntfs-tree.img"
mnt="$work/mnt"
mkdir -p "$work" "$mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt" || true; }
trap cleanup EXIT

if [ ! -f "$work/.done" ]; then
	rm -f "$img"
	truncate -s 1400M "$img"
	mkntfs -F -f -q -c 4096 "$img" >/dev/null 2>&1
	ntfs-3g "$img" "$mnt"
	for d in $(seq -w 0 19); do
		mkdir "$mnt/d$d"
		for f in $(seq -w 0 999); do
			head -c $((1000 + 10#$f * 7)) /dev/urandom >"$mnt/d$d/f$f.bin"
		done
	done
	head -c $((1 << 30)) < <(openssl enc -aes-128-ctr -nosalt -K 0123456789abcdef0123456789abcdef -iv 0 </dev/zero 2>/dev/null) >"$mnt/big.bin"
	umount "$mnt"
	touch "$work/.done"
fi

ntfs-3g -o ro "$img" "$mnt"
(cd "$mnt" && find . -type f -print0 | xargs -0 cat >/dev/null) # warm
bytes=$(cd "$mnt" && find . -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
for i in 1 2; do
	start=$(date +%s.%N)
	(cd "$mnt" && find . -type f -print0 | xargs -0 cat >/dev/null)
	end=$(date +%s.%N)
	awk -v s="$start" -v e="$end" -v b="$bytes" 'BEGIN { t = e - s; printf "ntfs-3g cat: 20001 files, %d bytes in %.2fs: %.0f files/s, %.1f MB/s\n", b, t, 20001 / t, b / t / 1e6 }'
done
umount "$mnt"

cd "$repo"
SNAPSCAN_BENCH_DIR="$work" go test ./snapshot/ntfs/ -run '^$' -bench BenchmarkReadTree -benchtime 2x
