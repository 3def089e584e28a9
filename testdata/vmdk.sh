#!/usr/bin/env bash
# Builds the VMDK fixtures of snapshot/image/vmdk inside $OUT with real tools
# (qemu-img, qemu-io; dd for hand-written multi-extent descriptors), and the
# expected answers beside them: X.raw is `qemu-img convert -O raw X.vmdk`,
# except where qemu cannot read the image right (ZERO extents, which qemu
# 7.2 drops): there X.raw is assembled with dd from the pieces.
#
#   src.raw        64 MiB + 12 KiB source disk (as in qcow2.sh)
#   sparse.vmdk    monolithicSparse            stream.vmdk  streamOptimized
#   gdend.vmdk     stream.vmdk rewritten the VMware way: GD_AT_END + footer
#   flat.vmdk      monolithicFlat (+ flat-flat.vmdk)
#   s2g.vmdk       twoGbMaxExtentSparse        f2g.vmdk     twoGbMaxExtentFlat
#   zg.vmdk        monolithicSparse, zeroed_grain=on, with zeroed grains
#   delta.vmdk     a delta disk on sparse.vmdk (parentFileNameHint)
#   big.raw        4 GiB + 1 MiB, data only around the 2 GiB extent edges;
#   bigs.vmdk, bigf.vmdk  twoGbMaxExtentSparse/Flat of it: three extents each
#   multi.vmdk     hand-written descriptor: FLAT at an offset, ZERO, SPARSE
#                  (a monolithicSparse extent), FLAT; multi.raw built by dd
#   bad/*.vmdk     descriptors naming /etc/passwd, ../x, a missing extent,
#                  a short flat extent, a parent outside the folder
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

conv() { # conv NAME SUBFORMAT [OPTIONS]: src.raw -> NAME.vmdk
	local name=$1 sub=$2
	shift 2
	qemu-img convert -f raw -O vmdk -o "subformat=$sub" "$@" src.raw "$name.vmdk"
}
conv sparse monolithicSparse
conv stream streamOptimized
conv flat monolithicFlat
conv s2g twoGbMaxExtentSparse
conv f2g twoGbMaxExtentFlat
conv zg monolithicSparse -o zeroed_grain=on
qemu-io -f vmdk -c 'write -z 8M 1M' -c 'write -z 24M 128k' zg.vmdk >/dev/null

qemu-img create -q -f vmdk -b sparse.vmdk -F vmdk delta.vmdk
qemu-io -f vmdk -c 'write -P 0xab 1M 64k' -c 'write -P 0xcd 30000k 3000' \
	-c 'write -P 0x11 67108000 864' delta.vmdk >/dev/null

# VMware writes stream-optimized disks with gdOffset = GD_AT_END in the
# header and the real header in a footer; qemu-img writes the grain
# directory offset up front. Make the VMware layout from qemu's file: footer
# marker, footer (the header as qemu wrote it), end-of-stream marker, then
# GD_AT_END in the first header. qemu reads it back (compared below).
cp stream.vmdk gdend.vmdk
{
	printf '\x01\0\0\0\0\0\0\0\0\0\0\0\x03\0\0\0'
	head -c 496 /dev/zero
	head -c 512 stream.vmdk
	head -c 512 /dev/zero
} >>gdend.vmdk
printf '\xff\xff\xff\xff\xff\xff\xff\xff' | dd of=gdend.vmdk bs=1 seek=56 conv=notrunc status=none

for img in sparse stream gdend flat s2g f2g zg delta; do
	qemu-img convert -O raw "$img.vmdk" "$img.raw"
done

# More than one 2 GiB extent.
truncate -s $((4096 * MiB + MiB)) big.raw
GiB=$((1024 * MiB))
rnd $((1 * MiB)) 7 | dd of=big.raw bs=64K conv=notrunc status=none iflag=fullblock
rnd $((2 * MiB)) 8 | dd of=big.raw bs=64K seek=$((2 * GiB - MiB)) oflag=seek_bytes conv=notrunc status=none iflag=fullblock
rnd $((2 * MiB)) 9 | dd of=big.raw bs=64K seek=$((4 * GiB - MiB)) oflag=seek_bytes conv=notrunc status=none iflag=fullblock
qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse big.raw bigs.vmdk
qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentFlat big.raw bigf.vmdk
qemu-img compare -f vmdk -F raw bigs.vmdk big.raw >/dev/null
qemu-img compare -f vmdk -F raw bigf.vmdk big.raw >/dev/null

# Hand-written descriptor (sizes in sectors): 8 MiB FLAT from piece1.bin at
# sector 2048, 4 MiB ZERO, 16 MiB SPARSE, 36 MiB + 12 KiB FLAT.
dd if=/dev/zero of=piece1.bin bs=1M count=1 status=none
dd if=src.raw bs=1M count=8 status=none >>piece1.bin
dd if=src.raw of=piece2.raw bs=1M skip=12 count=16 status=none
qemu-img convert -f raw -O vmdk piece2.raw piece2.vmdk
rm piece2.raw
dd if=src.raw of=piece3.bin bs=1M skip=28 status=none
cat >multi.vmdk <<'DESC'
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="twoGbMaxExtentSparse"

# Extent description
RW 16384 FLAT "piece1.bin" 2048
RW 8192 ZERO
RW 32768 SPARSE "piece2.vmdk"
RW 73752 FLAT "piece3.bin" 0

# The Disk Data Base
#DDB
ddb.virtualHWVersion = "4"
DESC
{
	dd if=src.raw bs=1M count=8 status=none
	head -c $((4 * MiB)) /dev/zero
	dd if=src.raw bs=1M skip=12 status=none
} >multi.raw
# qemu reads the same descriptor without the ZERO line as the pieces say.
grep -v ZERO multi.vmdk >multi-nz.vmdk
{
	dd if=src.raw bs=1M count=8 status=none
	dd if=src.raw bs=1M skip=12 status=none
} >multi-nz.raw
qemu-img compare -f vmdk -F raw multi-nz.vmdk multi-nz.raw >/dev/null
rm multi-nz.raw multi-nz.vmdk

mkdir -p bad sub
dd if=src.raw of=sub/x.bin bs=1M count=1 status=none
descriptor() { # descriptor SECTORS EXTENT-LINE [PARENT-LINES]
	printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=%s\ncreateType="monolithicFlat"\n%s\n\n# Extent description\nRW %s\n' \
		"${3:-ffffffff}" "${4:-}" "$1 $2"
}
descriptor 2048 'FLAT "/etc/passwd" 0' >bad/abs.vmdk
descriptor 2048 'FLAT "../sub/x.bin" 0' >bad/dotdot.vmdk
descriptor 2048 'FLAT "nope.bin" 0' >bad/missing.vmdk
cp sub/x.bin bad/short.bin
descriptor 4096 'FLAT "short.bin" 0' >bad/short.vmdk
descriptor 2048 'FLAT "short.bin" 0' 12345678 'parentFileNameHint="/etc/passwd"' >bad/parent.vmdk
