#!/usr/bin/env bash
# Rebuilds the small committed disk images that the Example functions of
# snapshot and snapshot/image/* read (go test runs them, with // Output:).
# Run it by hand from the repository's top folder; the outputs are
# committed, so tests need no tool for them.
#
#   bash testdata/examples.sh
#
#   snapshot/testdata/example.qcow2  a 2 MiB GPT disk, partition 1 a 960 KiB
#                     ext4 labelled "root" with /etc/hostname and
#                     /home/alice/notes.txt; zlib-compressed 4 KiB clusters
#   snapshot/image/testdata/hello-base.qcow2, hello.qcow2
#                     a 1 MiB disk ("hello, disk\n" at 0) and an overlay on it
#                     with "overlay data\n" written at 64 KiB by qemu-io
#   snapshot/image/testdata/hello.vmdk (streamOptimized), hello.vhd
#                     (fixed), hello.vhdx (dynamic, 1 MiB blocks): the
#                     1 MiB disk in the other formats
#   snapshot/{ext4,fat,iso9660,squashfs}/testdata/example.*, and
#   snapshot/xfs/testdata/example.xfs.gz (gzip: the smallest XFS is 16 MiB)
#                     the same small tree (/etc/hostname, /home/alice/notes.txt,
#                     a link /home/alice/hosts) in each file system, for the
#                     file-system packages' Examples
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$tmp/tree/etc" "$tmp/tree/home/alice"
printf 'example-vm\n' >"$tmp/tree/etc/hostname"
printf 'hello from the guest\n' >"$tmp/tree/home/alice/notes.txt"
truncate -s 2M "$tmp/disk.raw"
sgdisk -n1:2048:0 -t1:8300 -c1:root "$tmp/disk.raw" >/dev/null
mkfs.ext4 -q -b 1024 -N 16 -O ^has_journal,^resize_inode -L root -E root_owner=0:0 -d "$tmp/tree" "$tmp/fs.img" 960K
dd if="$tmp/fs.img" of="$tmp/disk.raw" bs=512 seek=2048 conv=notrunc status=none
qemu-img convert -c -O qcow2 -o cluster_size=4096 "$tmp/disk.raw" snapshot/testdata/example.qcow2

d=snapshot/image/testdata
mkdir -p "$d"
truncate -s 1M "$tmp/hello.raw"
printf 'hello, disk\n' | dd of="$tmp/hello.raw" conv=notrunc status=none
qemu-img convert -O qcow2 -o cluster_size=4096 "$tmp/hello.raw" "$d/hello-base.qcow2"
rm -f "$d/hello.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b hello-base.qcow2 -F qcow2 "$d/hello.qcow2"
qemu-io -f qcow2 -c 'write -P 0x6f 64k 4k' "$d/hello.qcow2" >/dev/null
printf 'overlay data\n' >"$tmp/ov"
qemu-io -f qcow2 -c "write -s $tmp/ov 64k 13" "$d/hello.qcow2" >/dev/null
qemu-img convert -O vmdk -o subformat=streamOptimized "$tmp/hello.raw" "$d/hello.vmdk"
qemu-img convert -O vpc -o subformat=fixed "$tmp/hello.raw" "$d/hello.vhd"
qemu-img convert -O vhdx -o subformat=dynamic,block_size=1M,log_size=1M "$tmp/hello.raw" "$d/hello.vhdx"

# The file systems' Examples: one small tree in each.
t="$tmp/fstree"
mkdir -p "$t/etc" "$t/home/alice"
printf 'example-vm\n' >"$t/etc/hostname"
printf 'hello from the guest\n' >"$t/home/alice/notes.txt"
ln -s ../../etc/hostname "$t/home/alice/hosts"
chown -R 1000:1000 "$t/home/alice" 2>/dev/null || true
rm -f snapshot/ext4/testdata/example.ext4
mkfs.ext4 -q -b 1024 -N 32 -O ^has_journal,^resize_inode -L example -E root_owner=0:0 -d "$t" snapshot/ext4/testdata/example.ext4 128K
rm -f snapshot/fat/testdata/example.fat
mkfs.fat -C -n EXAMPLE -i 12345678 snapshot/fat/testdata/example.fat 64 >/dev/null
(cd "$t" && mcopy -i "$OLDPWD/snapshot/fat/testdata/example.fat" -s -m etc home ::)
rm -f snapshot/iso9660/testdata/example.iso
xorriso -as mkisofs -quiet -R -J -V EXAMPLE --modification-date=2026120100000000 -o snapshot/iso9660/testdata/example.iso "$t"
rm -f snapshot/squashfs/testdata/example.sqfs
mksquashfs "$t" snapshot/squashfs/testdata/example.sqfs -quiet -noappend -mkfs-time 0 -all-time 0 >/dev/null
cat >"$tmp/proto" <<EOF
/dev/null
0 0
d--755 0 0
etc d--755 0 0
hostname ---644 0 0 $t/etc/hostname
\$
home d--755 0 0
alice d--750 1000 1000
notes.txt ---640 1000 1000 $t/home/alice/notes.txt
hosts l--777 1000 1000 ../../etc/hostname
\$
\$
\$
EOF
truncate -s 16M "$tmp/example.xfs"
# Under 300 MB mkfs.xfs wants to run under fstests (these variables).
TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -L example -p "$tmp/proto" "$tmp/example.xfs"
gzip -9n <"$tmp/example.xfs" >snapshot/xfs/testdata/example.xfs.gz

# scanner/incremental/testdata/base.qcow2, clone.qcow2: the snapshot example
# disk and a linked clone of it whose overlay holds a new /etc/hostname
# ("clone-vm"), written by debugfs -w (rm, write) through a
# qemu-storage-daemon FUSE export of the overlay (needs root and fuse3).
d=scanner/incremental/testdata
cp snapshot/testdata/example.qcow2 "$d/base.qcow2"
rm -f "$d/clone.qcow2"
# 1 KiB clusters, the file system's block size: in so small a disk a 64 KiB
# cluster would hold notes.txt beside the inodes debugfs rewrites.
qemu-img create -q -f qcow2 -o cluster_size=1024 -b base.qcow2 -F qcow2 "$d/clone.qcow2"
: >"$tmp/clone.exp"
qemu-storage-daemon --blockdev driver=file,filename="$d/clone.qcow2",node-name=f \
	--blockdev driver=qcow2,file=f,node-name=q \
	--export type=fuse,id=e,node-name=q,mountpoint="$tmp/clone.exp",writable=on &
qsd=$!
for _ in $(seq 100); do [ "$(stat -c %s "$tmp/clone.exp")" -gt 0 ] && break; sleep 0.05; done
printf 'clone-vm\n' >"$tmp/hostname"
loop=$(losetup -f --show -o $((2048 * 512)) "$tmp/clone.exp")
debugfs -w -R "rm etc/hostname" "$loop" >/dev/null 2>&1
debugfs -w -R "write $tmp/hostname etc/hostname" "$loop" >/dev/null 2>&1
losetup -d "$loop"
kill "$qsd"
wait "$qsd" || true
