#!/usr/bin/env bash
# Builds the LVM2 fixtures of scanner/incremental inside $OUT with real
# tools: a base disk whose one partition is an LVM2 physical volume
# holding a logical volume of two segments in reverse order on the PV, an
# ext4 file system in it, and linked clones of it.
#
#   base.qcow2   96 MiB GPT disk, p1 (1 MiB..95 MiB, type 8e00) an LVM2 PV
#                (pvcreate, then vgcfgrestore of the metadata below: VG
#                incvg, LV data of 32 MiB: LV extents 0-15 at PV extents
#                50-65, 16-31 at PV extents 5-20, 1 MiB extents), holding
#                an ext4 file system made by mkfs.ext4 -d from tree/.
#   files.qcow2  overlay: what a guest changed in the file system: a file
#                edited in place, one appended to, one replaced by rename,
#                one deleted and a new one written, a new file with a
#                marker; a file in each segment.
#   moved.qcow2  overlay: the LV moved (its second segment copied to PV
#                extents 70-85 and the metadata rewritten by vgcfgrestore
#                to say so): the same files, elsewhere on the disk.
#
# With no device-mapper here, the guest's writes go through the kernel's
# ext4 on a loop mount of a copy of the LV (fs.img), and then the 4 KiB
# blocks that the kernel changed are written into the clone's FUSE export
# (qemu-storage-daemon) at the disk offsets the LV's segments give, as
# device-mapper would place them: the overlay holds what the guest wrote,
# nothing else.
# Needs root (loop devices), pvcreate, vgcfgrestore, fuse3,
# qemu-storage-daemon, qemu-img, sgdisk, mkfs.ext4, python3.
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"
cd "$OUT"
p1=$((2048 * 512)) # the partition's offset on the disk
pestart=$MiB       # the PV's data area, from the partition's start
export LVM_SUPPRESS_FD_WARNINGS=1
lvmconf='backup { backup = 0 archive = 0 } devices { use_devicesfile = 0 } global { use_lvmlockd = 0 }'
pvid=PvIncl-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaa0

# meta SEG2: the VG metadata with the LV's second segment at PV extent SEG2.
meta() {
	cat <<EOF
incvg {
	id = "VgIncl-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx"
	seqno = $2
	format = "lvm2"
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 2048
	max_lv = 0
	max_pv = 0
	metadata_copies = 0
	physical_volumes {
		pv0 {
			id = "$pvid"
			device = "/dev/loop-fixture"
			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 192512
			pe_start = 2048
			pe_count = 93
		}
	}
	logical_volumes {
		data {
			id = "LvIncl-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			creation_time = 1700000000
			creation_host = "fixture"
			segment_count = 2
			segment1 {
				start_extent = 0
				extent_count = 16
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 50]
			}
			segment2 {
				start_extent = 16
				extent_count = 16
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", $1]
			}
		}
	}
}
contents = "Text Format Volume Group"
version = 1
description = "snapscan incremental fixture"
creation_host = "fixture"
creation_time = 1700000000
EOF
}

# disk offset of byte OFF of the LV whose second segment is at PV extent SEG2
lvoff() { # OFF SEG2
	local ext=$(($1 / MiB)) within=$(($1 % MiB)) pe
	if [ "$ext" -lt 16 ]; then pe=$((50 + ext)); else pe=$(($2 + ext - 16)); fi
	echo $((p1 + pestart + pe * MiB + within))
}

