#!/usr/bin/env bash
# Builds squashfs images with mksquashfs from one source tree, for the
# tests of snapshot/squashfs.
#
# $OUT/src           the source tree (what every image must show)
# $OUT/listing.txt   `find` listing of the source tree: type, size, path
# $OUT/gzip.sqfs     mksquashfs defaults (gzip, 128 KiB blocks, fragments)
# $OUT/zstd.sqfs     -comp zstd
# $OUT/xz.sqfs       -comp xz -b 1M
# $OUT/zstd-4k.sqfs, xz-4k.sqfs  -comp zstd / xz -b 4096: metadata blocks
#                    (8 KiB) expand to more than a data block (issue 10.10:
#                    the 300-entry src/wide listing was refused)
# $OUT/lz4.sqfs      -comp lz4 -no-fragments (refused: not supported)
# $OUT/lzo.sqfs      -comp lzo (refused: not supported)
# $OUT/small.sqfs    gzip image of $OUT/small.src, for the fuzz seed
# $OUT/small-zstd.sqfs, small-xz.sqfs  the same in zstd and xz (more seeds)
# $OUT/bomb-COMP.sqfs one 256 KiB random file and 40 small ones, inodes and data stored
#                    uncompressed (-noI -noD), for COMP in gzip zstd xz: the
#                    tests overwrite its blocks with decompression bombs
set -euo pipefail
: "${OUT:?}"
export TZ=UTC LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=1700000000
cd "$OUT"

prng() { # prng SEED BYTES: deterministic pseudo-random bytes
	{ openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null || true; } | head -c "$2"
}

rm -rf src small.src
mkdir -p src/dir/sub/deeper src/big src/empty-dir src/links
printf 'hello from squashfs\n' >src/readme.txt
: >src/empty.txt
printf '.hidden\n' >src/.hidden
printf 'Case\n' >src/Case.txt
printf 'case\n' >src/case.txt
printf 'accents\n' >'src/naïve café.txt'
printf 'astral\n' >'src/emoji 😀.txt'
printf 'deep\n' >src/dir/sub/deeper/leaf.txt
prng 1 $((3 * 1024 * 1024 + 17)) >src/big/multi.bin
prng 2 131072 >src/big/one-block.bin
{ yes 'compressible line of text' || true; } | head -c 500000 >src/big/text.txt
# A sparse file: 1 MiB of data, a 5 MiB hole, a tail after it. mksquashfs
# stores all-zero blocks as sparse (size 0) blocks.
prng 3 1048576 >src/big/sparse.bin
truncate -s $((6 * 1024 * 1024)) src/big/sparse.bin
prng 4 1000 >>src/big/sparse.bin
for i in $(seq -w 0 99); do printf 'file %s\n' "$i" >"src/dir/file-$i.txt"; done
# A listing longer than a metadata block (with more than 256 entries, so
# several headers): mksquashfs writes an extended directory inode with an
# index. A hard link makes an extended file inode.
mkdir -p src/wide
for i in $(seq -w 0 299); do : >"src/wide/a-rather-long-file-name-to-fill-the-listing-$i"; done
ln src/readme.txt src/hardlink.txt
ln -s ../readme.txt src/links/relative
ln -s /etc/passwd src/links/absolute
ln -s dangling-target src/links/dangling
ln -s ../dir src/links/to-dir
mkfifo src/links/fifo
find src -exec touch -h -d '2023-06-01 12:00:00' {} +

mkdir -p small.src/sub
printf 'small\n' >small.src/hello.txt
printf 'nested\n' >small.src/sub/nested.txt
ln -s hello.txt small.src/link
find small.src -exec touch -h -d '2023-06-01 12:00:00' {} +

mk() { # mk OUTPUT SOURCE ARGS...
	local out=$1 src=$2
	shift 2
	rm -f "$out"
	mksquashfs "$src" "$out" -quiet -no-progress -all-root "$@" >/dev/null
}
mk gzip.sqfs src
mk zstd.sqfs src -comp zstd
mk xz.sqfs src -comp xz -b 1M
mk zstd-4k.sqfs src -comp zstd -b 4096
mk xz-4k.sqfs src -comp xz -b 4096
mk lz4.sqfs src -comp lz4 -no-fragments
mk lzo.sqfs src -comp lzo
mk small.sqfs small.src
mk small-zstd.sqfs small.src -comp zstd
mk small-xz.sqfs small.src -comp xz

rm -rf bomb.src
mkdir bomb.src
prng 5 262144 >bomb.src/file.bin
# Small files make the inode table big enough to hold a metadata bomb.
for i in $(seq -w 1 40); do printf 'small %s\n' "$i" >"bomb.src/small-$i.txt"; done
find bomb.src -exec touch -h -d '2023-06-01 12:00:00' {} +
for c in gzip zstd xz; do
	mk "bomb-$c.sqfs" bomb.src -comp "$c" -noI -noD -no-fragments
done

(cd src && find . -printf '%y %s %P\n' | sort -k3) >listing.txt
