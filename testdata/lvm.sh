#!/usr/bin/env bash
# Builds the LVM2 fixtures of snapshot/lvm with lvm2's own tools, without
# device-mapper: pvcreate labels two disk files (through loop devices) with
# fixed PV UUIDs, vgcfgrestore writes the VG metadata below (linear LVs, a
# two-segment LV spanning both PVs, a 2-stripe LV, a thin pool with a thin
# LV, and an old-style snapshot), and the LVs' bytes are written with dd at
# pe_start + extent * extent_size of their PVs.
#
# Output in $OUT:
#   pv0.img pv1.img  the two physical volumes (64 MiB each)
#   meta.vg          the metadata file given to vgcfgrestore
#   expect/<lv>.bin  the exact bytes of each readable LV
#   lvs.txt          "name<TAB>size<TAB>reason" for each listed LV, sorted
#   pvs.txt          what pvs reports (pe_start, for the record)
#
# Needs: pvcreate, vgcfgrestore, pvs, losetup (root), mkfs.ext4, openssl.
set -euo pipefail
: "${OUT:?OUT must be set}"

vg=ssfixvg
pv0id=Pv0aaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaa0
pv1id=Pv1bbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbb1
# lvm2 tools: never touch /etc/lvm backups, archives or a devices file.
lvmconf='backup { backup = 0 archive = 0 } devices { use_devicesfile = 0 } global { use_lvmlockd = 0 }'

prng() { # prng SEED BYTES
	head -c "$2" < <(openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null)
}

cd "$OUT"
truncate -s 64M pv0.img pv1.img
mkdir -p expect

# Extents are 1 MiB (2048 sectors); data starts at 1 MiB on both PVs.
cat >meta.vg <<EOF
$vg {
	id = "VgIdxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx"
	seqno = 7
	format = "lvm2"
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 2048
	max_lv = 0
	max_pv = 0
	metadata_copies = 0

	physical_volumes {
		pv0 {
			id = "$pv0id"
			device = "/dev/loop-fixture0"	# Hint only
			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 131072
			pe_start = 2048
			pe_count = 63
		}
		pv1 {
			id = "$pv1id"
			device = "/dev/loop-fixture1"
			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 131072
			pe_start = 2048
			pe_count = 63
		}
	}

	logical_volumes {
		root {
			id = "LvRoot-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			creation_time = 1700000000
			creation_host = "fixture"
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 12
				type = "striped"
				stripe_count = 1	# linear
				stripes = [
					"pv0", 0
				]
			}
		}
		swap {
			id = "LvSwap-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 2
				type = "striped"
				stripe_count = 1
				stripes = ["pv1", 0]
			}
		}
		data {
			id = "LvData-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 2
			segment1 {
				start_extent = 0
				extent_count = 5
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 20]
			}
			segment2 {
				start_extent = 5
				extent_count = 4
				type = "striped"
				stripe_count = 1
				stripes = ["pv1", 30]
			}
		}
		stripe {
			id = "LvStrp-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 8
				type = "striped"
				stripe_count = 2
				stripe_size = 128	# 64 KiB
				stripes = [
					"pv0", 40,
					"pv1", 40
				]
			}
		}
		pool {
			id = "LvPool-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 4
				type = "thin-pool"
				metadata = "pool_tmeta"
				pool = "pool_tdata"
				transaction_id = 1
				chunk_size = 128
				discards = "passdown"
				zero_new_blocks = 1
			}
		}
		thin1 {
			id = "LvThin-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 10
				type = "thin"
				thin_pool = "pool"
				transaction_id = 0
				device_id = 1
			}
		}
		pool_tmeta {
			id = "LvTmet-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 1
				type = "striped"
				stripe_count = 1
				stripes = ["pv1", 50]
			}
		}
		pool_tdata {
			id = "LvTdat-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 4
				type = "striped"
				stripe_count = 1
				stripes = ["pv1", 51]
			}
		}
		snap {
			id = "LvSnap-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 2
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 60]
			}
		}
		snapshot0 {
			id = "LvSnp0-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
			status = ["READ", "WRITE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 12
				type = "snapshot"
				chunk_size = 8
				origin = "root"
				cow_store = "snap"
			}
		}
	}
}
contents = "Text Format Volume Group"
version = 1
description = "snapscan fixture"
creation_host = "fixture"
creation_time = 1700000000
EOF

loops=()
cleanup() { for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done; }
trap cleanup EXIT
for i in 0 1; do
	loops[i]=$(losetup -f --show "$OUT/pv$i.img")
done
pvcreate --config "$lvmconf" -ff -y --norestorefile --uuid "$pv0id" "${loops[0]}" >/dev/null
pvcreate --config "$lvmconf" -ff -y --norestorefile --uuid "$pv1id" "${loops[1]}" >/dev/null
vgcfgrestore --config "$lvmconf" --force -f meta.vg "$vg" >/dev/null
pvs --config "$lvmconf" --units s -o pv_name,pv_uuid,pe_start,vg_name "${loops[@]}" >pvs.txt
cleanup
loops=()

const_mib=$((1024 * 1024))
# write FILE-OFFSET LENGTH PV PV-OFFSET: copy LENGTH bytes of the current
# expect file at FILE-OFFSET to the PV at PV-OFFSET (all in bytes).
put() {
	dd if="$cur" of="$OUT/pv$3.img" bs=64K iflag=skip_bytes,count_bytes oflag=seek_bytes \
		skip="$1" count="$2" seek="$4" conv=notrunc status=none
}
pe() { echo $((const_mib + $1 * const_mib)); } # byte offset of extent N

# root: an ext4 file system made from a small tree, then linear on pv0.
mkdir -p src/etc src/usr/bin
printf 'root fixture\n' >src/etc/hostname
prng 10 300000 >src/usr/bin/tool
cur=expect/root.bin
truncate -s 12M "$cur"
mkfs.ext4 -q -F -d src -L lvroot -U 11111111-2222-3333-4444-555555555555 -E root_owner=0:0 "$cur"
put 0 $((12 * const_mib)) 0 "$(pe 0)"
# swap: a pattern, linear on pv1.
cur=expect/swap.bin
prng 11 $((2 * const_mib)) >"$cur"
put 0 $((2 * const_mib)) 1 "$(pe 0)"
# data: 5 extents on pv0 from extent 20, then 4 on pv1 from extent 30.
cur=expect/data.bin
prng 12 $((9 * const_mib)) >"$cur"
put 0 $((5 * const_mib)) 0 "$(pe 20)"
put $((5 * const_mib)) $((4 * const_mib)) 1 "$(pe 30)"
# stripe: 64 KiB chunks alternate between pv0 and pv1 from extent 40.
cur=expect/stripe.bin
prng 13 $((8 * const_mib)) >"$cur"
chunk=65536
for ((c = 0; c < 8 * const_mib / chunk; c++)); do
	put $((c * chunk)) $chunk $((c % 2)) $(($(pe 40) + (c / 2) * chunk))
done
# snap (the snapshot's copy-on-write store): leave zeros.

printf '%s\n' "data	9437184	" "pool	4194304	thin-pool volume: not read" \
	"root	12582912	" "snap	2097152	snapshot of root: not read" "stripe	8388608	" \
	"swap	2097152	" "thin1	10485760	thin volume: not read" >lvs.txt
rm -rf src
