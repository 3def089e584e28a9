#!/usr/bin/env bash
# Builds the directory trees of issue 10 that made snapscan hang or crawl,
# with real tools and without root, for the tests of snapshot/vfs, the
# readers and the CLI.
#
# $OUT/xfs-cycle.img   mkfs.xfs -p of a/b/{eicar.com,up,top}, top.txt and
#                      other/eicar.com; then xfs_db -x rewrites the
#                      shortform entries a/b/up to name directory a and
#                      a/b/top to name the root: two directory cycles (the
#                      inodes they named become orphans). xfs_db rewrites
#                      the inode's CRC, so the image checks as valid.
# $OUT/xfs-cycle.list  what a walk that does not enter the cycles lists
# $OUT/ext4-deep.img   a chain of 10,000 directories d/d/d/... made by
#                      debugfs (mke2fs -d aborts on trees deeper than about
#                      1,000 levels), with eicar.com at levels 10 and
#                      10,000 and leaf.txt at the bottom
# $OUT/fat-cycle.img   mkfs.vfat + mcopy of a/b/c/f.txt, then the cluster
#                      of entry c in a/b rewritten (dd) to name a: a
#                      directory that lists its own grandparent
set -euo pipefail
: "${OUT:?}"
export TZ=UTC LC_ALL=C.UTF-8 MTOOLS_SKIP_CHECK=1
cd "$OUT"
SRC=$OUT/src
rm -rf "$SRC" && mkdir -p "$SRC"

eicar='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
printf '%s' "$eicar" >"$SRC/eicar.com"
printf 'top\n' >"$SRC/top.txt"

# XFS: a protofile (no mount), then two entries rewritten.
cat >xfs.proto <<EOF
/dev/null
0 0
d--755 0 0
a d--755 0 0
b d--755 0 0
eicar.com ---644 0 0 $SRC/eicar.com
up d--755 0 0
\$
top d--755 0 0
\$
\$
\$
other d--755 0 0
eicar.com ---644 0 0 $SRC/eicar.com
\$
top.txt ---644 0 0 $SRC/top.txt
\$
EOF
rm -f xfs-cycle.img
truncate -s 16M xfs-cycle.img
# Under 300 MB mkfs.xfs wants to run under fstests (these variables).
TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -L cycle -p xfs.proto xfs-cycle.img
rm xfs.proto
ino() { xfs_db -r -c "path $1" -c "print v3.inumber" xfs-cycle.img | awk '{ print $3 }'; }
entry() { # entry DIR NAME: index of NAME in the shortform directory DIR
	xfs_db -r -c "path $1" -c "print u3.sfdir3.list" xfs-cycle.img |
		sed -n "s/^u3.sfdir3.list\[\([0-9]*\)\].name = \"$2\"$/\1/p"
}
a=$(ino /a)
root=$(xfs_db -r -c "sb 0" -c "print rootino" xfs-cycle.img | awk '{ print $3 }')
up=$(entry /a/b up)
top=$(entry /a/b top)
xfs_db -x -c "path /a/b" -c "write u3.sfdir3.list[$up].inumber.i4 $a" -c "write u3.sfdir3.list[$top].inumber.i4 $root" xfs-cycle.img >/dev/null
# Check that the entries now name a and the root, and that the CRC holds.
out=$(xfs_db -r -c "path /a/b" -c "print u3.sfdir3.list[$up].inumber.i4 u3.sfdir3.list[$top].inumber.i4 v3.crc" xfs-cycle.img)
grep -q "= $a\$" <<<"$out" && grep -q "= $root\$" <<<"$out" && grep -q "(correct)" <<<"$out" || {
	echo "xfs_db did not make the cycles: $out" >&2
	exit 1
}
printf '%s\n' a a/b a/b/eicar.com a/b/top a/b/up other other/eicar.com top.txt >xfs-cycle.list

# ext4: a chain of 10,000 directories.
rm -f ext4-deep.img
mkfs.ext4 -q -F -N 10100 -b 4096 ext4-deep.img 68M
perl -e 'for my $i (1 .. 10000) { print "mkdir d\ncd d\n"; print "write $ARGV[0] eicar.com\n" if $i == 10 || $i == 10000 }
	print "write $ARGV[1] leaf.txt\n"' "$SRC/eicar.com" "$SRC/top.txt" >deep.cmds
debugfs -w -f deep.cmds ext4-deep.img >/dev/null 2>deep.log || { cat deep.log >&2; exit 1; }
rm deep.cmds deep.log
e2fsck -fn ext4-deep.img >/dev/null

# FAT: a/b/c becomes a/b/<a>.
mkdir -p "$SRC/fat/a/b/c"
printf 'f\n' >"$SRC/fat/a/b/c/f.txt"
rm -f fat-cycle.img
mkfs.vfat -n CYCLE -C fat-cycle.img 2048 >/dev/null
mcopy -s -i fat-cycle.img "$SRC/fat/a" ::/
# mshowfat prints a file's clusters: <first-last>.
cluster() { mshowfat -i fat-cycle.img "$1" | sed -n 's/.*<\([0-9]*\).*/\1/p'; }
ca=$(cluster ::/a)
cb=$(cluster ::/a/b)
bps=$(od -An -tu2 -j11 -N2 fat-cycle.img | tr -d ' ')
spc=$(od -An -tu1 -j13 -N1 fat-cycle.img | tr -d ' ')
res=$(od -An -tu2 -j14 -N2 fat-cycle.img | tr -d ' ')
nfat=$(od -An -tu1 -j16 -N1 fat-cycle.img | tr -d ' ')
rootents=$(od -An -tu2 -j17 -N2 fat-cycle.img | tr -d ' ')
fatsz=$(od -An -tu2 -j22 -N2 fat-cycle.img | tr -d ' ')
data=$(((res + nfat * fatsz) * bps + rootents * 32))
dirb=$((data + (cb - 2) * spc * bps))
# Find the short entry "C          " in b's cluster and set its cluster.
off=$(od -An -v -tx1 -w32 -j "$dirb" -N $((spc * bps)) fat-cycle.img | awk '$1 == "43" && $2 == "20" && $11 == "20" && !found { print NR - 1; found = 1 }')
[ -n "$off" ] || { echo "no entry C in a/b" >&2; exit 1; }
printf "$(printf '\\x%02x\\x%02x' $((ca & 255)) $((ca >> 8)))" | dd of=fat-cycle.img bs=1 seek=$((dirb + off * 32 + 26)) conv=notrunc status=none
rm -rf "$SRC"
