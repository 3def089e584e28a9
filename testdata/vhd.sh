#!/usr/bin/env bash
# Builds the VHD fixtures of snapshot/image/vhd into $OUT.
#
#   source.raw            64 MiB: random data, zero runs, patterns across
#                         block edges, single sectors at odd places
#   fixed.vhd  dynamic.vhd   qemu-img convert -O vpc -o subformat=fixed|dynamic
#   *.vhd.raw             qemu-img convert -O raw of each: the expected bytes
#   *.vhd.info            qemu-img info --output=json of each
#   diff.vhd              differencing child of dynamic.vhd (see below)
#   diff.vhd.raw          expected bytes of diff.vhd
#   diff-aligned.vhd(.raw) the same, runs ending on bitmap byte edges: checked
#                         with libvhdi
#   unsafe/escape.vhd     child naming ..\dynamic.vhd (outside its folder)
#   unsafe/passwd.vhd     child naming /etc/passwd
#   loop-a.vhd loop-b.vhd children naming each other
#   self.vhd              child naming itself
#
# qemu-img cannot create VHD differencing images ("Backing file not
# supported for file format 'vpc'") and no other tool here can, so the
# children are written by the small generator below, from the
# specification. Its output is checked against an independent reader,
# libvhdi (Debian package python3-libvhdi): the fixture fails unless
# libvhdi reads diff-aligned.vhd, over dynamic.vhd, exactly as expected.
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
cd "$OUT"
PY=/usr/bin/python3 # Debian's python, where python3-libvhdi installs

# Deterministic pseudo-random bytes: AES-CTR over zeros with a fixed key.
rnd() { # rnd SEED BYTES
	head -c "$2" /dev/zero | openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 2>/dev/null
}
put() { # put FILE OFFSET SEED BYTES
	rnd "$3" "$4" | dd of="$1" bs=1M seek="$2" oflag=seek_bytes conv=notrunc status=none
}

MiB=$((1 << 20))
truncate -s 64M source.raw
put source.raw 0 1 $((4 * MiB))                        # random head
# 4..12 MiB stay zero: whole unallocated blocks.
for b in 12 14 16 18; do                               # 2 MiB block edges
	put source.raw $((b * MiB - 2048)) $((b + 100)) 4096
done
put source.raw $((13 * MiB + 512)) 7 512               # one sector inside a block
put source.raw $((20 * MiB)) 2 $((20 * MiB))            # 20 MiB random
put source.raw $((47 * MiB - 512)) 3 512               # last sector of a block
put source.raw $((56 * MiB)) 4 512                     # first sector of a block
put source.raw $((64 * MiB - 512)) 5 512               # last sector of the disk

for sub in fixed dynamic; do
	qemu-img convert -f raw -O vpc -o subformat=$sub source.raw $sub.vhd
	qemu-img convert -f vpc -O raw $sub.vhd $sub.vhd.raw
	qemu-img info -f vpc --output=json $sub.vhd >$sub.vhd.info
done

# gen.py CHILD PARENT_VHD_FOR_ID W2RU W2KU NAME [WRITES_SEED [align]]
# writes a differencing child of the parent's size with 2 MiB blocks. The
# writes (sector runs, with the bytes they write) are chosen by the seed;
# sectors of allocated blocks whose bitmap bit is clear hold 0xEE garbage,
# so a reader that ignores the bitmap fails. With a seed, CHILD.raw is
# written too: the parent's bytes (PARENT.raw) with the writes applied.
cat >gen.py <<'EOF'
import os, random, struct, sys, uuid

child, parent, w2ru, w2ku, pname = sys.argv[1:6]
seed = int(sys.argv[6]) if len(sys.argv) > 6 else None
align = len(sys.argv) > 7 and sys.argv[7] == 'align'
pf = open(parent, 'rb').read()
ft = pf[-512:]
assert ft[:8] == b'conectix'
size = struct.unpack('>Q', ft[48:56])[0]
geometry = ft[56:60]
parent_id = ft[68:84]
parent_time = struct.unpack('>I', ft[24:28])[0]

BS = 2 << 20
SPB = BS // 512
nblocks = (size + BS - 1) // BS

def csum(b, at):
    s = sum(b[:at]) + sum(b[at + 4:])
    return (~s) & 0xffffffff

