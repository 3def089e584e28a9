#!/usr/bin/env bash
# Builds the qcow2 fixtures of snapshot/image/qcow2 inside $OUT with real
# tools (qemu-img, qemu-io), and the expected answers beside them: for every
# image X.qcow2, X.raw is `qemu-img convert -O raw X.qcow2 X.raw`.
#
#   src.raw         64 MiB + 12 KiB source disk: pseudo-random data (AES-CTR
#                   keystream, so every run gives the same bytes), runs of
#                   written zeros, holes, and marker strings across cluster
#                   edges; the size is not a multiple of the cluster size.
#   v2, v3, c4k, c2m, deflate, zstd, l2ext .qcow2   conversions of src.raw
#   base.qcow2, ovl.qcow2, ovl2.qcow2  a chain (ovl2 -> ovl -> base) written
#                   with qemu-io, including zeroed clusters over base data
#   l2ovl.qcow2     an overlay on base.qcow2 with extended L2 entries: some
#                   subclusters written, some zeroed, the rest from the base
#   rawbase.qcow2   an overlay whose backing file is src.raw (format raw)
#   grow.qcow2      an overlay larger than its backing file
#   sub/below.qcow2 backing file named "../base.qcow2" (outside sub/)
#   bad/*           hostile chains: loop (a -> b -> a), self loop, missing
#                   backing file, /etc/passwd as backing file, a chain deeper
#                   than image.MaxChainDepth.
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
cd "$OUT"

MiB=$((1024 * 1024))

# rnd N: N deterministic pseudo-random bytes on stdout.
rnd() {
	# openssl dies of SIGPIPE when head has enough: that is expected.
	(openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
		-iv "$(printf '%032x' "$2")" </dev/zero 2>/dev/null || true) | head -c "$1"
}
# put OFFSET: copy stdin into src.raw at byte OFFSET.
put() { dd of=src.raw bs=64K seek="$1" oflag=seek_bytes conv=notrunc status=none iflag=fullblock; }

make_source() {
	rm -f src.raw
	truncate -s $((64 * MiB + 12 * 1024)) src.raw
	rnd $((8 * MiB)) 1 | put 0
	head -c $((4 * MiB)) /dev/zero | put $((8 * MiB)) # written zeros
	# 12-16 MiB stays a hole.
	rnd $((16 * MiB)) 2 | put $((24 * MiB))
	rnd $((8 * MiB)) 3 | put $((56 * MiB))
	# Markers straddling 4 KiB, 64 KiB and 2 MiB boundaries, in holes and in data.
	for off in $((16 * MiB)) $((18 * MiB)) $((20 * MiB + 65536)) $((41 * MiB)) \
		$((44 * MiB + 4096)) $((50 * MiB)) $((9 * MiB + 131072)) $((30 * MiB))
	do
		printf 'EDGE-%012d-EDGE' "$off" | put $((off - 9))
	done
	# Single sectors scattered in the 40-56 MiB hole.
	for i in 1 3 5 7 11 13; do
		rnd 512 $((100 + i)) | put $((40 * MiB + i * MiB + 4096 * i - 512))
	done
	printf 'LAST-SECTOR-OF-THE-DISK' | put $((64 * MiB + 12 * 1024 - 23))
}
make_source

conv() { # conv NAME OPTIONS...: src.raw -> NAME.qcow2 and its expected NAME.raw
	local name=$1
	shift
	qemu-img convert -f raw -O qcow2 "$@" src.raw "$name.qcow2"
}
conv v2 -o compat=0.10
conv v3 -o compat=1.1
conv c4k -o cluster_size=4096
conv c2m -o cluster_size=2M
conv deflate -c
conv zstd -c -o compression_type=zstd
conv l2ext -o extended_l2=on,cluster_size=128K

# A chain ovl2 -> ovl -> base: ovl changes some clusters (some partly, so
# qemu copies the rest from base), zeroes others, and ovl2 changes more.
cp v3.qcow2 base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ovl.qcow2
qemu-io -f qcow2 \
	-c 'write -P 0xab 1M 64k' \
	-c 'write -P 0xcd 30000k 3000' \
	-c 'write -z 2M 128k' \
	-c 'write -z 25M 1M' \
	-c 'write -P 0x11 67108000 864' \
	ovl.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b ovl.qcow2 -F qcow2 ovl2.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 1M 4k' -c 'write -P 0x33 41M 1M' ovl2.qcow2 >/dev/null

# Extended L2 entries over a backing file: subclusters (4 KiB of 128 KiB
# clusters) written, zeroed, or left to the base.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128K -b base.qcow2 -F qcow2 l2ovl.qcow2
qemu-io -f qcow2 \
	-c 'write -P 0x66 1M 4k' \
	-c 'write -P 0x67 1028k 8k' \
	-c 'write -z 3M 8k' \
	-c 'write -P 0x77 5000k 12k' \
	-c 'write -z 26M 256k' \
	l2ovl.qcow2 >/dev/null

# Backing file in raw format.
qemu-img create -q -f qcow2 -b src.raw -F raw rawbase.qcow2
qemu-io -f qcow2 -c 'write -P 0x44 5M 70k' rawbase.qcow2 >/dev/null

# Overlay larger than its backing file: the tail reads as zeros.
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 grow.qcow2 80M
qemu-io -f qcow2 -c 'write -P 0x55 70M 4k' grow.qcow2 >/dev/null

for img in v2 v3 c4k c2m deflate zstd l2ext l2ovl base ovl ovl2 rawbase grow; do
	qemu-img convert -O raw "$img.qcow2" "$img.raw"
done

# Backing file outside the image's folder, named with "..".
mkdir -p sub
qemu-img create -q -f qcow2 -b ../base.qcow2 -F qcow2 sub/below.qcow2

mkdir -p bad
(
	cd bad
	qemu-img create -q -f qcow2 a.qcow2 1M
	qemu-img create -q -f qcow2 b.qcow2 1M
	qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
	qemu-img rebase -u -b a.qcow2 -F qcow2 b.qcow2
	qemu-img create -q -f qcow2 self.qcow2 1M
	qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
	qemu-img create -q -f qcow2 missing.qcow2 1M
	qemu-img rebase -u -b does-not-exist.qcow2 -F qcow2 missing.qcow2
	qemu-img create -q -f qcow2 passwd.qcow2 1M
	qemu-img rebase -u -b /etc/passwd -F raw passwd.qcow2
	# deep0 <- deep1 <- ... <- deep20: deeper than image.MaxChainDepth (16).
	qemu-img create -q -f qcow2 deep0.qcow2 1M
	for i in $(seq 1 20); do
		qemu-img create -q -f qcow2 -b "deep$((i - 1)).qcow2" -F qcow2 "deep$i.qcow2"
	done
)
