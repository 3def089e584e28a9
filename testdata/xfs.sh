#!/usr/bin/env bash
# Builds the XFS test images for snapshot/xfs, with real tools only.
#
# Output in $OUT:
#   src/            the source tree every image holds (plus src/extra, v5 only)
#   listing.tsv     one line per entry of src: type perm uid gid size link path
#                   (find -printf '%y\t%m\t%U\t%G\t%s\t%l\t%P'); dir sizes are meaningless
#   sha256.txt      sha256sum of every regular file, paths relative to src
#   v5.img          mkfs.xfs -m crc=1 (default: ftype, sparse inodes, finobt,
#                   reflink, rmapbt, bigtime) populated by a protofile, then
#                   loop-mounted to add src/extra: sparse, fragmented (extent
#                   btree of depth 2) and unwritten (fallocate) files
#   v4.img          mkfs.xfs -m crc=0 -n ftype=0, protofile only (this kernel
#                   cannot mount V4, so no extra/)
#   v5-1k.img       mkfs.xfs -b size=1024 -n size=8192: directory blocks of
#                   8 file-system blocks, protofile only
#   forms.txt       per image and directory, the form xfs_db reports; the
#                   script fails if a directory is not in the form it was
#                   sized for
#   geometry-*.txt  xfs_db "sb 0" print of each image
#   suite.img       16 MiB v5, populated through a loop mount: one object of
#                   each kind (small and block directories, a hard link,
#                   short and remote links, sparse, unwritten and btree-form
#                   files), for the vfstest suite
#
# mkfs.xfs -p does not keep holes (it writes every byte of a source file), so
# sparse and unwritten extents need the kernel: the v5 image is mounted with
# -o loop,allocsize=4096 (no speculative preallocation, so strided writes give
# one extent each); it and v5-1k.img also get extended attributes (attribute
# forks) on some files and directories. Needs root, mkfs.xfs, xfs_db,
# xfs_io, openssl, setfattr (Debian package attr).
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
cd "$OUT"
SRC=$OUT/src
rm -rf "$SRC" && mkdir -p "$SRC"

# gen N SEED: N pseudo-random bytes, the same on every machine.
gen() { head -c "$1" /dev/zero | openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$2")" -iv 00000000000000000000000000000000; }

mkdir -p "$SRC"/files "$SRC"/dirs/{sf,block,leaf,node,btree} "$SRC"/links "$SRC"/dev "$SRC"/utf8 "$SRC"/owners
seed=1
for n in 0 1 511 512 4095 4096 4097 65539 1048583 3145851; do
	gen "$n" $((seed++)) >"$SRC/files/size_$n"
done
printf 'hello, xfs\n' >"$SRC/files/hello.txt"
chmod 4755 "$SRC/files/size_1"
chmod 2750 "$SRC/files/size_511"
chmod 0600 "$SRC/files/size_512"
# Directory sizes chosen (4 KiB directory blocks) for each form:
# shortform, block, leaf, node; btree needs more data-fork extents than fit
# in the inode, so its 1-byte files interleave file blocks with the long-named
# directory's blocks.
for i in $(seq 1 5); do echo "sf $i" >"$SRC/dirs/sf/f$i"; done
for i in $(seq 1 50); do : >"$SRC/dirs/block/entry_$i"; done
for i in $(seq 1 300); do : >"$SRC/dirs/leaf/leaf_entry_$i"; done
for i in $(seq 1 700); do : >"$SRC/dirs/node/n$i"; done
long=$(printf 'L%.0s' $(seq 1 200))
for i in $(seq 1 2500); do printf '%d' $((i % 10)) >"$SRC/dirs/btree/${long}_$i"; done
ln -s ../files/hello.txt "$SRC/links/short"
ln -s "/$(printf 'segment%03d/' $(seq 1 40))end" "$SRC/links/long"   # 441 bytes: remote
ln -s "$(printf 'x%.0s' $(seq 1 1000))" "$SRC/links/max"             # 1000 bytes
ln -s dangling-target "$SRC/links/dangling"
mknod "$SRC/dev/null" c 1 3
mknod "$SRC/dev/sda" b 8 0
mkfifo "$SRC/dev/fifo"
echo grüße >"$SRC/utf8/grüße.txt"
echo 日本語 >"$SRC/utf8/日本語.txt"
echo emoji >"$SRC/utf8/emoji_😀"
mkdir "$SRC/utf8/каталог" && echo x >"$SRC/utf8/каталог/файл"
echo owned >"$SRC/owners/u1000" && chown 1000:100 "$SRC/owners/u1000"
echo owned >"$SRC/owners/u4000000000" && chown 4000000000:4000000001 "$SRC/owners/u4000000000"
mkdir "$SRC/owners/d2000" && chown 2000:2000 "$SRC/owners/d2000"

