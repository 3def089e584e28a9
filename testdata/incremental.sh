#!/usr/bin/env bash
# Builds the fixtures of scanner/incremental inside $OUT with real tools:
# a base disk and linked clones whose overlays hold only what a guest-like
# writer changed (qemu-storage-daemon's FUSE export of the overlay, loop
# mounted and edited with coreutils; see shared ENGINE-NOTES).
#
#   base.qcow2      64 MiB GPT disk, p1 (1 MiB..49 MiB) ext4 with inline_data,
#                   made by mkfs.ext4 -d from tree/: text files (some with
#                   the markers the test rules look for), a few ELF binaries
#                   of the host, small inline files, a hard-link source.
#   files.qcow2     overlay: a file edited in place, one truncated, one
#                   extended, one replaced by rename, one deleted and a new
#                   file written (its blocks reused), one deleted and a new
#                   one created (its inode reused), a hard link added, an
#                   inline file rewritten, a file renamed.
#   ptable.qcow2    overlay: the partition table rewritten (p1 grown).
#   sb.qcow2        overlay: the superblock rewritten (tune2fs -O ^dir_index
#                   and a new label).
#   quiet.qcow2     overlay: one new file only.
#   atime.qcow2     overlay: files only read, on a strictatime mount (their
#                   inodes' i_atime and checksums rewritten:
#                   dir1/file003.txt, dir2/file010.txt, bin/ls, bin/cat),
#                   and dir1/file005.txt, whose inode lies in the same
#                   inode-table block as file003's, edited in place.
#   rename.qcow2    overlay: pathrule.txt renamed to dir1/renamed-evil.txt
#                   by debugfs -w (ln, unlink), which leaves the inode as it
#                   was (a kernel rename updates its ctime).
# Needs root (loop mounts), fuse3, qemu-storage-daemon, sgdisk, mkfs.ext4.
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"
cd "$OUT"

rm -rf tree && mkdir -p tree/dir1 tree/dir2 tree/bin
for i in $(seq -w 1 120); do
	d=dir1; [ $((10#$i % 2)) = 0 ] && d=dir2
	{ for k in $(seq 1 $((10#$i * 7))); do echo "line $k of file $i: the quick brown fox"; done; } >tree/$d/file$i.txt
done
echo "marker SNAPSCAN-EVIL-A here" >>tree/dir1/file003.txt
echo "marker SNAPSCAN-EVIL-A here" >>tree/dir2/file010.txt
for b in ls cat grep tar gzip; do cp "$(command -v $b)" tree/bin/; done
head -c 300000 /dev/zero | tr '\0' 'x' >tree/edit.txt
{ head -c 200 /dev/zero | tr '\0' 'y'; echo "SNAPSCAN-EVIL-TAIL"; } >tree/trunc.txt
echo "clean start" >tree/extend.txt
echo "replace me: clean" >tree/replace.txt
head -c 81920 /dev/urandom >tree/deleted.bin
echo "old inode" >tree/inode-old.txt
echo "SNAPSCAN-EVIL-A linked" >tree/hl-src.txt
echo "tiny inline" >tree/inline.txt
echo "SNAPSCAN-EVIL-A path" >tree/pathrule.txt

mkfs.ext4 -q -F -O inline_data -L base -d tree fs.img 48M >/dev/null
truncate -s $((64 * MiB)) disk.raw
sgdisk -n 1:2048:+48M -t 1:8300 disk.raw >/dev/null # not -q: sgdisk 1.0.9 then writes nothing
dd if=fs.img of=disk.raw bs=512 seek=2048 conv=notrunc,sparse status=none
rm -f fs.img
qemu-img convert -q -f raw -O qcow2 disk.raw base.qcow2
rm -f disk.raw
touch -d '2026-01-01 00:00:00 UTC' base.qcow2

# edit NAME FUNC: make NAME.qcow2 over base.qcow2 and run FUNC with the
# overlay exported as a file at $exp (FUNC mounts what it needs).
edit() { overlay_edit base.qcow2 "$@"; }

# mounted FUNC: run FUNC with p1 of $exp mounted at $mnt.
mounted() {
	mnt=$(mktemp -d)
	local loop rc=0
	loop=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((48 * MiB)) "$exp")
	mount -o "${atimemount:-noatime}" "$loop" "$mnt"
	"$1" || rc=$?
	umount "$mnt"
	losetup -d "$loop"
	rmdir "$mnt"
	return $rc
}

files_changes() {
	cd "$mnt"
	printf 'SNAPSCAN-EVIL-A in place' | dd of=edit.txt bs=1 seek=150000 conv=notrunc status=none
	truncate -s 100 trunc.txt
	echo "now SNAPSCAN-EVIL-TAIL appended" >>extend.txt
	echo "replaced: SNAPSCAN-EVIL-A" >replace.tmp && mv replace.tmp replace.txt
	rm deleted.bin && sync && { head -c 40000 /dev/zero | tr '\0' 'z'; echo SNAPSCAN-EVIL-TAIL; } >reused-blocks.txt
	rm inode-old.txt && sync && echo "SNAPSCAN-EVIL-A new inode" >inode-new.txt
	ln hl-src.txt dir2/hardlink.txt
	echo "SNAPSCAN-EVIL-A" >inline.txt
	mv pathrule.txt dir1/renamed-evil.txt
	cd "$OUT"
}
files() { mounted files_changes; }
ptable() { sgdisk -d 1 -n 1:2048:+52M -t 1:8300 "$exp" >/dev/null; }
sb() {
	local loop
	loop=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((48 * MiB)) "$exp")
	tune2fs -O ^dir_index -L changed "$loop" >/dev/null
	losetup -d "$loop"
}
quiet_changes() { echo "SNAPSCAN-EVIL-A quiet" >"$mnt/dir1/quiet.txt"; }
quiet() { mounted quiet_changes; }
atime_changes() {
	sleep 1.1 # a second later than the edits of the base: a new i_atime
	cat "$mnt/dir1/file003.txt" "$mnt/dir2/file010.txt" "$mnt/bin/ls" "$mnt/bin/cat" >/dev/null
	printf 'SNAPSCAN-EVIL-A' | dd of="$mnt/dir1/file005.txt" bs=1 seek=10 conv=notrunc status=none
}
atime() { atimemount=strictatime mounted atime_changes; }
rename() {
	local loop
	loop=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((48 * MiB)) "$exp")
	debugfs -w -R "ln pathrule.txt dir1/renamed-evil.txt" "$loop" >/dev/null 2>&1
	debugfs -w -R "unlink pathrule.txt" "$loop" >/dev/null 2>&1
	losetup -d "$loop"
}

edit files files
edit ptable ptable
edit sb sb
edit quiet quiet
edit atime atime
edit rename rename
rm -rf tree
for c in files ptable sb quiet atime rename; do touch -d '2026-01-02 00:00:00 UTC' $c.qcow2; done
qemu-img map --output=json files.qcow2 >files.map.json
