#!/usr/bin/env bash
# Builds the ext2/ext3/ext4 fixtures of snapshot/ext4 with real tools only
# (mke2fs -d, debugfs -w), and saves beside them what the tests compare
# against: the source trees and their listings, and byte offsets of on-disk
# structures found with debugfs/dumpe2fs for the corruption tests.
#
# Run by internal/testenv.Fixture with $OUT set; everything is made in $OUT.
#
# Outputs:
#   src/                  source tree of the mke2fs -d images
#   src.list              listing of src/ (see list() below)
#   <name>.img            images made from src/ (see IMAGES below)
#   frag.img, fragsrc/, fragsrc.list
#                         ext4 with a fragmented file (extent tree depth >= 1)
#                         and a preallocated (uninitialized) range, made by
#                         debugfs -w; fragsrc/ holds what the image holds
#   <name>.offsets        key=value byte offsets of structures in <name>.img
#   <name>.dumpe2fs       dumpe2fs -h output, for people debugging a failure
#   tiny.img              a 128 KiB ext4 with a few files (fuzz seed source)
set -euo pipefail
: "${OUT:?OUT must be set}"
export LC_ALL=C TZ=UTC
# Fixed UUID and hash seed keep the images (nearly) the same between runs.
export E2FSPROGS_FAKE_TIME=1700000000
UUID=5a5a5a5a-1111-2222-3333-444444444444
SEED=6b6b6b6b-1111-2222-3333-444444444444

# bytes N SEED: N deterministic pseudo-random bytes (AES-CTR of zeros).
bytes() {
	head -c "$1" /dev/zero |
		openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$2")" -iv 00000000000000000000000000000000
}

# list DIR: one line per entry below DIR, sorted:
#   path<TAB>type<TAB>size<TAB>mode<TAB>mtime<TAB>uid<TAB>gid<TAB>target<TAB>sha256
# type is file, dir, symlink, fifo, char, block; size is "-" for dirs;
# target only for symlinks, sha256 only for regular files.
list() {
	(
		cd "$1"
		# Files of 1 GiB and more (sparse) get no sum: reading gigabytes of
		# holes through the kernel is slow here; the tests compare windows.
		find . -mindepth 1 -type f -size -1073741824c -print0 | sort -z | xargs -0 -r sha256sum -- >"$OUT/.sums"
		find . -mindepth 1 -printf '%P\t%y\t%s\t%m\t%T@\t%U\t%G\t%l\n' | sort |
			awk -F'\t' -v OFS='\t' '
				FILENAME == ARGV[1] { sum[substr($0, 67)] = substr($0, 1, 64); next }
				{
					split($5, t, "."); $5 = t[1]
					type = $2; sha = "-"; target = "-"
					if (type == "f") { type = "file"; if (("./" $1) in sum) sha = sum["./" $1] }
					else if (type == "d") { type = "dir"; $3 = "-" }
					else if (type == "l") { type = "symlink"; target = $8 }
					else if (type == "p") type = "fifo"
					else if (type == "c") type = "char"
					else if (type == "b") type = "block"
					else type = "other"
					print $1, type, $3, $4, $5, $6, $7, target, sha
				}' "$OUT/.sums" -
		rm -f "$OUT/.sums"
	)
}

# ---- the source tree ------------------------------------------------------
S=$OUT/src
mkdir -p "$S"
: >"$S/empty"
printf 'hello, ext4\n' >"$S/small.txt"
for n in 1 59 60 61 100 1023 1024 1025 4095 4096 4097 65539; do
	bytes "$n" "$n" >"$S/size-$n"
done
bytes $((5 * 1024 * 1024 + 123)) 7 >"$S/big.bin"
# Holes at the start, in the middle and at the end; the second run of data
# starts at an unaligned offset and lies past 64 MiB, where 1 KiB-block
# ext2 needs triple indirect blocks.
truncate -s 72M "$S/sparse"
bytes 65536 11 | dd of="$S/sparse" bs=64K seek=16 conv=notrunc status=none
bytes 100000 12 | dd of="$S/sparse" bs=1 seek=$((66 * 1024 * 1024 + 5)) conv=notrunc status=none
# A huge sparse file: i_size_high, and triple indirect blocks at 4 KiB.
truncate -s 5G "$S/huge"
bytes 8192 13 | dd of="$S/huge" bs=4096 seek=$((4608 * 256)) conv=notrunc status=none
# Enough entries for mke2fs to hash the directory (htree).
mkdir "$S/hashed"
for i in $(seq -w 0 2999); do
	printf 'entry %s\n' "$i" >"$S/hashed/file-with-a-longer-name-$i"
