#!/usr/bin/env bash
# Builds the VHDX fixtures of snapshot/image/vhdx into $OUT.
#
#   source.raw               64 MiB: random data, zero runs, patterns across
#                            block edges, single sectors at odd places
#   odd.raw                  the same grown to 67 MiB + 1536 bytes (not a
#                            whole number of blocks)
#   dynamic.vhdx fixed.vhdx  qemu-img convert -O vhdx -o subformat=...
#   dynamic-1m.vhdx          ... -o block_size=1M (non-default, many blocks)
#   odd.vhdx                 odd.raw, -o block_size=2M
#   *.vhdx.raw               qemu-img convert -O raw of each: expected bytes
#   *.vhdx.info              qemu-img info --output=json of each
#   diff.vhdx(.raw)          differencing child of dynamic.vhdx, checked
#                            with libvhdi (see below)
#   unsafe/escape.vhdx       child naming ..\dynamic.vhdx (outside its folder)
#   unsafe/passwd.vhdx       child naming /etc/passwd
#   loop-a.vhdx loop-b.vhdx  children naming each other
#   self.vhdx                child naming itself
#
# qemu-img cannot create VHDX differencing images ("Backing file not
# supported for file format 'vhdx'") and no other tool here can, so the
# children are written by the small generator below, from [MS-VHDX]. Its
# output is checked against an independent reader, libvhdi (Debian package
# python3-libvhdi): the fixture fails unless libvhdi reads diff.vhdx, over
# dynamic.vhdx, as diff.vhdx.raw (but for one block, see below).
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
cd "$OUT"
PY=/usr/bin/python3 # Debian's python, where python3-libvhdi installs

rnd() { # rnd SEED BYTES: deterministic bytes, AES-CTR over zeros
	head -c "$2" /dev/zero | openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 2>/dev/null
}
put() { # put FILE OFFSET SEED BYTES
	rnd "$3" "$4" | dd of="$1" bs=1M seek="$2" oflag=seek_bytes conv=notrunc status=none
}

MiB=$((1 << 20))
truncate -s 64M source.raw
put source.raw 0 1 $((4 * MiB))
# 4..12 MiB stay zero.
for b in 8 9 10 16 24 32; do                           # 1, 2 and 8 MiB block edges
	put source.raw $((b * MiB - 2048)) $((b + 100)) 4096
done
put source.raw $((13 * MiB + 512)) 7 512
put source.raw $((33 * MiB)) 2 $((15 * MiB))
put source.raw $((55 * MiB - 512)) 3 512
put source.raw $((56 * MiB)) 4 512
put source.raw $((64 * MiB - 512)) 5 512
cp source.raw odd.raw
truncate -s $((67 * MiB + 1536)) odd.raw
put odd.raw $((67 * MiB)) 6 1536

conv() { # conv SRC OUT OPTIONS
	qemu-img convert -f raw -O vhdx -o "$3" "$1" "$2"
	qemu-img convert -f vhdx -O raw "$2" "$2.raw"
	qemu-img info -f vhdx --output=json "$2" >"$2.info"
}
conv source.raw dynamic.vhdx subformat=dynamic
conv source.raw fixed.vhdx subformat=fixed
conv source.raw dynamic-1m.vhdx subformat=dynamic,block_size=1M
conv odd.raw odd.vhdx subformat=dynamic,block_size=2M

# gen.py CHILD PARENT RELATIVE_PATH ABSOLUTE_PATH [WRITES_SEED]
# writes a differencing child of PARENT (a VHDX, for its size and data
# write GUID) with 2 MiB blocks, 512-byte sectors. With a seed it writes
# sector runs: blocks written whole are FULLY_PRESENT, others
# PARTIALLY_PRESENT with the sector bitmap (unmarked sectors hold 0xEE
# garbage), block 3 is ZERO (reads zeros over the parent's data) and the
# rest NOT_PRESENT; CHILD.raw gets the expected bytes.
cat >gen.py <<'EOF'
import random, struct, sys, uuid

child, parent, relpath, abspath = sys.argv[1:5]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else None
KiB, MiB = 1 << 10, 1 << 20

def g(s):
    return uuid.UUID(s).bytes_le

T = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)