# protofile from the tree: depth-first, "$" closes a directory.
find "$SRC" -mindepth 1 -printf '%d\t%y\t%m\t%U\t%G\t%p\t%f\t%l\n' | sort -t$'\t' -k6,6 | awk -F'\t' '
function spec(t, m,   s, u, g) {
	m = sprintf("%04d", m); u = substr(m,1,1)+0
	s = (u >= 4) ? "u" : "-"; g = (u % 4 >= 2) ? "g" : "-"
	return t s g substr(m, 2, 3)
}
BEGIN { print "/dev/null"; print "0 0"; print "d--755 0 0"; depth = 1 }
{
	d = $1 + 0
	while (depth > d) { print "$"; depth-- }
	if ($2 == "d") { print $7, spec("d", $3), $4, $5; depth = d + 1 }
	else if ($2 == "f") { print $7, spec("-", $3), $4, $5, $6 }
	else if ($2 == "l") { print $7, spec("l", $3), $4, $5, $8 }
	else if ($2 == "p") { print $7, spec("p", $3), $4, $5 }
	else if ($2 == "c" || $2 == "b") {
		cmd = "stat -c \"%Hr %Lr\" \"" $6 "\""; cmd | getline mm; close(cmd)
		split(mm, a, " "); print $7, spec($2, $3), $4, $5, a[1], a[2]
	}
}
END { while (depth > 0) { print "$"; depth-- } }' >proto.txt

mkimg() { # name mkfs-options...
	local img=$1; shift
	rm -f "$img"; truncate -s 320M "$img"
	mkfs.xfs -q -L snapxfs "$@" -p proto.txt "$img"
}
mkimg v5.img
mkimg v4.img -m crc=0 -n ftype=0
mkimg v5-1k.img -b size=1024 -n size=8192

# Kernel-made extents (v5 only).
mkdir -p "$SRC/extra"
sparse=(-c "truncate 64m" -c "pwrite -S 0x61 0 4096" -c "pwrite -S 0x62 33554432 8192" -c "pwrite -S 0x63 67104768 4096")
strided=()
for i in $(seq 0 5999); do strided+=(-c "pwrite -S $((i % 251 + 1)) $((i * 8192)) 4096"); done
unwritten=(-c "falloc 0 4m" -c "pwrite -S 0x41 1m 64k" -c "falloc -k 4m 1m")
xfs_io -f "${sparse[@]}" "$SRC/extra/sparse" >/dev/null
xfs_io -f "${strided[@]}" "$SRC/extra/strided" >/dev/null
xfs_io -f "${unwritten[@]}" "$SRC/extra/unwritten" >/dev/null
for i in $(seq 0 99); do gen 65536 $((1000 + i)); done >"$SRC/extra/interleaved_a"
for i in $(seq 0 99); do gen 65536 $((2000 + i)); done >"$SRC/extra/interleaved_b"
MNT=$(mktemp -d "$OUT/mnt.XXXX")
mount -o loop,allocsize=4096 v5.img "$MNT"
trap 'umount "$MNT" 2>/dev/null || true; rmdir "$MNT" 2>/dev/null || true' EXIT
mkdir "$MNT/extra"
xfs_io -f "${sparse[@]}" -c fsync "$MNT/extra/sparse" >/dev/null
xfs_io -f "${strided[@]}" -c fsync "$MNT/extra/strided" >/dev/null
xfs_io -f "${unwritten[@]}" -c fsync "$MNT/extra/unwritten" >/dev/null
# Two files written in turns, each chunk synced: logically contiguous,
# physically interleaved.
for i in $(seq 0 99); do
	gen 65536 $((1000 + i)) >chunk
	xfs_io -f -c "pwrite -i chunk $((i * 65536)) 65536" -c fsync "$MNT/extra/interleaved_a" >/dev/null
	gen 65536 $((2000 + i)) >chunk
	xfs_io -f -c "pwrite -i chunk $((i * 65536)) 65536" -c fsync "$MNT/extra/interleaved_b" >/dev/null
