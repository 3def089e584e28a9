#!/usr/bin/env bash
# Builds the NTFS fixtures of snapshot/ntfs with the real tools: mkntfs makes
# the volume, ntfs-3g (FUSE, as root) populates it with everything the
# package must read: resident, non-resident, sparse and LZNT1-compressed data,
# alternate data streams, hard links, symbolic links, a junction (mount-point
# reparse point), a DOS 8.3 short name, and a directory of 2000 entries (index
# allocation, B+tree).
#
# Output in $OUT:
#   ntfs.img       the volume (label "SnapScanVol")
#   expect/        the expected tree, copied back from the mounted volume;
#                  each named stream is a file "name:stream" beside its file
#   small.img      a 2 MiB volume with a few files (seeds the fuzz corpus)
#   suite.img      a 4 MiB volume of every kind of object, small enough for
#                  the vfstest suite (which copies and walks it many times):
#                  resident data (one value across a fixup boundary), runs,
#                  a sparse file, LZNT1 units (compressed, stored whole and
#                  sparse), streams, a hard link, Interix and reparse-point
#                  links, an index allocation, a file whose names need an
#                  attribute list
#   links.txt      "path<TAB>target" of every symbolic link and junction, as
#                  the package reports them (the reparse point's print name)
#
# Needs: mkntfs, ntfs-3g, setfattr, getfattr, openssl, iconv; root and /dev/fuse.
set -euo pipefail
: "${OUT:?OUT must be set}"

img="$OUT/ntfs.img"
mnt="$OUT/mnt"
mkdir -p "$mnt"

# Deterministic pseudo-random bytes: AES-CTR keystream of a fixed key.
prng() { # prng SEED BYTES
	head -c "$2" < <(openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null)
}
le16() { printf '%02x%02x' $(($1 & 255)) $(($1 >> 8 & 255)); }
le32() { printf '%s%s' "$(le16 $(($1 & 65535)))" "$(le16 $(($1 >> 16 & 65535)))"; }
utf16hex() { printf '%s' "$1" | iconv -f UTF-8 -t UTF-16LE | od -An -v -tx1 | tr -d ' \n'; }

truncate -s 96M "$img"
mkntfs -F -f -q -L SnapScanVol -c 4096 "$img" >/dev/null 2>&1

cleanup() { cd /; mountpoint -q "$mnt" && umount "$mnt" || true; }
trap cleanup EXIT
ntfs-3g -o streams_interface=windows "$img" "$mnt"

