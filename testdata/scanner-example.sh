#!/usr/bin/env bash
# Makes the small disk image that the scanner package's Example functions
# scan (committed as scanner/testdata/example/disk.qcow2, with the rules
# beside it): a GPT disk of 4 MiB whose partition 1 is ext4 holding three
# files, converted to a compressed qcow2. Run by hand when it must change:
#
#   OUT=scanner/testdata/example bash testdata/scanner-example.sh
#
# Tools: mkfs.ext4, sgdisk, qemu-img.
set -euo pipefail
: "${OUT:?set OUT}"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=testdata/fslib.sh
. "$here/fslib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/tmp" "$work/tree/usr/bin" "$work/tree/etc"
printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR\n' >"$work/tree/tmp/test.txt"
printf '#!/bin/sh\necho hi\n' >"$work/tree/usr/bin/run.sh"
printf '127.0.0.1 localhost\n' >"$work/tree/etc/hosts"
find "$work/tree" -exec touch -h -d @1704164645 {} +
E2FSPROGS_FAKE_TIME=1704164645 mkfs.ext4 -q -F -U 5c4e0a3e-2f4e-4d39-9f0e-3c1d7f1a2b3c -E hash_seed=5c4e0a3e-2f4e-4d39-9f0e-3c1d7f1a2b3c \
	-d "$work/tree" "$work/fs.img" 2048K >/dev/null
truncate -s $((4 * MiB)) "$work/disk.raw"
sgdisk -U 11111111-2222-3333-4444-555555555555 -n1:2048:+2M -t1:8300 -u1:66666666-7777-8888-9999-000000000000 "$work/disk.raw" >/dev/null
put "$work/fs.img" "$work/disk.raw" 2048
mkdir -p "$OUT"
qemu-img convert -c -O qcow2 -o cluster_size=4096 "$work/disk.raw" "$OUT/disk.qcow2"
