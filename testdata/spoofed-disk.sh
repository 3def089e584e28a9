#!/usr/bin/env bash
# Builds the format-spoofing disk of issue 10.1 with real tools: a guest
# that owns a raw disk writes a qcow2 header into its first sectors naming
# another disk of the same datastore as its backing file. Probing by
# content would then read (and scan) the other disk instead of the guest's.
#
#   OUT=/tmp/x bash testdata/spoofed-disk.sh
#
# Output in $OUT (the datastore folder):
#   victim.raw      another VM's raw disk: a bare ext4 file system (label
#                   "victim") holding /srv/other.txt ("OTHER-DISK-OF-THE-DATASTORE").
#   guest-clean.raw the guest's raw disk before the attack: a bare ext4
#                   (label "guest") holding /home/user/invoice.pdf.exe (the
#                   EICAR test string) and /etc/hostname ("spoofing-guest").
#   guest.raw       the same disk after the guest wrote, over its first 1024
#                   bytes (ext4's unused boot block, so the guest's own file
#                   system stays intact), the header made by
#                   `qemu-img create -f qcow2 -b victim.raw -F raw`, with
#                   l1_table_offset pointed at a zero cluster of the disk
#                   (63 MiB), so that every cluster reads from victim.raw.
#   hdr.qcow2       the header qemu-img made.
set -euo pipefail
: "${OUT:?set OUT to an output folder}"
cd "$OUT"
rm -rf guest victim guest.raw guest-clean.raw victim.raw hdr.qcow2
MiB=$((1024 * 1024))

mkdir -p guest/home/user guest/etc victim/srv
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' \
	>guest/home/user/invoice.pdf.exe
printf 'spoofing-guest\n' >guest/etc/hostname
printf 'OTHER-DISK-OF-THE-DATASTORE\n' >victim/srv/other.txt
mkfs.ext4 -q -b 4096 -L guest -d guest guest-clean.raw 64M
mkfs.ext4 -q -b 4096 -L victim -d victim victim.raw 64M
rm -rf guest victim

qemu-img create -q -f qcow2 -b victim.raw -F raw hdr.qcow2
cp guest-clean.raw guest.raw
# The L1 table must lie in zeros of the guest's disk: check, then point
# the header's l1_table_offset (bytes 40..47, big-endian) at it.
l1=$((63 * MiB))
if ! cmp -s -n 65536 <(dd if=guest.raw bs=64K skip=$((l1 / 65536)) count=1 status=none) /dev/zero; then
	echo "spoofed-disk.sh: the cluster at $l1 of guest.raw is not zero" >&2
	exit 1
fi
dd if=hdr.qcow2 of=guest.raw bs=1024 count=1 conv=notrunc status=none
printf '\x00\x00\x00\x00\x03\xf0\x00\x00' | dd of=guest.raw bs=1 seek=40 conv=notrunc status=none
[[ $(head -c 4 guest.raw | od -An -tx1 | tr -d ' ') == 514649fb ]]