done
rm chunk
chmod 0644 "$MNT/extra/interleaved_a" "$MNT/extra/interleaved_b"
# mkfs.xfs 6.1 -p writes v5 remote symlinks without their XSLM block
# headers (the kernel reports a CRC error reading them): let the kernel
# write them again.
relink() {
	local t
	for l in long max; do
		t=$(readlink "$SRC/links/$l"); rm "$1/links/$l"; ln -s "$t" "$1/links/$l"
	done
}
# Extended attributes give inodes an attribute fork (di_forkoff != 0),
# which shrinks the data fork: local ones, and one big enough for blocks.
# Added after the data, so the kernel must move btree roots to make room.
attrs() {
	local m=$1 p
	shift
	for p in files/hello.txt files/size_4097 dirs/sf dirs/block dirs/leaf dirs/btree "$@"; do
		setfattr -n user.short -v hello "$m/$p"
	done
	setfattr -n user.big -v "$(printf 'a%.0s' $(seq 1 3000))" "$m/files/size_65539"
}
relink "$MNT"
attrs "$MNT" extra/strided extra/interleaved_a extra/sparse
umount "$MNT"
mount -o loop v5-1k.img "$MNT"
relink "$MNT"
attrs "$MNT"
umount "$MNT"; rmdir "$MNT"; trap - EXIT

# suite.img: 16 MiB, one of each kind of object, written by the kernel,
# small enough for the vfstest suite (which copies and walks it many times).
# mkfs.xfs refuses volumes under 300 MB unless it runs under fstests (these
# three variables set).
rm -f suite.img; truncate -s 16M suite.img
TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -L suite suite.img
MNT=$(mktemp -d "$OUT/mnt.XXXX")
mount -o loop,allocsize=4096 suite.img "$MNT"
trap 'umount "$MNT" 2>/dev/null || true; rmdir "$MNT" 2>/dev/null || true' EXIT
(
	cd "$MNT"
	mkdir -p files dirs/sf dirs/block links utf8
	printf 'hello, xfs\n' >files/hello.txt
	gen 4097 101 >files/size_4097
	gen 65539 102 >files/size_65539
	: >files/empty
	ln files/size_4097 dirs/hard
	for i in $(seq 1 5); do echo "sf $i" >"dirs/sf/f$i"; done
	for i in $(seq 1 50); do : >"dirs/block/entry_$i"; done
	ln -s ../files/hello.txt links/short
	ln -s "/$(printf 'segment%03d/' $(seq 1 40))end" links/long
	echo grüße >utf8/grüße.txt
	xfs_io -f -c "truncate 1m" -c "pwrite -S 0x61 0 4096" -c "pwrite -S 0x62 524288 8192" files/sparse >/dev/null
	xfs_io -f -c "falloc 0 256k" -c "pwrite -S 0x41 64k 4k" files/unwritten >/dev/null
	strided=()
	for i in $(seq 0 59); do strided+=(-c "pwrite -S $((i + 1)) $((i * 8192)) 4096"); done
	xfs_io -f "${strided[@]}" -c fsync files/strided >/dev/null
	setfattr -n user.short -v hello files/hello.txt
	setfattr -n user.short -v hello dirs/sf
)
umount "$MNT"; rmdir "$MNT"; trap - EXIT
out=$(xfs_db -r -c "path /files/strided" -c "print core.format" suite.img)
case $out in *btree*) ;; *) echo "suite.img: files/strided is not in btree form: $out" >&2; exit 1 ;; esac

(cd "$SRC" && find . -mindepth 1 -printf '%y\t%m\t%U\t%G\t%s\t%l\t%P\n' | LC_ALL=C sort -t$'\t' -k7) >listing.tsv
(cd "$SRC" && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum) >sha256.txt

