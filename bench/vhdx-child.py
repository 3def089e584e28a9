#!/usr/bin/env python3
"""Writes a VHDX differencing child for bench/fleet-clones.sh.

Usage: vhdx-child.py CHILD PARENT.vhdx PARENT_RELPATH BASE.raw CLONE.raw MAP.json

No tool here makes VHDX differencing images (qemu-img: "Backing file not
supported for file format 'vhdx'"), so this writes one from [MS-VHDX], as
testdata/vhdx.sh's generator does: 2 MiB blocks, 512-byte sectors. It holds
exactly the sectors where CLONE.raw differs from BASE.raw (the guest bytes
of the clone and of its base) inside the ranges MAP.json (qemu-img map
--output=json of the clone's qcow2 overlay) lists at depth 0: a block with
every sector differing is FULLY_PRESENT, one with some PARTIALLY_PRESENT
with its sector bitmap, the rest NOT_PRESENT (read from the parent). The
sectors a block does not hold are left unwritten (sparse). It prints the
bytes the child holds (present sectors x 512). The fleet script checks the
child with libvhdi, an independent reader.
"""
import json
import struct
import sys
import uuid

child, parent, relpath, base_raw, clone_raw, map_json = sys.argv[1:7]
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

# The sectors that differ, inside the overlay's own ranges.
writes = {}
bf, cf = open(base_raw, 'rb'), open(clone_raw, 'rb')
for e in json.load(open(map_json)):
    if e['depth'] != 0:
        continue
    s0, s1 = e['start'] // SS, (e['start'] + e['length'] + SS - 1) // SS
    bf.seek(s0 * SS)
    cf.seek(s0 * SS)
    b, c = bf.read((s1 - s0) * SS), cf.read((s1 - s0) * SS)
    b += bytes(len(c) - len(b))  # the base file may be shorter (sparse tail)
    for k in range(s1 - s0):
        x = c[k * SS:(k + 1) * SS]
        if x != b[k * SS:(k + 1) * SS]:
            writes[s0 + k] = x

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
where = {}  # block -> file offset of its payload
for b in blocks:
    where[b] = nxt
    struct.pack_into('<Q', bat, 8 * (b + b // CR), (nxt // MiB) << 20 | (6 if b in full else 7))
    if b not in full:
        for k in range(SPB):
            s = b * SPB + k
            if s in writes:
                cs = s % (1 << 23)
                sbm[b // CR][1][cs // 8] |= 1 << (cs % 8)
    nxt += BS

# Metadata region: table, then the items.
items = []
items.append((g('CAA16737-FA36-4D43-B3B6-33F0AA44E76B'), struct.pack('<II', BS, 2), 4))
items.append((g('2FA54224-CD1B-4876-B211-5DBED83BF4B8'), struct.pack('<Q', size), 6))
items.append((g('BECA12AB-B2E6-4523-93EF-C309E000C746'), uuid.uuid5(uuid.NAMESPACE_URL, child).bytes_le, 6))
items.append((g('8141BF1D-A96F-4709-BA47-F233A8FAAB5F'), struct.pack('<I', SS), 6))
items.append((g('CDA348C7-445D-4471-9CC9-E9885251C556'), struct.pack('<I', 4096), 6))
kv = [('parent_linkage', linkage), ('relative_path', relpath)]
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
    f.write(b'vhdxfile' + 'snapscan bench'.encode('utf-16-le'))
    for o, b in ((64 * KiB, header(1)), (128 * KiB, header(2)), (192 * KiB, rtab), (256 * KiB, rtab),
                 (META, meta), (BAT, bat)):
        f.seek(o)
        f.write(b)
    for o, b in sbm.values():
        f.seek(o)
        f.write(b)
    for s in sorted(writes):
        blk = s // SPB
        f.seek(where[blk] + (s % SPB) * SS)
        f.write(writes[s])
    f.truncate(max(nxt, 4 * MiB))
print(len(writes) * SS)
