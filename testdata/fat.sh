#!/usr/bin/env bash
# Builds FAT12, FAT16 and FAT32 images with mkfs.vfat and fills them with
# mcopy from one source tree, for the tests of snapshot/fat.
#
# $OUT/src            the source tree (what every image must show)
# $OUT/listing.txt    `find` listing of the source tree: type, size, path
# $OUT/fat12.img      mkfs.vfat -F 12, 4 KiB clusters
# $OUT/fat16.img      mkfs.vfat -F 16, 2 KiB clusters
# $OUT/fat32.img      mkfs.vfat -F 32, 512-byte clusters
# $OUT/fat32-4k.img   mkfs.vfat -F 32 -S 4096 (4 KiB sectors)
# $OUT/small12.img    a 64 KiB FAT12 with a few files (fuzz seed)
# $OUT/small.src      the source tree of small12.img
# $OUT/fat32-2k.img   mkfs.fat -F 32 -S 2048 on 8 MiB: FAT32 with 4048 clusters
#                     (issue 10.10). Empty: mtools takes it for FAT12 and finds
#                     no root directory ("No directory slots"), as snapscan
#                     did, and a loop mount needs the vfat module, which the
#                     test machines lack; fsck.fat reads it as FAT32.
#
# Each image gets frag/frag.bin written after a deleted file left a hole,
# so that the file's clusters are not contiguous where mtools reuses holes.
set -euo pipefail
: "${OUT:?}"
export TZ=UTC LC_ALL=C.UTF-8 MTOOLS_SKIP_CHECK=1
cd "$OUT"

# Deterministic pseudo-random bytes: AES-CTR over zeros with a fixed key.
prng() { # prng SEED BYTES
	{ openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null || true; } | head -c "$2"
}

rm -rf src stage small.src
mkdir -p src
printf 'hello from a FAT volume\n' >src/readme.txt
: >src/empty.txt
printf 'mixed\n' >src/MixedCase.TXT
printf 'lower\n' >src/lower.txt
printf 'UPPER\n' >src/UPPER.TXT
printf 'lower base, upper ext\n' >src/shout.TXT
printf 'a long name\n' >'src/A long file name with spaces.text'
printf 'accents\n' >'src/naïve café ünïcödé.txt'
printf 'cjk\n' >'src/日本語のファイル.txt'
# No name outside the BMP: mtools 4.0.32 drops such characters from long
# names (the decoder's surrogate pairs are tested in Go instead).
printf 'dots\n' >'src/many.dots.in.name.tar.gz'
mkdir -p src/big src/clusters src/deep/a/b/c/d/e/f/g src/manyfiles src/frag src/emptydir
prng 1 $((3 * 1024 * 1024 + 123)) >src/big/multi.bin
for n in 512 2048 4096 4097; do prng "$n" "$n" >"src/clusters/exact-$n.bin"; done
printf 'deep\n' >src/deep/a/b/c/d/e/f/g/leaf.txt
for i in $(seq -w 0 299); do printf 'file %s\n' "$i" >"src/manyfiles/File number $i.txt"; done
prng 7 40000 >src/frag/before.bin
prng 8 30000 >src/frag/after.bin
prng 9 70000 >src/frag/frag.bin
find src -exec touch -d '2023-06-01 12:00:00' {} +
touch -d '2024-02-29 13:37:42' src/readme.txt
touch -d '2001-09-09 01:46:40' 'src/naïve café ünïcödé.txt'

# The image gets everything but frag.bin, plus a hole.bin between
# before.bin and after.bin; hole.bin is then deleted and frag.bin copied.
cp -a src stage
rm stage/frag/frag.bin stage/frag/after.bin
prng 10 20000 >stage/frag/hole.bin

fill() { # fill IMAGE
	local img=$1
	mcopy -s -m -i "$img" stage/* ::/
	mcopy -m -i "$img" src/frag/after.bin ::/frag/
	mdel -i "$img" ::/frag/hole.bin
	if [ "$(dd if="$img" bs=1 skip=82 count=5 status=none)" = FAT32 ]; then
		# mtools allocates after the FSInfo "next free cluster" hint;
		# set it to "unknown" (0xFFFFFFFF, as the specification allows)
		# so that the search starts at cluster 2 and fills the hole.
		local bps fsinfo
		bps=$(od -An -tu2 -j11 -N2 "$img" | tr -d ' ')
		fsinfo=$(od -An -tu2 -j48 -N2 "$img" | tr -d ' ')
		printf '\xff\xff\xff\xff' | dd of="$img" bs=1 seek=$((fsinfo * bps + 492)) conv=notrunc status=none
	fi
	mcopy -m -i "$img" src/frag/frag.bin ::/frag/
	fsck.vfat -n "$img" >/dev/null
}

rm -f fat12.img fat16.img fat32.img fat32-4k.img small12.img
mkfs.vfat --invariant -i 12121212 -n FAT12VOL -F 12 -s 8 -C fat12.img 8192 >/dev/null
fill fat12.img
mkfs.vfat --invariant -i 16161616 -n FAT16VOL -F 16 -s 4 -C fat16.img 32768 >/dev/null
fill fat16.img
mkfs.vfat --invariant -i 32323232 -n FAT32VOL -F 32 -s 1 -C fat32.img 49152 >/dev/null
fill fat32.img
mkfs.vfat --invariant -i 32324096 -n BIGSECTORS -F 32 -S 4096 -s 1 -C fat32-4k.img 393216 >/dev/null
fill fat32-4k.img

mkdir -p small.src/sub
printf 'small\n' >small.src/hello.txt
printf 'long name\n' >'small.src/Long Name Here.txt'
printf 'nested\n' >small.src/sub/nested.txt
mkfs.vfat --invariant -i 64646464 -n SMALL -F 12 -s 1 -r 16 -C small12.img 64 >/dev/null
mcopy -s -m -i small12.img small.src/* ::/

rm -f fat32-2k.img
mkfs.fat -F 32 -S 2048 -n SMALL32 -C fat32-2k.img 8192 >/dev/null 2>&1
fsck.fat -n fat32-2k.img 2>&1 | grep -q 'FAT32 according to fat_length' || { echo "fsck.fat does not read fat32-2k.img as FAT32" >&2; exit 1; }

rm -rf stage
(cd src && find . -printf '%y %s %P\n' | sort -k3) >listing.txt