rm -rf tree && mkdir -p tree/dir1 tree/dir2 tree/bin
for i in $(seq -w 1 60); do
	d=dir1; [ $((10#$i % 2)) = 0 ] && d=dir2
	{ for k in $(seq 1 $((10#$i * 9))); do echo "line $k of file $i: lazy dogs"; done; } >tree/$d/file$i.txt
done
echo "marker SNAPSCAN-EVIL-A here" >>tree/dir1/file003.txt
for b in ls cat grep tar; do cp "$(command -v $b)" tree/bin/; done
head -c 300000 /dev/zero | tr '\0' 'x' >tree/edit.txt
echo "clean start" >tree/extend.txt
echo "replace me: clean" >tree/replace.txt
head -c 81920 /dev/zero | tr '\0' 'd' >tree/deleted.bin
# A large file, so that the file system's data reaches the second segment.
head -c $((20 * MiB)) /dev/zero | tr '\0' 'b' >tree/big.bin
echo "SNAPSCAN-EVIL-A near the end" >tree/late.txt

rm -f fs.img && mkfs.ext4 -q -F -L lvdata -U 22222222-3333-4444-5555-666666666666 -d tree fs.img 32M
truncate -s $((96 * MiB)) disk.raw
sgdisk -n 1:2048:+94M -t 1:8e00 disk.raw >/dev/null
loop=$(losetup -f --show -o "$p1" --sizelimit $((94 * MiB)) disk.raw)
trap 'losetup -d "$loop" 2>/dev/null || true' EXIT
pvcreate --config "$lvmconf" -ff -y --norestorefile --uuid "$pvid" "$loop" >/dev/null
meta 5 3 >meta.vg
vgcfgrestore --config "$lvmconf" --force -f meta.vg incvg >/dev/null
losetup -d "$loop"
trap - EXIT
# The LV's bytes, segment by segment.
dd if=fs.img of=disk.raw bs=1M count=16 seek=$(($(lvoff 0 5) / MiB)) conv=notrunc status=none
dd if=fs.img of=disk.raw bs=1M skip=16 count=16 seek=$(($(lvoff $((16 * MiB)) 5) / MiB)) conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 disk.raw base.qcow2
rm -f disk.raw
touch -d '2026-01-01 00:00:00 UTC' base.qcow2

# edit NAME FUNC: make NAME.qcow2 over base.qcow2 and run FUNC with the
# overlay exported as a file at $exp (FUNC mounts what it needs).
edit() { overlay_edit base.qcow2 "$@"; }

# guest FUNC: run FUNC in a loop mount of a copy of the LV at $mnt, then
# write the blocks it changed into the export where the LV places them.
guest() {
	cp fs.img guest.img
	mnt=$(mktemp -d)
	mount -o loop,noatime guest.img "$mnt"
	local rc=0
	"$1" || rc=$?
	umount "$mnt"
	rmdir "$mnt"
	python3 - fs.img guest.img "$exp" "$p1" "$pestart" <<'PY'
import sys, os
old, new, exp = sys.argv[1], sys.argv[2], sys.argv[3]
p1, pestart, MiB = int(sys.argv[4]), int(sys.argv[5]), 1 << 20
def disk(off):  # the LV's byte off on the disk (second segment at extent 5)
    ext, within = divmod(off, MiB)
    pe = 50 + ext if ext < 16 else 5 + ext - 16
    return p1 + pestart + pe * MiB + within
with open(old, 'rb') as a, open(new, 'rb') as b:
    fd = os.open(exp, os.O_WRONLY)
    off, n = 0, 0
    while True:
        x, y = a.read(4096), b.read(4096)
        if not y:
            break
        if x != y:
            os.pwrite(fd, y, disk(off))
            n += 1
        off += 4096
    os.fsync(fd)
    os.close(fd)
print(n, "blocks written", file=sys.stderr)
PY
	rm -f guest.img
	return $rc
}

files_changes() {
	cd "$mnt"
	printf 'SNAPSCAN-EVIL-A in place' | dd of=edit.txt bs=1 seek=150000 conv=notrunc status=none
	echo "now SNAPSCAN-EVIL-A appended" >>extend.txt
	echo "replaced: SNAPSCAN-EVIL-A" >replace.tmp && mv replace.tmp replace.txt
	rm deleted.bin && sync && echo "SNAPSCAN-EVIL-A new file" >dir2/new.txt
	printf 'SNAPSCAN-EVIL-A' | dd of=big.bin bs=1 seek=$((19 * MiB)) conv=notrunc status=none
	cd "$OUT"
}
files() { guest files_changes 2>>guest.log; }

# moved: the second segment's 16 MiB copied to PV extents 70-85, and the
# metadata rewritten (seqno 4) to place it there.
moved() {
	dd if="$exp" of="$exp" bs=1M count=16 skip=$(($(lvoff $((16 * MiB)) 5) / MiB)) \
		seek=$(($(lvoff $((16 * MiB)) 70) / MiB)) conv=notrunc status=none
	local l
	l=$(losetup -f --show -o "$p1" --sizelimit $((94 * MiB)) "$exp")
	meta 70 4 >meta-moved.vg
	vgcfgrestore --config "$lvmconf" --force -f meta-moved.vg incvg >/dev/null || { losetup -d "$l"; return 1; }
	losetup -d "$l"
}

edit files files
edit moved moved
rm -rf tree fs.img
for c in files moved; do touch -d '2026-01-02 00:00:00 UTC' $c.qcow2; done
