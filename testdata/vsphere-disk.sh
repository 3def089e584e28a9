#!/usr/bin/env bash
# The disk of the vSphere connector tests' simulated VMs: a 32 MiB
# monolithicSparse VMDK (qemu-img) holding an ext4 with planted files.
#   $OUT/disk.vmdk    the disk
#   $OUT/planted.txt  the planted files' paths and SHA-256
set -euo pipefail
work=$OUT/work
mkdir -p "$work/fs/planted"
printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\n' > "$work/fs/planted/eicar.com"
printf 'snapscan planted file on vSphere\n' > "$work/fs/planted/hello.txt"
head -c 200000 /dev/urandom > "$work/fs/planted/random.bin"
truncate -s 32M "$work/disk.raw"
mkfs.ext4 -q -F -L vsphere -d "$work/fs" "$work/disk.raw"
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$work/disk.raw" "$OUT/disk.vmdk"
(cd "$work/fs" && find planted -type f | sort | xargs sha256sum) > "$OUT/planted.txt"
rm -rf "$work"
