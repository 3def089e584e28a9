#!/usr/bin/env bash
# A fleet of linked clones (issue 16, Measure): one golden image and N
# overlays, each holding what a guest-like writer changed, in qcow2, VMDK
# delta or VHDX differencing form, scanned in one invocation three ways:
#
#   incremental     snapscan scan base.F clone-1.F ... (the default)
#   full            the same with --no-incremental (the verdict cache on)
#   yara            yara -r over a read-only loop mount of each disk (base
#                   and clones, each exported by qemu-storage-daemon)
#
# The forms of one clone hold the same guest bytes:
#   qcow2  clone-I.qcow2 over base.qcow2, edited through a FUSE export (below)
#   vmdk   clone-I.vmdk, monolithicSparse delta over base.vmdk (qemu-img
#          convert -O vmdk of the golden raw disk): qemu-img convert -B
#          base.vmdk of clone-I.qcow2, which writes only the grains the
#          qcow2 overlay holds; checked with qemu-img compare
#   vhdx   clone-I.vhdx, differencing child (2 MiB blocks) over base.vhdx
#          (qemu-img convert -O vhdx): no tool here writes one, so
#          bench/vhdx-child.py does, holding exactly the 512-byte sectors
#          where the clone differs from the base within the qcow2 overlay's
#          ranges; checked with libvhdi (python3-libvhdi), which must read it
#          over base.vhdx as qemu-img reads clone-I.qcow2
# yara runs once per invocation, over the qcow2 exports (qemu cannot read a
# VHDX differencing disk): its matches and wall time stand for each form.
#
# The golden image is an ext4 file system (mkfs.ext4 -d, in a GPT
# partition) of real binaries and libraries: /usr/bin, /usr/sbin,
# /usr/libexec, /usr/lib/python3 and /usr/lib/gcc of this machine (about
# 620 MB). Each clone's overlay is made empty (qemu-img create -b) and then
# edited through a FUSE export, loop mounted read-write: new files (copies
# of binaries with a byte patched, one with a marker string), files edited
# in place, appended to, deleted and renamed, about 0.5-2% of the image.
#
# Reported: wall time and bytes read from the datastore (counted by
# snapscan in its image layer; for yara, the bytes the qemu-storage-daemon
# processes read from the image files, /proc/PID/io rchar), per mode and
# per clone against its overlay's size. Checked (the script fails
# otherwise): every scan ended with findings or clean, incremental and full
# findings are identical, and yara's (disk, path, rule) matches equal
# snapscan's (regular files outside archives, empty files aside: yara
# cannot map them). Goals of issue 16: bytes read <= 1.5x (base's used
# bytes + the overlays' sizes); incremental wall time <= 0.15x yara's; an
# added clone reads <= 2x its overlay.
#
# Rules: the signature-base files that use no path externals (filename,
# filepath, extension, owner, filetype: yara -r cannot set them per file),
# plus a marker rule, compiled once with yarac and given to both tools.
#
# Usage: [FORMAT=qcow2|vmdk|vhdx|all] [N=10] bench/fleet-clones.sh [N]
#        (needs root, fuse3, qemu-utils, python3-libvhdi for vhdx)
# FORMAT all scans the three forms of the same N clones in one invocation
# (one yara run), reporting each. Environment: WORK (scratch folder,
# default /tmp/snapscan-fleet; the golden image and the clones are kept
# there between runs), RULES (a signature-base yara folder), WORKERS (2),
# BUILD_ONLY (set: build the fleet and stop), YARA (off: skip the yara
# runs and their figures and checks, for long fleets).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-${N:-10}}
FORMAT=${FORMAT:-qcow2}
case $FORMAT in
qcow2 | vmdk | vhdx) formats=("$FORMAT") ;;
all) formats=(qcow2 vmdk vhdx) ;;
*) echo "FORMAT must be qcow2, vmdk, vhdx or all, not $FORMAT" >&2 && exit 2 ;;
esac
PY=/usr/bin/python3 # Debian's python, where python3-libvhdi installs
WORK=${WORK:-/tmp/snapscan-fleet}
RULES=${RULES:-$here/../shared/rules/signature-base/yara}
WORKERS=${WORKERS:-2}
MiB=$((1024 * 1024))
mkdir -p "$WORK"
cd "$WORK"

