#!/usr/bin/env bash
# Builds the NTFS fixtures of scanner/incremental inside $OUT with real
# tools: base.qcow2, a 32 MiB GPT disk whose p1 is NTFS (mkntfs, filled
# through ntfs-3g), and clone.qcow2, an overlay edited through a
# qemu-storage-daemon FUSE export mounted with ntfs-3g: a resident file
# rewritten (its MFT record changes), a non-resident file edited in place,
# a new file; other files, resident and not, left alone.
# Needs root, fuse3, ntfs-3g, qemu-storage-daemon, sgdisk.
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"
cd "$OUT"
rm -rf tree && mkdir -p tree/docs tree/bin
for i in $(seq 1 40); do echo "resident note $i" >tree/docs/note$i.txt; done
echo "SNAPSCAN-EVIL-A resident" >tree/docs/evil.txt
echo "short and resident" >tree/docs/change-me.txt
for b in ls cat; do cp "$(command -v $b)" tree/bin/; done
head -c 200000 /dev/zero | tr '\0' 'n' >tree/docs/big.txt
truncate -s 30M fs.img
mkntfs -F -f -q -L base fs.img >/dev/null 2>&1
mnt=$(mktemp -d)
ntfs-3g fs.img "$mnt"
cp -r tree/. "$mnt"/
umount "$mnt"
truncate -s 32M disk.raw
sgdisk -n 1:2048:+30M -t 1:0700 disk.raw >/dev/null # not -q: sgdisk 1.0.9 then writes nothing
dd if=fs.img of=disk.raw bs=512 seek=2048 conv=notrunc,sparse status=none
rm -f fs.img
qemu-img convert -q -f raw -O qcow2 disk.raw base.qcow2
rm -f disk.raw
touch -d '2026-01-01 00:00:00 UTC' base.qcow2

changes() {
	local loop rc=0
	loop=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((30 * MiB)) "$exp")
	(
		ntfs-3g -o noatime "$loop" "$mnt"
		trap 'umount "$mnt"' EXIT
		echo "SNAPSCAN-EVIL-A now" >"$mnt/docs/change-me.txt"
		printf 'SNAPSCAN-EVIL-TAIL' | dd of="$mnt/docs/big.txt" bs=1 seek=100000 conv=notrunc status=none
		echo "SNAPSCAN-EVIL-A new" >"$mnt/docs/new.txt"
	) || rc=$?
	sync
	losetup -d "$loop"
	return $rc
}
overlay_edit base.qcow2 clone changes
rmdir "$mnt"
rm -rf tree
touch -d '2026-01-02 00:00:00 UTC' clone.qcow2
