#!/usr/bin/env bash
# Makes disk images of the scanner's parity tree (testdata/scanner.sh) with
# real tools, for the image parity test of issue 4: the tree as ext4, FAT32,
# NTFS and XFS volumes, each in a partitioned disk converted to several
# image formats.
#
#   OUT=/tmp/x bash testdata/scanner-images.sh TREE
set -euo pipefail
: "${OUT:?set OUT}"
tree=$(readlink -f "$1")
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"
cd "$OUT"
rm -rf src && mkdir src && cp -a "$tree"/. src/
size=$((192 * MiB))

# One GPT disk per file system: the volume is partition 1.
disk() { # disk NAME FSIMG
	truncate -s $((size + 2 * MiB)) "$1.raw"
	sgdisk -n1:2048:0 -t1:0700 "$1.raw" >/dev/null
	dd if="$2" of="$1.raw" bs=512 seek=2048 conv=notrunc,sparse status=none
	rm -f "$2"
}

fs_ext4 fs.img src $size && disk ext4 fs.img
fs_fat fs.img src $size 32 && disk fat fs.img
fs_ntfs fs.img src $size NTFS && disk ntfs fs.img

fs_xfs fs.img src $((320 * MiB)) XFS # mkfs.xfs's minimum size
size=$((320 * MiB)) disk xfs fs.img

# Formats: the ext4 disk as qcow2 and VMDK, FAT as VHDX, NTFS as VHD, XFS as
# zstd-compressed qcow2, and every one raw.
qemu-img convert -O qcow2 ext4.raw ext4.qcow2
qemu-img convert -O vmdk -o subformat=streamOptimized ext4.raw ext4.vmdk
qemu-img convert -O vhdx fat.raw fat.vhdx
qemu-img convert -O vpc -o subformat=dynamic ntfs.raw ntfs.vhd
qemu-img convert -c -O qcow2 -o compression_type=zstd xfs.raw xfs.qcow2