pids=()
mounts=()
loops=()
cleanup() {
	for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# The golden image, once.
if [ ! -f golden.done ]; then
	rm -rf tree base.qcow2
	mkdir -p tree/usr/lib
	for d in /usr/bin /usr/sbin /usr/libexec /usr/lib/python3 /usr/lib/gcc; do
		mkdir -p "tree$d"
		cp -a "$d/." "tree$d/"
	done
	used=$(du -sb tree | cut -f1)
	fsz=$(((used * 13 / 10 / MiB + 64) * MiB))
	mkfs.ext4 -q -F -L golden -d tree fs.img "$((fsz / 1024))K" >/dev/null
	truncate -s $((fsz + 2 * MiB)) disk.raw
	sgdisk -n 1:2048:+$((fsz / MiB))M -t 1:8300 disk.raw >/dev/null
	dd if=fs.img of=disk.raw bs=1M seek=1 conv=notrunc,sparse status=none
	rm -f fs.img
	qemu-img convert -f raw -O qcow2 disk.raw base.qcow2
	rm -rf tree
	touch golden.done
fi
# The golden disk in the other forms (from its raw bytes, kept for vhdx).
[ -f disk.raw ] || qemu-img convert -f qcow2 -O raw base.qcow2 disk.raw
[ -f base.vmdk ] || qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse disk.raw base.vmdk
[ -f base.vhdx ] || qemu-img convert -f raw -O vhdx -o subformat=dynamic disk.raw base.vhdx

# The rules, once: signature-base without path externals, and a marker.
if [ ! -f rules.yarc ]; then
	mkdir -p rules
	cat >rules/marker.yar <<'YAR'
rule fleet_marker { strings: $m = "SNAPSCAN-FLEET-MARKER" condition: $m }
YAR
	mapfile -t srcs < <(cd "$RULES" && grep -L -E '\b(filename|filepath|extension|owner|filetype)\b' -- *.yar | sort)
	yarac -w -d filename= -d filepath= -d extension= -d filetype= -d owner= \
		$(printf "$RULES/%s " "${srcs[@]}") rules/marker.yar rules.yarc
	echo "rules: ${#srcs[@]} signature-base files + marker"
fi

# export IMG MNT MODE: export IMG over FUSE at MNT.exp (MODE on|off for
# writable), loop it, mount p1 at MNT; sets qsd to the daemon's pid.
export_mount() {
	local img=$1 mnt=$2 rw=$3 exp=$2.exp
	: >"$exp"
	mkdir -p "$mnt"
	qemu-storage-daemon --blockdev driver=file,filename="$img",node-name=f,read-only=$([ "$rw" = on ] && echo off || echo on) \
		--blockdev driver=qcow2,file=f,node-name=q,read-only=$([ "$rw" = on ] && echo off || echo on) \
		--export type=fuse,id=e,node-name=q,mountpoint="$exp",writable="$rw" &
	qsd=$!
	pids+=("$qsd")
	for _ in $(seq 200); do [ "$(stat -c %s "$exp")" -gt 0 ] && break; sleep 0.05; done
	local ro=-r opt=ro,noload
	[ "$rw" = on ] && ro= opt=rw
	loop=$(losetup -f --show $ro -o $MiB "$exp")
	loops+=("$loop")
	mount -o "$opt" "$loop" "$mnt"
	mounts+=("$mnt")
}
unmount() { # MNT
	umount "$1"
	losetup -d "$loop"
	kill "$qsd"
	wait "$qsd" || true
	rm -f "$1.exp"
	rmdir "$1"
	mounts=() loops=() pids=()
}

# The clones: each one's changes are chosen by its number.
mapfile -t mid < <(cd / && find usr/bin usr/lib/python3 -type f -size +200k -size -3M | sort)
mapfile -t small < <(cd / && find usr/lib/python3 usr/libexec -type f -size +4k -size -200k | sort)
for i in $(seq 1 "$N"); do
	c=clone-$i.qcow2
	[ -f "$c" ] && continue
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$c.tmp"
	export_mount "$c.tmp" "m$i" on
	m=m$i
	pick() { echo "${mid[$(((i * 7919 + $1 * 104729) % ${#mid[@]}))]}"; }
	picks() { echo "${small[$(((i * 7919 + $1 * 104729) % ${#small[@]}))]}"; }
	for k in 1 2 3; do # new files: a patched copy of a binary
		src=$(pick $k)
		cp "$m/$src" "$m/$src.clone$i-$k"
		printf 'patched-%d-%d' "$i" "$k" | dd of="$m/$src.clone$i-$k" bs=1 seek=4096 conv=notrunc status=none
	done
	printf 'dropped by clone %d: SNAPSCAN-FLEET-MARKER\n' "$i" >"$m/usr/bin/.dropper-$i"
	for k in 4 5 6; do # edited in place
		f=$(picks $k)
		[ -f "$m/$f" ] && head -c 4096 /dev/urandom | dd of="$m/$f" bs=1 seek=$(($(stat -c %s "$m/$f") / 2)) conv=notrunc status=none
	done
	f=$(picks 7) && [ -f "$m/$f" ] && echo "# SNAPSCAN-FLEET-MARKER $i" >>"$m/$f"
	for k in 8 9; do f=$(picks $k) && [ -f "$m/$f" ] && head -c 65536 /dev/urandom >>"$m/$f"; done # appended to
	for k in 10 11 12; do f=$(picks $k) && rm -f "$m/$f"; done                                         # deleted
	for k in 13 14 15; do f=$(picks $k) && [ -f "$m/$f" ] && mv "$m/$f" "$m/$f.renamed"; done          # renamed
	sync
	unmount "$m"
	mv "$c.tmp" "$c"
done

# The other forms of each clone, checked against its qcow2 form.
for i in $(seq 1 "$N"); do
	c=clone-$i
	if [[ " ${formats[*]} " == *" vmdk "* && ! -f $c.vmdk ]]; then
		qemu-img convert -f qcow2 -O vmdk -o subformat=monolithicSparse -B base.vmdk -F vmdk "$c.qcow2" "$c.vmdk.tmp"
		qemu-img compare -q -f qcow2 -F vmdk "$c.qcow2" "$c.vmdk.tmp"
		mv "$c.vmdk.tmp" "$c.vmdk"
	fi
	if [[ " ${formats[*]} " == *" vhdx "* && ! -f $c.vhdx ]]; then
		qemu-img map -f qcow2 --output=json "$c.qcow2" >"$c.map.json"
		qemu-img convert -f qcow2 -O raw "$c.qcow2" "$c.raw"
		$PY "$here/bench/vhdx-child.py" "$c.vhdx.tmp" base.vhdx base.vhdx disk.raw "$c.raw" "$c.map.json" >"$c.vhdx.held"
		$PY - "$c.vhdx.tmp" "$c.raw" <<'PY'
import sys, pyvhdi
p = pyvhdi.file(); p.open('base.vhdx')
c = pyvhdi.file(); c.open(sys.argv[1]); c.set_parent(p)
raw = open(sys.argv[2], 'rb')
size = c.get_media_size()
raw.seek(0, 2)
assert size == raw.tell(), (size, raw.tell())
raw.seek(0)
for off in range(0, size, 8 << 20):
    n = min(8 << 20, size - off)
    assert c.read_buffer_at_offset(n, off) == raw.read(n), f'libvhdi reads {sys.argv[1]} differently at {off}'
PY
		rm -f "$c.raw" "$c.map.json"
		mv "$c.vhdx.tmp" "$c.vhdx"
	fi
done
[ -n "${BUILD_ONLY:-}" ] && echo "fleet built in $WORK: base + $N clones (${formats[*]})" && exit 0

(cd "$here" && go build -o "$WORK/snapscan" ./cmd/snapscan)
S=$WORK/snapscan

timed() { # OUT CMD...: runs CMD, its stdout to OUT; prints wall seconds
	local out=$1 t0 t1
	shift
	t0=$(date +%s.%N)
	"$@" >"$out" 2>"$out.err" || true
	t1=$(date +%s.%N)
	echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}'
}
# yara over each disk's qcow2 export (the same guest bytes in every form).
qclones=()
for i in $(seq 1 "$N"); do qclones+=("clone-$i.qcow2"); done
w_yara=0
rchar=0
: >yara.txt
[ "${YARA:-on}" = off ] && qclones=() && echo "yara: not run (YARA=off): no yara figures, incremental and full compared only"
[ "${YARA:-on}" = off ] || for d in base.qcow2 "${qclones[@]}"; do
	cat "$d" >/dev/null
	export_mount "$d" "y.$d" off
	t=$(timed "y.$d.out" yara -C -w -r -N -p "$WORKERS" rules.yarc "y.$d")
	w_yara=$(echo "$w_yara $t" | awk '{printf "%.2f", $1+$2}')
	rchar=$((rchar + $(awk '/^rchar/{print $2}' /proc/$qsd/io)))
	sed "s|y\.$d/|${d%.qcow2} /|" "y.$d.out" >>yara.txt
	unmount "y.$d"
