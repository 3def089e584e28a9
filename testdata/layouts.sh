#!/usr/bin/env bash
# Makes the disk layouts of snapscan's conformance test, with real tools
# only, and converts each into every image format snapscan reads.
#
#   OUT=/tmp/layouts bash testdata/layouts.sh [LAYOUT...]
#
# For each layout L it writes $OUT/L.raw, the converted images
# $OUT/L.<format-id>.<ext> and $OUT/L.volumes, one line per volume:
#   <volume id> <file system> <source tree folder under $OUT, or ->
# The source trees ($OUT/tree-*) are what the volumes must list and read.
set -euo pipefail
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
cd "$OUT"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
MiB=$((1024 * 1024))

# --- source trees -----------------------------------------------------------
make_tree() { # make_tree DIR [nolinks|links] [nospaces]
	local d=$1 utf8name="Straße café.txt"
	[ "${3:-}" = nospaces ] && utf8name="Straße_café.txt" # mkfs.xfs protofiles cannot name files with spaces
	rm -rf "$d"
	mkdir -p "$d"/{bin,etc,docs,deep/a/b/c/d/e,empty-dir}
	cp /bin/ls "$d/bin/ls"
	cp /usr/bin/env "$d/bin/env"
	printf 'guest-%s\n' "$(basename "$d")" >"$d/etc/hostname"
	cp /etc/services "$d/etc/services"
	printf 'read me\n' >"$d/docs/readme.txt"
	printf 'utf-8 name\n' >"$d/docs/$utf8name"
	: >"$d/empty.txt"
	head -c $((3 * MiB + 12345)) /dev/urandom >"$d/big.bin"
	printf 'deep\n' >"$d/deep/a/b/c/d/e/f.txt"
	for i in $(seq 1 40); do printf 'file %d\n' "$i" >"$d/docs/note-$i.txt"; done
	if [ "${2:-}" != nolinks ]; then
		ln -s docs/readme.txt "$d/link-to-readme"
		ln -s /etc/shadow "$d/absolute-link"
	fi
}

# File-system builders (fs_ext4, fs_fat, fs_ntfs, fs_xfs, ...) and put.
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"

# --- layouts ----------------------------------------------------------------
layout_gpt_linux() { # GPT: EFI (FAT32), ext4 root, swap
	make_tree tree-efi nolinks
	make_tree tree-root
	truncate -s $((160 * MiB)) gpt-linux.raw
	sgdisk -n1:2048:+40M -t1:ef00 -c1:EFI -n2:0:+100M -t2:8300 -c2:root -n3:0:0 -t3:8200 -c3:swap gpt-linux.raw >/dev/null
	fs_fat p1.img tree-efi $((40 * MiB)) 32 && put p1.img gpt-linux.raw 2048
	fs_ext4 p2.img tree-root $((100 * MiB)) && put p2.img gpt-linux.raw $((2048 + 40 * 2048))
	local s3 e3
	s3=$(sgdisk -i3 gpt-linux.raw | awk '/First sector/{print $3}')
	e3=$(sgdisk -i3 gpt-linux.raw | awk '/Last sector/{print $3}')
	fs_swap p3.img "" $(((e3 - s3 + 1) * 512)) && put p3.img gpt-linux.raw "$s3"
	printf 'p1 fat32 tree-efi\np2 ext4 tree-root\np3 swap -\n' >gpt-linux.volumes
}

layout_mbr_logical() { # MBR: FAT16 primary, extended with ext4 and FAT12 logicals
	make_tree tree-fat16 nolinks
	make_tree tree-logical
	make_tree tree-fat12 nolinks
	truncate -s $((96 * MiB)) mbr-logical.raw
	sfdisk -q mbr-logical.raw <<-SFDISK
		label: dos
		start=2048, size=$((24 * 2048)), type=6
		start=$((26 * 2048)), type=5
		start=$((27 * 2048)), size=$((40 * 2048)), type=83
		start=$((68 * 2048)), size=$((8 * 2048)), type=1
	SFDISK
	fs_fat p1.img tree-fat16 $((24 * MiB)) 16 && put p1.img mbr-logical.raw 2048
	local s5 s6
	s5=$(sfdisk -d mbr-logical.raw | awk -F'[=,]' '/raw5/{gsub(/ /,"",$2); print $2}')
	s6=$(sfdisk -d mbr-logical.raw | awk -F'[=,]' '/raw6/{gsub(/ /,"",$2); print $2}')
	fs_ext4 p5.img tree-logical $((40 * MiB)) && put p5.img mbr-logical.raw "$s5"
	fs_fat p6.img tree-fat12 $((8 * MiB)) 12 && put p6.img mbr-logical.raw "$s6"
	printf 'p1 fat16 tree-fat16\np5 ext4 tree-logical\np6 fat12 tree-fat12\n' >mbr-logical.volumes
}

