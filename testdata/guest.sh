#!/usr/bin/env bash
# Builds the tiny guest the libvirt connector tests boot under QEMU/TCG:
#   $OUT/vmlinuz      Debian's cloud kernel (argument 1: its /boot/vmlinuz-*)
#   $OUT/initrd.gz    busybox-static, the virtio modules the kernel lacks
#                     built in, guestd (testdata/guest/guestd.c, static) and
#                     testdata/guest/init
#   $OUT/disk.qcow2   qcow2 v3 (compat 1.1, so dirty bitmaps work) holding an
#                     ext4 with no partition table and no journal (so that a
#                     frozen view shows every write the guest fsync'd without
#                     journal replay; no lazily initialised inode tables, whose
#                     counts the kernel writes back late), with planted files
#                     under /planted
#   $OUT/planted.txt  the planted files' paths and SHA-256, for the tests
# (testdata/guest/init says which commands the guest obeys; this script is
# the fixture's key, so a change there is marked here: init has "run".)
set -euo pipefail
kernel=$1
ver=${kernel##*/vmlinuz-}
mods=/lib/modules/$ver
[ -f "$kernel" ] && [ -d "$mods" ] || { echo "no kernel $kernel or modules $mods" >&2; exit 1; }

work=$OUT/work
mkdir -p "$work/root/bin" "$work/root/lib" "$work/fs/planted/sub"
cp "$kernel" "$OUT/vmlinuz"

# The virtio modules, in dependency order (modules.dep lists a module's
# dependencies after it).
: > "$work/root/lib/modules.order"
for m in virtio_pci virtio_blk; do
	line=$(grep "/$m.ko[^:]*:" "$mods/modules.dep")
	for dep in $(echo "${line#*:}" | tr ' ' '\n' | tac) "${line%%:*}"; do
		[ -n "$dep" ] || continue
		grep -qx "$dep" "$work/root/lib/modules.order" && continue
		mkdir -p "$work/root/lib/$(dirname "$dep")"
		cp "$mods/$dep" "$work/root/lib/$dep"
		echo "$dep" >> "$work/root/lib/modules.order"
	done
done
cp /bin/busybox "$work/root/bin/busybox"
gcc -O2 -static -o "$work/root/bin/guestd" guest/guestd.c
install -m 0755 guest/init "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT/initrd.gz")

# The disk: planted files a scan must find, and room for the writer.
printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\n' > "$work/fs/planted/eicar.com"
printf 'snapscan planted file\n' > "$work/fs/planted/hello.txt"
head -c 300000 /dev/urandom > "$work/fs/planted/sub/random.bin"
truncate -s 64M "$work/disk.raw"
mkfs.ext4 -q -F -O ^has_journal,^metadata_csum,^uninit_bg -L guest -d "$work/fs" "$work/disk.raw"
qemu-img convert -f raw -O qcow2 -o compat=1.1 "$work/disk.raw" "$OUT/disk.qcow2"
(cd "$work/fs" && find planted -type f | sort | xargs sha256sum) > "$OUT/planted.txt"
rm -rf "$work"