done
# Each form: incremental, then full. Each clone scanned after the base is
# an added clone: its reads are in its target's read.bytes.
runs=()
for f in "${formats[@]}"; do
	disks=(base.$f)
	for i in $(seq 1 "$N"); do disks+=("clone-$i.$f"); done
	cat "${disks[@]}" >/dev/null # page cache warm for every mode
	args=(scan --json --no-progress --workers "$WORKERS" --rules rules.yarc --rules-cache off --disk-format "$f")
	w_inc=$(timed "inc-$f.json" "$S" "${args[@]}" "${disks[@]}")
	w_full=$(timed "full-$f.json" "$S" "${args[@]}" --no-incremental "${disks[@]}")
	runs+=("$f:$w_inc:$w_full")
	echo "$f: incremental ${w_inc}s, full ${w_full}s (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
[ "${YARA:-on}" = off ] || echo "yara: ${w_yara}s over $((N + 1)) mounts (load $(cut -d' ' -f1-3 /proc/loadavg))"

python3 - "$w_yara" "$rchar" "$N" "${runs[@]}" <<'PY'
import json, sys, os
w_yara, rchar, n = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
has_yara = w_yara > 0
def load(p):
    with open(p) as f:
        return json.load(f)
def stem(t):
    return t.rsplit(".", 1)[0]
