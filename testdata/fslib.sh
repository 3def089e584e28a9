# File-system builders shared by the fixture scripts (sourced, not run):
# each fs_* writes an image file IMG of SIZE bytes holding the folder TREE,
# with the real tool for that file system. testenv.Fixture hashes this file
# with every script, so a change here rebuilds their fixtures.
MiB=$((1024 * 1024))

fs_ext4() { mkfs.ext4 -q -F -d "$2" "$1" "$(($3 / 1024))K" >/dev/null; }
fs_ext2() { mkfs.ext2 -q -F -d "$2" "$1" "$(($3 / 1024))K" >/dev/null; }
fs_fat() { # fs_fat IMG TREE SIZE BITS
	rm -f "$1"
	mkfs.vfat -F "$4" -n "FAT$4" -C "$1" $(($3 / 1024)) >/dev/null
	mcopy -s -i "$1" "$2"/* ::
}
fs_swap() { truncate -s "$3" "$1" && mkswap -q "$1" >/dev/null; }
fs_ntfs() { # fs_ntfs IMG TREE SIZE LABEL: mkntfs, then copy the tree in through ntfs-3g (FUSE)
	rm -f "$1"
	truncate -s "$3" "$1"
	mkntfs -F -f -q -L "$4" "$1" >/dev/null 2>&1
	local mnt
	mnt=$(mktemp -d)
	ntfs-3g "$1" "$mnt"
	cp -a "$2"/. "$mnt"/ || { umount "$mnt"; return 1; }
	umount "$mnt"
	rmdir "$mnt"
}
fs_xfs() { # fs_xfs IMG TREE SIZE LABEL: mkfs.xfs populated by a protofile made from TREE (no mount)
	rm -f "$1"
	truncate -s "$3" "$1"
	find "$2" -mindepth 1 -printf '%d\t%y\t%m\t%p\t%f\t%l\n' | sort -t$'\t' -k4,4 | awk -F'\t' '
		BEGIN { print "/dev/null"; print "0 0"; print "d--755 0 0"; depth = 1 }
		{
			d = $1 + 0
			while (depth > d) { print "$"; depth-- }
			m = sprintf("%03o", $3 % 512)
			if ($2 == "d") { print $5, "d--" m, 0, 0; depth = d + 1 }
			else if ($2 == "f") { print $5, "---" m, 0, 0, $4 }
			else if ($2 == "l") { print $5, "l--" m, 0, 0, $6 }
		}
		END { while (depth > 0) { print "$"; depth-- } }' >"$1.proto"
	mkfs.xfs -q -L "$4" -p "$1.proto" "$1"
	rm -f "$1.proto"
}
fs_iso() { xorriso -as mkisofs -quiet -R -J -V ISOVOL -o "$1" "$2" 2>/dev/null; }
fs_squashfs() { mksquashfs "$2" "$1" -quiet -noappend -all-root >/dev/null; }

# put IMG DISK START_SECTOR: write a file-system image into a disk.
put() { dd if="$1" of="$2" bs=512 seek="$3" conv=notrunc,sparse status=none; rm -f "$1"; }

# overlay_edit BASE NAME FUNC: make NAME.qcow2, an empty qcow2 overlay of
# BASE, and run FUNC with it exported read-write as a file at $exp
# (qemu-storage-daemon's FUSE export): what FUNC writes there, the overlay
# holds, and nothing else. FUNC mounts what it needs.
overlay_edit() {
	local base=$1 name=$2 fn=$3
	qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$name.qcow2"
	exp=$PWD/$name.exp
	: >"$exp"
	qemu-storage-daemon --blockdev driver=file,filename="$name.qcow2",node-name=f \
		--blockdev driver=qcow2,file=f,node-name=q \
		--export type=fuse,id=e,node-name=q,mountpoint="$exp",writable=on &
	local qsd=$!
	for _ in $(seq 100); do
		[ "$(stat -c %s "$exp")" -gt 0 ] && break
		sleep 0.05
	done
	local rc=0
	"$fn" || rc=$?
	sync
	umount "$exp" 2>/dev/null || true
	kill "$qsd"
	wait "$qsd" || true
	rm -f "$exp"
	return $rc
}
