#!/usr/bin/env bash
# Builds the image for snapshot/ext4's BenchmarkReadTree: 20,000 small files
# (100 folders of 200 files, 1-16 KiB each) and one 256 MiB file, written
# by mkfs.ext4 -d into $OUT/tree.img; the source tree stays in $OUT/src for
# comparisons (cat from a loop mount, or from the source folder).
# Run by internal/testenv.Fixture with $OUT set.
set -euo pipefail
: "${OUT:?OUT must be set}"
S=$OUT/src
mkdir -p "$S"
# One stream of pseudo-random bytes, cut into files of varying sizes.
head -c $((200 * 1024 * 1024)) /dev/zero |
	openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 >"$OUT/pool"
awk 'BEGIN {
	srand(1); off = 0
	for (d = 0; d < 100; d++) for (f = 0; f < 200; f++) {
		size = 1024 + int(rand() * 15 * 1024)
		printf "%02d/f%03d %d %d\n", d, f, off, size
		off += size
	}
}' >"$OUT/plan"
mkdir -p $(seq -f "$S/%02g" 0 99)
while read -r name off size; do
	dd if="$OUT/pool" of="$S/$name" iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none
done <"$OUT/plan"
head -c $((256 * 1024 * 1024)) /dev/zero |
	openssl enc -aes-128-ctr -nosalt -K 0f0e0d0c0b0a09080706050403020100 -iv 00000000000000000000000000000000 >"$S/large.bin"
rm -f "$OUT/pool" "$OUT/plan" "$OUT/tree.img"
mkfs.ext4 -q -F -b 4096 -d "$S" "$OUT/tree.img" 1G