cd "$mnt"
# Resident (fits in the MFT record) and empty files.
printf 'tiny\n' >tiny.txt
: >empty.txt
# Non-resident, several MiB, and a file whose name needs UTF-16.
prng 1 $((5 * 1024 * 1024 + 123)) >big.bin
printf 'unicode name\n' >'héllo wörld €.txt'
# Sparse: a hole at the start, data in the middle, a hole at the end.
truncate -s $((20 * 1024 * 1024)) sparse.bin
prng 2 70000 | dd of=sparse.bin bs=4096 seek=1500 conv=notrunc status=none
# LZNT1 compression: files created in a directory with the compressed
# attribute (FILE_ATTRIBUTE_COMPRESSED 0x800) are compressed by ntfs-3g.
mkdir comp
setfattr -n system.ntfs_attrib_be -v 0x00000810 comp
for i in $(seq 1 20000); do echo "line $i of a compressible text file"; done >comp/text.txt
prng 3 300000 >comp/random.bin
{ head -c 100000 /dev/zero; prng 4 50000; head -c 200000 /dev/zero; printf 'tail'; } >comp/mixed.bin
printf 'small\n' >comp/small.txt
# Alternate data streams: resident and non-resident, on a file and a dir.
printf 'main data\n' >ads.txt
printf 'hidden stream\n' >'ads.txt:small'
prng 5 200000 >'ads.txt:big'
printf 'Zone.Identifier\n[ZoneTransfer]\nZoneId=3\n' >'ads.txt:Zone.Identifier'
mkdir dirads
printf 'stream on a directory\n' >'dirads:dstream'
printf 'x\n' >dirads/inner.txt
# Hard link: one file in two directories.
mkdir d1 d2
printf 'linked content\n' >d1/hard.txt
ln d1/hard.txt d2/hard-too.txt
# Symbolic links: ntfs-3g writes them Interix-style (a system file holding
# "IntxLNK\1" and the UTF-16 target); Linux sees them as links.
ln -s tiny.txt link-rel
ln -s ../d1/hard.txt d2/link-up
ln -s comp link-dir
# Reparse points set directly through ntfs-3g's reparse-data attribute
# (ntfs-3g itself makes Interix-style links, above): a junction (mount point,
# tag 0xA0000003) on an empty directory and Windows symbolic links (tag
# 0xA000000C; flag 1 = relative) on an empty file and directory.
reparse() { # reparse PATH TAG SUBSTITUTE PRINT [SYMLINK-FLAGS]
	local subhex prnhex sublen prnlen pathbuf hdr flags=""
	subhex=$(utf16hex "$3")
	prnhex=$(utf16hex "$4")
	sublen=$((${#subhex} / 2))
	prnlen=$((${#prnhex} / 2))
	pathbuf="${subhex}0000${prnhex}0000"
	[ $# -ge 5 ] && flags=$(le32 "$5")
	hdr="$(le16 0)$(le16 $sublen)$(le16 $((sublen + 2)))$(le16 $prnlen)$flags"
	setfattr -h -n system.ntfs_reparse_data -v "0x$(le32 "$2")$(le16 $(((${#hdr} + ${#pathbuf}) / 2)))0000$hdr$pathbuf" "$1"
}
mkdir junction
reparse junction $((0xA0000003)) '\??\C:\Users\Public' 'C:\Users\Public'
: >winlink-rel
reparse winlink-rel $((0xA000000C)) 'd1\hard.txt' 'd1\hard.txt' 1
mkdir winlink-abs
reparse winlink-abs $((0xA000000C)) '\??\C:\Windows\System32' 'C:\Windows\System32' 0
# A DOS 8.3 name next to the long name: the file must be listed once.
printf 'long name\n' >'A Long File Name.text'
setfattr -n system.ntfs_dos_name -v 'ALONGF~1.TEX' 'A Long File Name.text'
# A directory big enough for an index allocation ($I30 B+tree).
mkdir many
for i in $(seq -w 1 2000); do printf 'file %s\n' "$i" >"many/file-$i.txt"; done
# Nested directories.
mkdir -p deep/a/b/c
printf 'deep\n' >deep/a/b/c/leaf.txt
cd /

umount "$mnt"

# Copy the tree back through a fresh read-only mount: this is what the
# package must list. Streams are saved as "name:stream" files.
ntfs-3g -o ro,streams_interface=windows "$img" "$mnt"
mkdir "$OUT/expect"
(cd "$mnt" && find . -mindepth 1 -print0 | while IFS= read -r -d '' p; do
	if [ -L "$p" ]; then continue; fi
	if [ -d "$p" ]; then mkdir -p "$OUT/expect/$p"; else cat "$p" >"$OUT/expect/$p"; fi
done)
for s in ads.txt:small ads.txt:big ads.txt:Zone.Identifier dirads:dstream; do
	cat "$mnt/$s" >"$OUT/expect/$s"
done
umount "$mnt"
printf 'link-rel\ttiny.txt\nd2/link-up\t../d1/hard.txt\nlink-dir\tcomp\njunction\tC:\\Users\\Public\nwinlink-rel\td1/hard.txt\nwinlink-abs\tC:\\Windows\\System32\n' >"$OUT/links.txt"

# A 2 MiB volume with 512-byte clusters whose boot sector and MFT records
# seed the fuzz corpus of snapshot/ntfs.
small="$OUT/small.img"
truncate -s 2M "$small"
mkntfs -F -f -q -L Small -c 512 "$small" >/dev/null 2>&1
ntfs-3g -o streams_interface=windows "$small" "$mnt"
printf 'resident\n' >"$mnt/r.txt"
printf 'stream\n' >"$mnt/r.txt:ads"
mkdir "$mnt/dir"
prng 6 3000 >"$mnt/dir/nonres.bin"
ln "$mnt/dir/nonres.bin" "$mnt/hard.bin"
ln -s r.txt "$mnt/link"
umount "$mnt"

suite="$OUT/suite.img"
truncate -s 4M "$suite"
mkntfs -F -f -q -L Suite -c 4096 "$suite" >/dev/null 2>&1
ntfs-3g -o streams_interface=windows "$suite" "$mnt"
cd "$mnt"
printf 'tiny\n' >tiny.txt
: >empty.txt
prng 7 700 >resident-700.bin
prng 8 150000 >runs.bin
truncate -s $((1024 * 1024)) sparse.bin
prng 9 9000 | dd of=sparse.bin bs=4096 seek=100 conv=notrunc status=none
mkdir comp
setfattr -n system.ntfs_attrib_be -v 0x00000810 comp
for i in $(seq 1 3000); do echo "line $i of a compressible text file"; done >comp/text.txt
{ head -c 100000 /dev/zero; prng 10 70000; for i in $(seq 1 2000); do echo "compressible $i"; done; printf 'tail'; } >comp/mixed.bin
printf 'main\n' >ads.txt
printf 'hidden stream\n' >'ads.txt:small'
prng 11 20000 >'ads.txt:big'
mkdir d1 d2
printf 'linked content\n' >d1/hard.txt
ln d1/hard.txt d2/hard-too.txt
ln -s tiny.txt link-rel
ln -s ../d1/hard.txt d2/link-up
mkdir junction
reparse junction $((0xA0000003)) '\??\C:\Users\Public' 'C:\Users\Public'
: >winlink-rel
reparse winlink-rel $((0xA000000C)) 'd1\hard.txt' 'd1\hard.txt' 1
mkdir many
for i in $(seq -w 1 80); do printf 'file %s\n' "$i" >"many/a-file-with-a-long-name-$i.txt"; done
mkdir -p deep/a/b
printf 'deep\n' >deep/a/b/leaf.txt
# Hard links with long names, more than one MFT record holds: the file
# gets an attribute list and extension records.
mkdir al
printf 'one file, many names\n' >al/f
long=$(printf 'n%.0s' $(seq 1 200))
for i in 1 2 3 4 5 6; do ln al/f "al/$i-$long"; done
cd /
umount "$mnt"
rmdir "$mnt"