layout_win_gpt() { # Windows installer style: GPT, EFI (FAT32), Microsoft reserved, NTFS system volume
	make_tree tree-winefi nolinks
	make_tree tree-windows
	truncate -s $((200 * MiB)) win-gpt.raw
	sgdisk -n1:2048:+40M -t1:ef00 -c1:"EFI system partition" -n2:0:+16M -t2:0c01 -c2:"Microsoft reserved partition" \
		-n3:0:0 -t3:0700 -c3:"Basic data partition" win-gpt.raw >/dev/null
	fs_fat p1.img tree-winefi $((40 * MiB)) 32 && put p1.img win-gpt.raw 2048
	local s3 e3
	s3=$(sgdisk -i3 win-gpt.raw | awk '/First sector/{print $3}')
	e3=$(sgdisk -i3 win-gpt.raw | awk '/Last sector/{print $3}')
	fs_ntfs p3.img tree-windows $(((e3 - s3 + 1) * 512)) Windows && put p3.img win-gpt.raw "$s3"
	printf 'p1 fat32 tree-winefi\np2 - -\np3 ntfs tree-windows\n' >win-gpt.volumes
}

layout_win_mbr() { # Windows installer style on MBR: NTFS "System Reserved", NTFS system volume
	make_tree tree-sysres
	make_tree tree-winmbr
	truncate -s $((160 * MiB)) win-mbr.raw
	sfdisk -q win-mbr.raw <<-SFDISK
		label: dos
		start=2048, size=$((50 * 2048)), type=7, bootable
		start=$((52 * 2048)), type=7
	SFDISK
	fs_ntfs p1.img tree-sysres $((50 * MiB)) "System Reserved" && put p1.img win-mbr.raw 2048
	local s2 n2
	s2=$(sfdisk -d win-mbr.raw | awk -F'[=,]' '/raw2/{gsub(/ /,"",$2); print $2}')
	n2=$(sfdisk -d win-mbr.raw | awk -F'[=,]' '/raw2/{gsub(/ /,"",$4); print $4}')
	fs_ntfs p2.img tree-winmbr $((n2 * 512)) Windows && put p2.img win-mbr.raw "$s2"
	printf 'p1 ntfs tree-sysres\np2 ntfs tree-winmbr\n' >win-mbr.volumes
}

layout_rhel_gpt() { # RHEL installer style: GPT, EFI (FAT32), /boot on XFS, LVM2 PV with rhel/root (XFS) and rhel/swap
	make_tree tree-rhelefi nolinks
	make_tree tree-boot links nospaces
	make_tree tree-rhelroot links nospaces
	truncate -s $((800 * MiB)) rhel-gpt.raw
	sgdisk -n1:2048:+40M -t1:ef00 -c1:"EFI System Partition" -n2:0:+320M -t2:8300 -n3:0:0 -t3:8e00 rhel-gpt.raw >/dev/null
	fs_fat p1.img tree-rhelefi $((40 * MiB)) 32 && put p1.img rhel-gpt.raw 2048
	local s2 s3 e3
	s2=$(sgdisk -i2 rhel-gpt.raw | awk '/First sector/{print $3}')
	s3=$(sgdisk -i3 rhel-gpt.raw | awk '/First sector/{print $3}')
	e3=$(sgdisk -i3 rhel-gpt.raw | awk '/Last sector/{print $3}')
	fs_xfs p2.img tree-boot $((320 * MiB)) boot && put p2.img rhel-gpt.raw "$s2"

	# The PV: labelled by pvcreate on a loop device, its VG defined by
	# vgcfgrestore (no device-mapper needed), the LVs' bytes written at
	# pe_start + extent × extent size. Extents are 4 MiB, data starts at 1 MiB.
	local pvsize=$(((e3 - s3 + 1) * 512)) pe_count loop
	pe_count=$(((pvsize - MiB) / (4 * MiB)))
	truncate -s "$pvsize" p3.img
	local conf='backup { backup = 0 archive = 0 } devices { use_devicesfile = 0 } global { use_lvmlockd = 0 }'
	local pvid=RhelPV-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa
	cat >rhel.vg <<-VG
		rhel {
		id = "RhelVG-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
		seqno = 1
		format = "lvm2"
		status = ["RESIZEABLE", "READ", "WRITE"]
		flags = []
		extent_size = 8192
		max_lv = 0
		max_pv = 0
		metadata_copies = 0
		physical_volumes {
		pv0 {
		id = "$pvid"
		device = "/dev/sda3"
		status = ["ALLOCATABLE"]
		flags = []
		dev_size = $((pvsize / 512))
		pe_start = 2048
		pe_count = $pe_count
		}
		}
		logical_volumes {
		root {
		id = "RhelRT-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
		status = ["READ", "WRITE", "VISIBLE"]
		flags = []
		segment_count = 1
		segment1 {
		start_extent = 0
		extent_count = 80
		type = "striped"
		stripe_count = 1
		stripes = ["pv0", 0]
		}
		}
		swap {
		id = "RhelSW-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
		status = ["READ", "WRITE", "VISIBLE"]
		flags = []
		segment_count = 1
		segment1 {
		start_extent = 0
		extent_count = 8
		type = "striped"
		stripe_count = 1
		stripes = ["pv0", 80]
		}
		}
		}
		}
		contents = "Text Format Volume Group"
		version = 1
		description = "snapscan fixture"
		creation_host = "fixture"
		creation_time = 1700000000
	VG
	loop=$(losetup -f --show p3.img)
	{
		# Without device-mapper vgcfgrestore warns that it cannot check for
		# active volumes; the metadata is written all the same.
		LVM_SUPPRESS_FD_WARNINGS=1 pvcreate --config "$conf" -ff -y --norestorefile --uuid "$pvid" "$loop" >/dev/null 2>&1 &&
			LVM_SUPPRESS_FD_WARNINGS=1 vgcfgrestore --config "$conf" --force -f rhel.vg rhel >/dev/null 2>&1
	} || { losetup -d "$loop"; return 1; }
	losetup -d "$loop"
	rm -f rhel.vg
	fs_xfs root.img tree-rhelroot $((320 * MiB)) root
	dd if=root.img of=p3.img bs=1M seek=1 conv=notrunc,sparse status=none && rm -f root.img
	fs_swap swap.img "" $((32 * MiB))
	dd if=swap.img of=p3.img bs=1M seek=$((1 + 80 * 4)) conv=notrunc,sparse status=none && rm -f swap.img
	put p3.img rhel-gpt.raw "$s3"
	printf 'p1 fat32 tree-rhelefi\np2 xfs tree-boot\np3 lvm2 -\nlvm/rhel/root xfs tree-rhelroot\nlvm/rhel/swap swap -\n' >rhel-gpt.volumes
}