done
mkdir -p "$S/a/b/c/d/e"
printf 'deep\n' >"$S/a/b/c/d/e/leaf.txt"
mkdir "$S/dir with spaces"
printf 'spaces\n' >"$S/dir with spaces/file with spaces.txt"
printf 'utf8\n' >"$S/ünïcødé-日本語.txt"
mkdir "$S/empty-dir"
ln -s 0123456789 "$S/fast-link"
LONG=$(printf 'abcdefghi/%.0s' $(seq 20))
ln -s "$LONG" "$S/slow-link"
ln -s a/b/c/d/e/leaf.txt "$S/rel-link"
# 100 bytes: too long for i_block, short enough for inline data.
ln -s "$(printf 'mid/%.0s' $(seq 25))" "$S/mid-link"
ln "$S/small.txt" "$S/hardlink.txt"
chmod 4755 "$S/size-100"
chmod 0600 "$S/size-59"
chmod 1777 "$S/empty-dir"
mkfifo "$S/fifo"
if [ "$(id -u)" = 0 ]; then
	mknod "$S/null-dev" c 1 3
	mknod "$S/block-dev" b 7 200
	chown 1234:5678 "$S/size-61"
fi
find "$S" -exec touch -h -d @1600000000 {} +
touch -h -d @1650000000.5 "$S/small.txt"
list "$S" >"$OUT/src.list"

# ---- images made with mke2fs -d -------------------------------------------
# name | mke2fs program and options | size
IMAGES=(
	"ext4|mkfs.ext4 -b 4096 -L ext4-default|96M"
	"ext4-32bit|mkfs.ext4 -b 4096 -O ^64bit,^metadata_csum|96M"
	"ext4-1k-metabg|mkfs.ext4 -b 1024 -O meta_bg,^resize_inode|160M"
	"ext4-inline|mkfs.ext4 -b 4096 -O inline_data|96M"
	"ext4-128|mkfs.ext4 -b 4096 -I 128|96M"
	"ext4-64k|mkfs.ext4 -b 65536|768M"
	"ext4-noextent|mkfs.ext4 -b 4096 -O ^extent,^64bit|96M"
	"ext4-bigalloc|mkfs.ext4 -b 4096 -O bigalloc -C 16384|160M"
	"ext2-1k|mkfs.ext2 -b 1024 -L old-ext2|160M"
	"ext3|mkfs.ext3 -b 4096|96M"
)
for spec in "${IMAGES[@]}"; do
	IFS='|' read -r name cmd size <<<"$spec"
	rm -f "$OUT/$name.img"
	echo "$(date +%T) $name" >&2
	$cmd -q -F -U "$UUID" -E hash_seed=$SEED,lazy_itable_init=0 -d "$S" "$OUT/$name.img" "$size"
	# mke2fs -d writes directories linearly; e2fsck -D rebuilds the large
	# ones as hashed (htree) directories. Exit status 1 means "changed".
	e2fsck -fyD "$OUT/$name.img" >/dev/null 2>&1 || [ $? -le 1 ]
	dumpe2fs -h "$OUT/$name.img" >"$OUT/$name.dumpe2fs" 2>/dev/null
done

# mke2fs 1.47.0 -d mishandles sparse files when inline_data is on: it
# writes a block at offset 0 and drops the trailing hole from i_size.
# Record what the image really holds (by debugfs) for the tests.
img=$OUT/ext4-inline.img
debugfs -R "dump /sparse $OUT/ext4-inline.sparse" "$img" >/dev/null 2>&1
{
	printf 'sparse\t%s\t%s\n' "$(stat -c %s "$OUT/ext4-inline.sparse")" \
		"$(sha256sum <"$OUT/ext4-inline.sparse" | cut -d' ' -f1)"
	printf 'huge\t%s\t-\n' "$(debugfs -R "stat /huge" "$img" 2>/dev/null | sed -n 's/^User:.*Size: \([0-9]*\).*/\1/p')"
} >"$OUT/ext4-inline.override"
rm -f "$OUT/ext4-inline.sparse"

# ---- offsets for the corruption tests -------------------------------------
# imap prints "Inode 12 is part of block group 0\n\tlocated at block 1059, offset 0x0b00".
inode_off() {
	local img=$1 path=$2 bs blk off
	bs=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /, "", $2); print $2}')
	read -r blk off < <(debugfs -R "imap $path" "$img" 2>/dev/null |
		sed -n 's/.*located at block \([0-9]*\), offset \(0x[0-9a-f]*\).*/\1 \2/p')
	echo $((blk * bs + off))
}
block_off() { # block_off IMG PATH LOGICAL-BLOCK: byte offset of a file's block
	local img=$1 path=$2 lb=$3 bs blk
	bs=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /, "", $2); print $2}')
	blk=$(debugfs -R "bmap $path $lb" "$img" 2>/dev/null)
	echo $((blk * bs))
}
for name in ext4 ext2-1k; do
	img=$OUT/$name.img
	bs=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /, "", $2); print $2}')
	first=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^First block/ {gsub(/ /, "", $2); print $2}')
	{
		echo "blocksize=$bs"
		echo "superblock=1024"
		echo "gdt=$(((first + 1) * bs))"
		echo "root_inode=$(inode_off "$img" /)"
		echo "big_inode=$(inode_off "$img" /big.bin)"
		echo "hashed_inode=$(inode_off "$img" /hashed)"
		echo "hashed_block0=$(block_off "$img" /hashed 0)"
		echo "hashed_block1=$(block_off "$img" /hashed 1)"
		echo "root_block0=$(block_off "$img" / 0)"
		echo "sparse_inode=$(inode_off "$img" /sparse)"
		echo "slow_link_inode=$(inode_off "$img" /slow-link)"
	} >"$OUT/$name.offsets"
