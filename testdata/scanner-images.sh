#!/usr/bin/env bash
# Makes disk images of the scanner's parity tree (testdata/scanner.sh) with
# real tools, for the image parity test of issue 4: the tree as ext4, FAT32,
# NTFS and XFS volumes, each in a partitioned disk converted to several
# image formats.
#
#   OUT=/tmp/x bash testdata/scanner-images.sh TREE
#
# The 300 MiB sparse file over the size limit is left out (FAT cannot keep
# it sparse); everything else is copied.
set -euo pipefail
: "${OUT:?set OUT}"
tree=$(readlink -f "$1")
cd "$OUT"
MiB=$((1024 * 1024))
rm -rf src && mkdir src && cp -a "$tree"/. src/ && rm -f src/empty/big-sparse.img
size=$((192 * MiB))

# One GPT disk per file system: the volume is partition 1.
disk() { # disk NAME FSIMG
	truncate -s $((size + 2 * MiB)) "$1.raw"
	sgdisk -n1:2048:0 -t1:0700 "$1.raw" >/dev/null
	dd if="$2" of="$1.raw" bs=512 seek=2048 conv=notrunc,sparse status=none
	rm -f "$2"
}

mkfs.ext4 -q -F -d src fs.img $((size / 1024))K >/dev/null && disk ext4 fs.img

rm -f fs.img && mkfs.vfat -F 32 -C fs.img $((size / 1024)) >/dev/null && mcopy -s -i fs.img src/* :: && disk fat fs.img

rm -f fs.img && truncate -s $size fs.img && mkntfs -F -f -q fs.img >/dev/null 2>&1
mnt=$(mktemp -d)
ntfs-3g fs.img "$mnt" && { cp -a src/. "$mnt"/ || { umount "$mnt"; exit 1; }; } && umount "$mnt" && rmdir "$mnt"
disk ntfs fs.img

truncate -s $((320 * MiB)) fs.img # mkfs.xfs's minimum
find src -mindepth 1 -printf '%d\t%y\t%p\t%f\n' | sort -t$'\t' -k3,3 | awk -F'\t' '
	BEGIN { print "/dev/null"; print "0 0"; print "d--755 0 0"; depth = 1 }
	{ d = $1 + 0; while (depth > d) { print "$"; depth-- }
	  if ($2 == "d") { print $4, "d--755 0 0"; depth = d + 1 } else if ($2 == "f") { print $4, "---644 0 0", $3 } }
	END { while (depth > 0) { print "$"; depth-- } }' >proto.txt
mkfs.xfs -q -p proto.txt fs.img && rm -f proto.txt
size=$((320 * MiB)) disk xfs fs.img

# Formats: the ext4 disk as qcow2 and VMDK, FAT as VHDX, NTFS as VHD, XFS as
# zstd-compressed qcow2, and every one raw.
qemu-img convert -O qcow2 ext4.raw ext4.qcow2
qemu-img convert -O vmdk -o subformat=streamOptimized ext4.raw ext4.vmdk
qemu-img convert -O vhdx fat.raw fat.vhdx
qemu-img convert -O vpc -o subformat=dynamic ntfs.raw ntfs.vhd
qemu-img convert -c -O qcow2 -o compression_type=zstd xfs.raw xfs.qcow2