ok = True
def check(cond, msg):
    global ok
    if not cond:
        ok = False
        print("FAIL:", msg)
yara = set()
for line in open("yara.txt"):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) == 3:
        rule, disk, path = parts
        yara.add((disk, path, rule))
for run in sys.argv[4:]:
    fmt, w_inc, w_full = run.split(":")
    w_inc, w_full = float(w_inc), float(w_full)
    inc, full = load(f"inc-{fmt}.json"), load(f"full-{fmt}.json")
    for name, o in (("incremental", inc), ("full", full)):
        for t in o["targets"]:
            check(not t.get("error") and t["result"]["status"] in ("clean", "findings"), f"{fmt} {name} {t['target']}: {t.get('error')} {t.get('result')}")
    def finds(o):
        return sorted((stem(f["target"]), f["path"], m["rule"]) for f in o["findings"] for m in f["matches"])
    check(finds(inc) == finds(full), f"{fmt}: incremental and full findings differ")
    snap = set((t, p, r) for t, p, r in finds(full) if "!" not in p)
    only_snap = sorted(snap - yara)
    only_yara = sorted(yara - snap)
    check(not has_yara or (not only_yara and not only_snap), f"{fmt}: yara and snapscan differ: only yara {only_yara[:5]}, only snapscan {only_snap[:5]}")
    base = next(t for t in full["targets"] if stem(t["target"]) == "base")
    base_used = sum(v["bytes"] for v in base["volumes"])
    clones = [t["target"] for t in inc["targets"] if stem(t["target"]) != "base"]
    overlays = sum(os.path.getsize(c) for c in clones)
    r_inc, r_full = inc["stats"]["read_bytes"], full["stats"]["read_bytes"]
    goal = 1.5 * (base_used + overlays)
    print(f"== {fmt}: base + {n} clones; base holds {base_used/1e6:.1f} MB of files; overlays {overlays/1e6:.1f} MB in all")
    print(f"findings: {len(finds(inc))} (disk, path, rule) in each mode" + (f"; yara agrees on {len(yara)}" if has_yara else ""))
    print(f"{'mode':12} {'wall s':>8} {'read MB':>9} {'vs yara':>8}")
    for mode, w, r in (("incremental", w_inc, r_inc), ("full", w_full, r_full), ("yara", w_yara, rchar)):
        if has_yara:
            print(f"{mode:12} {w:8.2f} {r/1e6:9.1f} {w/w_yara:8.3f}")
        elif mode != "yara":
            print(f"{mode:12} {w:8.2f} {r/1e6:9.1f}  (vs full {w/w_full:.3f})")
    print(f"incremental: {inc['stats']['reused']} of {inc['stats']['files']} files from the base")
    check(r_inc <= goal, f"{fmt}: incremental read {r_inc/1e6:.1f} MB > 1.5 x (base used + overlays) = {goal/1e6:.1f} MB")
    print(f"goal bytes read <= 1.5 x (base used + overlays) = {goal/1e6:.1f} MB: {r_inc/1e6:.1f} MB ({r_inc/(base_used+overlays):.2f}x)")
    if has_yara:
        print(f"goal wall <= 0.15 x yara: {w_inc/w_yara:.3f}")
    per = []
    for t in inc["targets"]:
        if stem(t["target"]) == "base":
            continue
        size = os.path.getsize(t["target"])
        held = size
        if os.path.exists(t["target"] + ".held"):
            held = int(open(t["target"] + ".held").read())
        per.append((t["read"]["bytes"] / size, t["target"], t["read"]["bytes"], size, held))
    per.sort()
    print("per clone: read / overlay size: min %.2f median %.2f max %.2f (goal <= 2)" % (per[0][0], per[len(per)//2][0], per[-1][0]))
    if fmt == "vhdx":
        hp = sorted(x[2] / x[4] for x in per)
        print("per clone: read / bytes the child holds (present sectors): min %.2f median %.2f max %.2f" % (hp[0], hp[len(hp)//2], hp[-1]))
    for x in per[-3:]:
        print(f"  {x[1]}: read {x[2]/1e6:.2f} MB, overlay {x[3]/1e6:.2f} MB" + (f" (holds {x[4]/1e6:.2f} MB)" if x[4] != x[3] else ""))
sys.exit(0 if ok else 1)
PY