def crc32c(b):
    c = 0xffffffff
    for x in b:
        c = T[(c ^ x) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff

def seal(b):
    struct.pack_into('<I', b, 4, 0)
    struct.pack_into('<I', b, 4, crc32c(b))

# The parent's size and current data write GUID.
pf = open(parent, 'rb')
def at(off, n):
    pf.seek(off)
    return pf.read(n)
hdrs = [at(o, 4096) for o in (64 * KiB, 128 * KiB)]
cur = max((h for h in hdrs if h[:4] == b'head'), key=lambda h: struct.unpack('<Q', h[8:16])[0])
linkage = '{%s}' % uuid.UUID(bytes_le=cur[32:48])
rt = at(192 * KiB, 64 * KiB)
for i in range(struct.unpack('<I', rt[8:12])[0]):
    e = rt[16 + 32 * i:48 + 32 * i]
    if e[:16] == g('8B7CA206-4790-4B9A-B8FE-575F050F886E'):
        moff = struct.unpack('<Q', e[16:24])[0]
mt = at(moff, 64 * KiB)
for i in range(struct.unpack('<H', mt[10:12])[0]):
    e = mt[32 + 32 * i:64 + 32 * i]
    if e[:16] == g('2FA54224-CD1B-4876-B211-5DBED83BF4B8'):
        size = struct.unpack('<Q', at(moff + struct.unpack('<I', e[16:20])[0], 8))[0]

BS, SS = 2 * MiB, 512
SPB = BS // SS
CR = (1 << 23) * SS // BS
nblocks = (size + BS - 1) // BS
nchunks = (nblocks + CR - 1) // CR
entries = nchunks * (CR + 1)
ZERO_BLOCK = 3

writes = {}
if seed is not None:
    rng = random.Random(seed)
    runs = [(0, 8), (SPB - 3, 6), (5 * SPB, SPB), (9 * SPB + 100, 1), (9 * SPB + 107, 2),
            (9 * SPB + 2000, 300), (12 * SPB + SPB - 1, 1), (size // SS - 16, 16)]
    for i in range(40):
        runs.append((rng.randrange(0, size // SS - 64), rng.randrange(1, 64)))
    for start, n in runs:
        for s in range(start, start + n):
            if s // SPB != ZERO_BLOCK:
                writes[s] = bytes(rng.getrandbits(8) for _ in range(SS))

blocks = sorted({s // SPB for s in writes})
full = {b for b in blocks if all(b * SPB + k in writes for k in range(SPB))}
chunks = sorted({b // CR for b in blocks if b not in full})

LOG, META, BAT = 1 * MiB, 2 * MiB, 3 * MiB
bat_len = (entries * 8 + MiB - 1) // MiB * MiB
nxt = BAT + bat_len
bat = bytearray(bat_len)
sbm = {}
for c in chunks:
    sbm[c] = (nxt, bytearray(MiB))
    struct.pack_into('<Q', bat, 8 * (c * (CR + 1) + CR), (nxt // MiB) << 20 | 6)
    nxt += MiB
payload = {}
for b in blocks:
    data = bytearray(b'\xee' * BS)
    for k in range(SPB):
        s = b * SPB + k
        if s in writes:
            data[k * SS:(k + 1) * SS] = writes[s]
            if b not in full:
                cs = s % (1 << 23)
                sbm[b // CR][1][cs // 8] |= 1 << (cs % 8)
    payload[nxt] = data
    struct.pack_into('<Q', bat, 8 * (b + b // CR), (nxt // MiB) << 20 | (6 if b in full else 7))
    nxt += BS
if seed is not None:
    struct.pack_into('<Q', bat, 8 * (ZERO_BLOCK + ZERO_BLOCK // CR), 2)

# Metadata region: table, then the items.
items = []
items.append((g('CAA16737-FA36-4D43-B3B6-33F0AA44E76B'), struct.pack('<II', BS, 2), 4))
items.append((g('2FA54224-CD1B-4876-B211-5DBED83BF4B8'), struct.pack('<Q', size), 6))
items.append((g('BECA12AB-B2E6-4523-93EF-C309E000C746'), uuid.UUID(int=random.Random(child).getrandbits(128)).bytes_le, 6))
items.append((g('8141BF1D-A96F-4709-BA47-F233A8FAAB5F'), struct.pack('<I', SS), 6))
items.append((g('CDA348C7-445D-4471-9CC9-E9885251C556'), struct.pack('<I', 4096), 6))
kv = [('parent_linkage', linkage), ('relative_path', relpath), ('absolute_win32_path', abspath)]
kv = [(k, v) for k, v in kv if v]
loc = bytearray(g('B04AEFB7-D19E-4A81-B789-25B8E9445913') + struct.pack('<HH', 0, len(kv)))
strs = bytearray()
base = 20 + 12 * len(kv)
for k, v in kv:
    kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
    loc += struct.pack('<IIHH', base + len(strs), base + len(strs) + len(kb), len(kb), len(vb))
    strs += kb + vb
items.append((g('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C'), bytes(loc + strs), 4))
meta = bytearray(MiB)
meta[0:8] = b'metadata'
struct.pack_into('<H', meta, 10, len(items))
off = 64 * KiB
for i, (ident, data, flags) in enumerate(items):
    struct.pack_into('<16sIII', meta, 32 + 32 * i, ident, off, len(data), flags)
    meta[off:off + len(data)] = data
    off += len(data)

def header(seq):
    h = bytearray(4 * KiB)
    h[0:4] = b'head'
    struct.pack_into('<Q16s16s16sHHIQ', h, 8, seq, uuid.UUID(int=seq).bytes_le,
                     uuid.UUID(int=seq + 100).bytes_le, bytes(16), 0, 1, MiB, LOG)
    seal(h)
    return h

rtab = bytearray(64 * KiB)
rtab[0:4] = b'regi'
struct.pack_into('<I', rtab, 8, 2)
struct.pack_into('<16sQII', rtab, 16, g('2DC27766-F623-4200-9D64-115E9BFD4A08'), BAT, bat_len, 1)
struct.pack_into('<16sQII', rtab, 48, g('8B7CA206-4790-4B9A-B8FE-575F050F886E'), META, MiB, 1)
seal(rtab)

with open(child, 'wb') as f:
    f.write(b'vhdxfile' + 'snapscan testdata'.encode('utf-16-le'))
    for o, b in ((64 * KiB, header(1)), (128 * KiB, header(2)), (192 * KiB, rtab), (256 * KiB, rtab),
                 (META, meta), (BAT, bat)):
        f.seek(o)
        f.write(b)
    for o, b in sbm.values():
        f.seek(o)
        f.write(b)
    for o, b in payload.items():
        f.seek(o)
        f.write(b)
    f.truncate(max(nxt, 4 * MiB))

if seed is not None:
    raw = bytearray(open(parent + '.raw', 'rb').read())
    raw[ZERO_BLOCK * BS:(ZERO_BLOCK + 1) * BS] = bytes(BS)
    for s, d in writes.items():
        raw[s * SS:(s + 1) * SS] = d
    open(child + '.raw', 'wb').write(raw)
EOF

$PY gen.py diff.vhdx dynamic.vhdx 'dynamic.vhdx' '\\?\C:\vms\dynamic.vhdx' 42

# Independent check of the generator: libvhdi reads the child over its
# parent exactly as the expected bytes, except in the ZERO block: libvhdi
# 20210425 reads a differencing disk's PAYLOAD_BLOCK_ZERO from the parent,
# where [MS-VHDX] 2.5.1.1 says reads "MUST return zeros".
$PY - <<'EOF'
import pyvhdi
p = pyvhdi.file(); p.open('dynamic.vhdx')
c = pyvhdi.file(); c.open('diff.vhdx'); c.set_parent(p)
want = open('diff.vhdx.raw', 'rb').read()
assert c.get_media_size() == len(want), (c.get_media_size(), len(want))
got = c.read_buffer_at_offset(len(want), 0)
Z = 3 * 2 * 1024 * 1024  # block 3 of 2 MiB
assert got[:Z] == want[:Z] and got[Z + Z // 3:] == want[Z + Z // 3:], 'libvhdi disagrees with diff.vhdx.raw'
assert want[Z:Z + Z // 3] == bytes(Z // 3)
assert want != open('dynamic.vhdx.raw', 'rb').read()
print('libvhdi agrees on diff.vhdx')
EOF

mkdir -p unsafe
$PY gen.py unsafe/escape.vhdx dynamic.vhdx '..\dynamic.vhdx' ''
$PY gen.py unsafe/passwd.vhdx dynamic.vhdx '' '/etc/passwd'
$PY gen.py loop-a.vhdx dynamic.vhdx 'loop-b.vhdx' ''
$PY gen.py loop-b.vhdx dynamic.vhdx 'loop-a.vhdx' ''
$PY gen.py self.vhdx dynamic.vhdx 'self.vhdx' ''
rm gen.py