writes = {}  # sector -> 512 bytes
if seed is not None:
    rng = random.Random(seed)
    runs = [
        (0, 8),                      # first sectors of the disk
        (SPB - 3, 6),                # across the block 0/1 edge
        (5 * SPB, SPB),              # block 5 written whole
        (9 * SPB + 100, 1),          # lone sectors: bitmap byte edges
        (9 * SPB + 107, 2),
        (9 * SPB + 2000, 300),
        (12 * SPB + SPB - 1, 1),     # last sector of a block
        (size // 512 - 16, 16),      # end of the disk
    ]
    for i in range(40):              # scattered small runs
        runs.append((rng.randrange(0, size // 512 - 64), rng.randrange(1, 64)))
    for start, n in runs:
        if align:  # end every run on a bitmap byte boundary
            n = min((start + n + 7) // 8 * 8, size // 512) - start
        for s in range(start, start + n):
            writes[s] = bytes(rng.getrandbits(8) for _ in range(512))

blocks = sorted({s // SPB for s in writes})
footer = bytearray(512)
footer[0:8] = b'conectix'
struct.pack_into('>IIQI4sIIQQ4sI', footer, 8, 2, 0x00010000, 512, parent_time + 1,
                 b'snap', 0x00010000, 0x5769326B, size, size, geometry, 4)
footer[68:84] = uuid.UUID(int=random.Random(hash(child) & 0xffff).getrandbits(128)).bytes
struct.pack_into('>I', footer, 64, csum(footer, 64))

loc = [('W2ru', w2ru), ('W2ku', w2ku)]
loc_off = 1536
bat_off = loc_off + 512 * len(loc)
bat_len = (nblocks * 4 + 511) // 512 * 512
data_off = bat_off + bat_len

hdr = bytearray(1024)
hdr[0:8] = b'cxsparse'
struct.pack_into('>QQIII', hdr, 8, 0xffffffffffffffff, bat_off, 0x00010000, nblocks, BS)
hdr[40:56] = parent_id
struct.pack_into('>I', hdr, 56, parent_time)
name = pname.encode('utf-16-be')[:510]
hdr[64:64 + len(name)] = name
for i, (code, path) in enumerate(loc):
    data = path.encode('utf-16-le')
    struct.pack_into('>4sIIIQ', hdr, 576 + 24 * i, code.encode(), 1, len(data), 0, loc_off + 512 * i)
struct.pack_into('>I', hdr, 36, csum(hdr, 36))

bat = bytearray(b'\xff' * bat_len)
body = bytearray()
for j, b in enumerate(blocks):
    sector = (data_off + len(body)) // 512
    struct.pack_into('>I', bat, 4 * b, sector)
    bitmap = bytearray(512)
    data = bytearray(b'\xee' * BS)
    for k in range(SPB):
        s = b * SPB + k
        if s in writes:
            bitmap[k // 8] |= 0x80 >> (k % 8)
            data[k * 512:(k + 1) * 512] = writes[s]
    body += bitmap + data

with open(child, 'wb') as f:
    f.write(footer)
    f.write(hdr)
    for code, path in loc:
        f.write(path.encode('utf-16-le').ljust(512, b'\0'))
    f.write(bat)
    f.write(body)
    f.write(footer)

if seed is not None:
    raw = bytearray(open(parent + '.raw', 'rb').read())
    for s, d in writes.items():
        raw[s * 512:(s + 1) * 512] = d
    open(child + '.raw', 'wb').write(raw)
EOF

$PY gen.py diff.vhd dynamic.vhd '.\dynamic.vhd' 'C:\vms\dynamic.vhd' 'dynamic.vhd' 42
$PY gen.py diff-aligned.vhd dynamic.vhd '.\dynamic.vhd' 'C:\vms\dynamic.vhd' 'dynamic.vhd' 43 align

# Independent check of the generator: libvhdi reads the child over its
# parent exactly as the expected bytes. libvhdi 20210425 takes the rest of
# a bitmap byte as present when a run of present sectors ends inside it
# (runs that start inside a byte it reads right), against the
# specification's one bit per sector; so it checks diff-aligned.vhd,
# whose runs end on byte boundaries, and the same generator writes
# diff.vhd with runs that end anywhere.
$PY - <<'EOF'
import pyvhdi
p = pyvhdi.file(); p.open('dynamic.vhd')
c = pyvhdi.file(); c.open('diff-aligned.vhd'); c.set_parent(p)
want = open('diff-aligned.vhd.raw', 'rb').read()
assert c.get_media_size() == len(want), (c.get_media_size(), len(want))
got = c.read_buffer_at_offset(len(want), 0)
assert got == want, 'libvhdi disagrees with diff-aligned.vhd.raw'
assert want != open('dynamic.vhd.raw', 'rb').read()
print('libvhdi agrees on diff-aligned.vhd')
EOF

mkdir -p unsafe
$PY gen.py unsafe/escape.vhd dynamic.vhd '..\dynamic.vhd' '' 'dynamic.vhd'
$PY gen.py unsafe/passwd.vhd dynamic.vhd '' '/etc/passwd' 'passwd'
$PY gen.py loop-a.vhd dynamic.vhd '.\loop-b.vhd' '' 'loop-b.vhd'
$PY gen.py loop-b.vhd dynamic.vhd '.\loop-a.vhd' '' 'loop-a.vhd'
$PY gen.py self.vhd dynamic.vhd '.\self.vhd' '' 'self.vhd'
rm gen.py