# Record and check the on-disk forms.
: >forms.txt
form() { # img path -> shortform|block|leaf|node|btree|extents(N)
	local out fmt
	out=$(xfs_db -r -c "path $2" -c "print core.format core.nextents" -c "bmap" "$1")
	fmt=$(sed -n 's/^core.format = \([0-9]\).*/\1/p' <<<"$out")
	case $fmt in
	1) echo local ;;
	3) echo btree ;;
	2) awk -v leaf=$(( (1 << 35) / $3 )) -v free=$(( (1 << 36) / $3 )) '
		/^data offset/ { o = $3 + 0; if (o >= free) f = 1; else if (o >= leaf) l += $8; else d += $8 }
		END { if (f) print "node"; else if (l) print "leaf"; else print "block" }' <<<"$out" ;;
	*) echo "format$fmt" ;;
	esac
}
for img in v5.img v4.img v5-1k.img; do
	bs=$(xfs_db -r -c "sb 0" -c "print blocksize" "$img" | awk '{print $3}')
	xfs_db -r -c "sb 0" -c print "$img" >"geometry-${img%.img}.txt"
	for d in sf block leaf node btree; do
		printf '%s\t%s\t%s\n' "$img" "dirs/$d" "$(form "$img" "/dirs/$d" "$bs")" >>forms.txt
	done
done
if [ -d "$SRC/extra" ]; then
	for f in sparse strided unwritten interleaved_a; do
		out=$(xfs_db -r -c "path /extra/$f" -c "print core.format core.nextents" v5.img | tr '\n' ' ')
		printf 'v5.img\textra/%s\t%s\n' "$f" "$out" >>forms.txt
	done
	xfs_db -r -c "path /extra/strided" -c "print u3.bmbt.level" v5.img >>forms.txt
	for p in files/hello.txt files/size_65539 extra/strided dirs/sf dirs/btree; do
		out=$(xfs_db -r -c "path /$p" -c "print core.format core.forkoff core.aformat" v5.img | tr '\n' ' ')
		printf 'v5.img attr\t%s\t%s\n' "$p" "$out" >>forms.txt
	done
fi
cat forms.txt
want=(local block leaf node btree)
for img in v5.img v4.img; do
	i=0
	for d in sf block leaf node btree; do
		got=$(awk -F'\t' -v img="$img" -v d="dirs/$d" '$1 == img && $2 == d { print $3 }' forms.txt)
		if [ "$got" != "${want[$i]}" ]; then echo "$img dirs/$d is $got, want ${want[$i]}" >&2; exit 1; fi
		i=$((i + 1))
	done
done
for p in files/hello.txt extra/strided dirs/sf; do
	grep -q "^v5.img attr.$p.*core.forkoff = [1-9]" forms.txt || { echo "$p has no attribute fork" >&2; exit 1; }
done
grep -q 'u3.bmbt.level = 2' forms.txt || { echo "extra/strided has no depth-2 extent btree" >&2; exit 1; }

# Byte offsets of structures, for the corruption tests.
ino_byte() { xfs_db -r -c "path $2" -c stack "$1" | sed -n 's/.*byte offset \([0-9]*\),.*/\1/p'; }
fsb_byte() { xfs_db -r -c "convert fsblock $2 byte" "$1" | sed -n 's/.*(\([0-9]*\)).*/\1/p'; }
first_fsb() { xfs_db -r -c "path $2" -c bmap "$1" | awk 'NR == 1 { print $5 }'; }
: >offsets.tsv
for img in v5.img v4.img; do
	for p in files/hello.txt dirs/sf extra/strided; do
		[ "$img" = v4.img ] && [ "$p" = extra/strided ] && continue
		printf '%s\tinode\t%s\t%s\n' "$img" "$p" "$(ino_byte "$img" "/$p")" >>offsets.tsv
	done
	for p in dirs/block dirs/leaf links/long; do
		printf '%s\tblock\t%s\t%s\n' "$img" "$p" "$(fsb_byte "$img" "$(first_fsb "$img" "/$p")")" >>offsets.tsv
	done
done
ptr=$(xfs_db -r -c "path /extra/strided" -c "print u3.bmbt.ptrs[1]" v5.img | awk '{ print $3 }')
printf 'v5.img\tbmbt\textra/strided\t%s\n' "$(fsb_byte v5.img "$ptr")" >>offsets.tsv
cat offsets.tsv