done

# ---- a fragmented file and a preallocated range (debugfs -w) --------------
F=$OUT/fragsrc
mkdir -p "$F" "$OUT/fragtmp"
bytes 1024 21 >"$OUT/fragtmp/chunk"
rm -f "$OUT/frag.img"
mkfs.ext4 -q -F -b 1024 -U "$UUID" -E hash_seed=$SEED -O ^flex_bg,^has_journal -N 4096 "$OUT/frag.img" 8M
{
	echo "mkdir c"
	for i in $(seq -w 0 3999); do echo "write $OUT/fragtmp/chunk c/$i"; done
	for i in $(seq -w 1 2 3999); do echo "rm c/$i"; done
} >"$OUT/fragtmp/cmds1"
debugfs -w -f "$OUT/fragtmp/cmds1" "$OUT/frag.img" >/dev/null 2>&1
# The large file takes the 2000 one-block holes left by rm.
bytes $((1500 * 1024 + 77)) 22 >"$OUT/fragtmp/big.bin"
# pre: data in its first and last block; blocks 1..14 preallocated, uninit.
truncate -s 16K "$OUT/fragtmp/pre"
bytes 1024 23 | dd of="$OUT/fragtmp/pre" conv=notrunc status=none
bytes 1024 24 | dd of="$OUT/fragtmp/pre" bs=1024 seek=15 conv=notrunc status=none
{
	echo "write $OUT/fragtmp/big.bin big.bin"
	echo "write $OUT/fragtmp/pre pre"
	echo "fallocate pre 1 14"
} >"$OUT/fragtmp/cmds2"
debugfs -w -f "$OUT/fragtmp/cmds2" "$OUT/frag.img" >/dev/null 2>&1
debugfs -R "ex big.bin" "$OUT/frag.img" >"$OUT/frag.big.extents" 2>/dev/null
debugfs -R "ex pre" "$OUT/frag.img" >"$OUT/frag.pre.extents" 2>/dev/null
depth=$(sed -n '2s#^ *[0-9]*/ *\([0-9]*\).*#\1#p' "$OUT/frag.big.extents")
if [ "${depth:-0}" -lt 1 ]; then
	echo "frag.img: big.bin extent tree depth ${depth:-?}, want >= 1" >&2
	exit 1
fi
grep -q Uninit "$OUT/frag.pre.extents" || {
	echo "frag.img: pre has no uninitialized extent" >&2
	exit 1
}
# The small files have done their job (big.bin is fragmented; the freed
# blocks under pre's unwritten extents still hold their bytes): drop them.
{
	for i in $(seq -w 0 2 3999); do echo "rm c/$i"; done
	echo "rmdir c"
} >"$OUT/fragtmp/cmds3"
debugfs -w -f "$OUT/fragtmp/cmds3" "$OUT/frag.img" >/dev/null 2>&1
# fragsrc mirrors what frag.img holds (contents only; modes and times differ).
cp "$OUT/fragtmp/big.bin" "$OUT/fragtmp/pre" "$F/"
list "$F" >"$OUT/fragsrc.list"
echo "depth=$depth" >"$OUT/frag.offsets"
idx=$(sed -n '2s#/ *#/#gp' "$OUT/frag.big.extents" | awk '{print $6}')
echo "big_index_block=$((idx * 1024))" >>"$OUT/frag.offsets"
rm -rf "$OUT/fragtmp"

# ---- tiny images: fuzz seeds and a directory loop -------------------------
# 64 KiB each; their trailing zeros are cut off for the committed seeds.
T=$OUT/tinysrc
mkdir -p "$T/d" "$T/i"
printf 'tiny\n' >"$T/a.txt"
bytes 3000 31 >"$T/d/b.bin"
printf 'x' >"$T/i/s"
ln -s a.txt "$T/l"
TINY=(
	"tiny-ext4|mkfs.ext4 -O ^has_journal,^resize_inode"
	"tiny-ext2|mkfs.ext2 -O ^resize_inode"
	"tiny-inline|mkfs.ext4 -O ^has_journal,^resize_inode,inline_data"
)
for spec in "${TINY[@]}"; do
	IFS='|' read -r name cmd <<<"$spec"
	rm -f "$OUT/$name.img"
	truncate -s 64K "$OUT/$name.img"
	$cmd -q -F -b 1024 -N 32 -U "$UUID" -E hash_seed=$SEED -d "$T" "$OUT/$name.img" 64
done
list "$T" >"$OUT/tinysrc.list"
# loop.img: extra links to directories, which a walker must not follow
# forever: d/self -> d, d/up -> /, and again -> d from the root.
cp "$OUT/tiny-ext4.img" "$OUT/loop.img"
debugfs -w -f - "$OUT/loop.img" >/dev/null 2>&1 <<'CMDS'
link /d /d/self
link / /d/up
link /d /again
CMDS
debugfs -R "ls -l /d" "$OUT/loop.img" 2>/dev/null | grep -q self || {
	echo "loop.img: debugfs link failed" >&2
	exit 1
}
