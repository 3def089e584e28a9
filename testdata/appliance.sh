#!/usr/bin/env bash
# Builds the appliance's end-to-end fixture: 20 VM disk images on two
# datastores ($OUT/ds-a, $OUT/ds-b), made by real tools — mkfs.ext4 -d from
# a source tree (ext4 guests), sgdisk for a GPT on every other disk, qemu-img convert to
# qcow2, vmdk, vhdx and vpc (and raw left as is) — with planted matches, plus
# a corrupt qcow2 whose header points outside the file.
#
# Expected answers: $OUT/expected.tsv lists "vm<TAB>rule<TAB>path" for each
# planted match; $OUT/disks.tsv lists "vm<TAB>datastore<TAB>path<TAB>format";
# $OUT/rules/planted.yar holds the rules that find the plants.
#
# Usage: OUT=DIR appliance.sh
#
# Tools: mkfs.ext4 (e2fsprogs), sgdisk (gdisk), qemu-img (qemu-utils), dd.
set -euo pipefail
: "${OUT:?OUT must be set}"
export LC_ALL=C TZ=UTC
rm -rf "$OUT/ds-a" "$OUT/ds-b" "$OUT/work" "$OUT/rules"
mkdir -p "$OUT/ds-a" "$OUT/ds-b" "$OUT/work" "$OUT/rules"
: >"$OUT/expected.tsv"
: >"$OUT/disks.tsv"

cat >"$OUT/rules/planted.yar" <<'YAR'
rule SnapscanE2E_PlantedA {
	meta:
		description = "end-to-end test plant A"
		score = 70
	strings:
		$a = "SNAPSCAN-E2E-PLANTED-A"
	condition:
		$a
}
rule SnapscanE2E_PlantedB : e2e {
	strings:
		$b = "SNAPSCAN-E2E-PLANTED-B"
	condition:
		$b and filename matches /\.txt$/
}
YAR

formats=(raw qcow2 vmdk vhdx vpc)
for i in $(seq -w 1 20); do
	vm="vm$i"
	n=$((10#$i))
	T="$OUT/work/$vm"
	mkdir -p "$T/etc" "$T/usr/bin" "$T/home/user" "$T/opt/app"
	printf '%s\n' "$vm" >"$T/etc/hostname"
	printf 'VM=%s\nBUILD=%d\n' "$vm" "$n" >"$T/opt/app/app.conf"
	# The same binaries in every VM: the verdict cache scans them once.
	cp /usr/bin/ls /usr/bin/cat "$T/usr/bin/"
	printf 'notes of %s\n' "$vm" >"$T/home/user/notes.txt"
	if ((n % 3 == 0)); then
		printf '#!/bin/sh\n# SNAPSCAN-E2E-PLANTED-A\nexit 0\n' >"$T/opt/app/dropper.sh"
		printf '%s\tSnapscanE2E_PlantedA\t/opt/app/dropper.sh\n' "$vm" >>"$OUT/expected.tsv"
	fi
	if ((n % 4 == 0)); then
		printf 'todo\nSNAPSCAN-E2E-PLANTED-B\n' >"$T/home/user/todo.txt"
		printf '%s\tSnapscanE2E_PlantedB\t/home/user/todo.txt\n' "$vm" >>"$OUT/expected.tsv"
		# The same bytes under a name the rule refuses (filename external).
		printf 'todo\nSNAPSCAN-E2E-PLANTED-B\n' >"$T/home/user/todo.md"
	fi
	find "$T" -exec touch -h -d @1704164645 {} +
	fsimg="$OUT/work/$vm.ext4"
	mkfs.ext4 -q -F -L "$vm" -U "00000000-0000-4000-8000-0000000000$i" -E root_owner=0:0 -d "$T" "$fsimg" 12M >/dev/null
	raw="$OUT/work/$vm.raw"
	if ((n % 2 == 0)); then
		# GPT disk: one partition from 1 MiB holding the file system.
		truncate -s 14M "$raw"
		# (not -q: sgdisk 1.0.9 then leaves a blank disk unwritten)
		sgdisk -o -n 1:2048:0 -t 1:8300 -U "00000000-0000-4000-8000-1000000000$i" "$raw" >/dev/null
		dd if="$fsimg" of="$raw" bs=1M seek=1 conv=notrunc status=none
	else
		mv "$fsimg" "$raw"
	fi
	fmt=${formats[$((n % 5))]}
	ds=ds-a
	((n % 2 == 0)) && ds=ds-b
	case $fmt in
	raw) ext=img; cp "$raw" "$OUT/$ds/$vm.$ext" ;;
	qcow2) ext=qcow2; qemu-img convert -f raw -O qcow2 "$raw" "$OUT/$ds/$vm.$ext" ;;
	vmdk) ext=vmdk; qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$raw" "$OUT/$ds/$vm.$ext" ;;
	vhdx) ext=vhdx; qemu-img convert -f raw -O vhdx "$raw" "$OUT/$ds/$vm.$ext" ;;
	vpc) ext=vhd; qemu-img convert -f raw -O vpc -o subformat=dynamic "$raw" "$OUT/$ds/$vm.$ext" ;;
	esac
	printf '%s\t%s\t%s\t%s\n' "$vm" "$ds" "$vm.$ext" "$fmt" >>"$OUT/disks.tsv"
	rm -f "$raw" "$fsimg"
done

# A corrupt qcow2: a real image whose L1 table offset (header bytes 40-47)
# points far beyond the end of the file.
qemu-img create -q -f qcow2 "$OUT/ds-a/corrupt.qcow2" 16M
printf '\x7f\xff\xff\xff\xff\xff\x00\x00' | dd of="$OUT/ds-a/corrupt.qcow2" bs=1 seek=40 conv=notrunc status=none
rm -rf "$OUT/work"