layout_bare_ext2() { # a whole-disk ext2 file system, no partition table
	make_tree tree-bare
	fs_ext2 bare-ext2.raw tree-bare $((32 * MiB))
	printf 'disk ext2 tree-bare\n' >bare-ext2.volumes
}

layout_iso() { # an ISO9660 image with Rock Ridge and Joliet
	make_tree tree-iso
	fs_iso iso.raw tree-iso
	printf 'disk iso9660 tree-iso\n' >iso.volumes
}

layout_squashfs() { # a squashfs image, whole disk
	make_tree tree-squashfs
	fs_squashfs squashfs.raw tree-squashfs
	printf 'disk squashfs tree-squashfs\n' >squashfs.volumes
}

# --- image formats ----------------------------------------------------------
# convert L: every format qemu-img writes that snapscan reads.
convert_all() {
	local l=$1 raw=$1.raw
	# qemu-img wants sizes that suit every format: round up to 2 MiB.
	local size
	size=$(stat -c %s "$raw")
	if [ $((size % (2 * MiB))) -ne 0 ]; then truncate -s $(((size / (2 * MiB) + 1) * 2 * MiB)) "$raw"; fi
	qemu-img convert -O qcow2 "$raw" "$l.qcow2v3.qcow2"
	qemu-img convert -O qcow2 -o compat=0.10 "$raw" "$l.qcow2v2.qcow2"
	qemu-img convert -c -O qcow2 "$raw" "$l.qcow2deflate.qcow2"
	qemu-img convert -c -O qcow2 -o compression_type=zstd "$raw" "$l.qcow2zstd.qcow2"
	# An overlay holding only the clusters that differ from its base: the
	# base has the disk's second half zeroed.
	cp --sparse=always "$raw" "$l.base.raw"
	local half=$(( $(stat -c %s "$raw") / 2 ))
	fallocate -p -o "$half" -l "$half" "$l.base.raw" 2>/dev/null ||
		dd if=/dev/zero of="$l.base.raw" bs=1M seek=$((half / MiB)) count=$((half / MiB)) conv=notrunc status=none
	qemu-img convert -O qcow2 "$l.base.raw" "$l.base.qcow2"
	rm -f "$l.base.raw"
	qemu-img convert -O qcow2 -B "$l.base.qcow2" -F qcow2 "$raw" "$l.overlay.qcow2"
	for sub in monolithicSparse streamOptimized monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
		qemu-img convert -O vmdk -o subformat=$sub "$raw" "$l.vmdk-$sub.vmdk"
	done
	qemu-img convert -O vpc -o subformat=dynamic "$raw" "$l.vhd-dynamic.vhd"
	qemu-img convert -O vpc -o subformat=fixed,force_size=on "$raw" "$l.vhd-fixed.vhd"
	qemu-img convert -O vhdx -o subformat=dynamic "$raw" "$l.vhdx-dynamic.vhdx"
	qemu-img convert -O vhdx -o subformat=fixed "$raw" "$l.vhdx-fixed.vhdx"
}

all=(gpt_linux mbr_logical bare_ext2 iso squashfs win_gpt win_mbr rhel_gpt)
[ $# -gt 0 ] && all=("$@")
for l in "${all[@]}"; do
	"layout_$l"
	convert_all "${l//_/-}"
done
ls "$OUT" >/dev/null
