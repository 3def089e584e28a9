#!/usr/bin/env bash
# Builds the images of snapshot/vfs's BenchmarkWalkDeep and
# BenchmarkWalkWide, and of bench/walk-defects.sh (issue 10.3: a walk must
# cost time linear in the entries it lists, whatever the tree's shape). Run
# by internal/testenv.Fixture, or by bench/walk-defects.sh, with $OUT set.
#
#   deep-N.img (N = 1000, 2000, 4000, 10000)
#                                   ext4: a chain of N directories
#                                   "d/d/d/..." with leaf.txt at the bottom
#   wide-100k.img, wide-1m.img      ext4: 100 / 1,000 folders d000.. of 1,000
#                                   empty files f000..f999 each (100,000 and
#                                   1,000,000 entries besides the folders)
#   xfs-deep-10000.img, xfs-wide-1m.img
#                                   the same trees in XFS (v5), by mkfs.xfs -p
#
# mke2fs 1.47 -d aborts (realloc: invalid next size) on trees deeper than
# about 1,000 levels, so the chains are made by debugfs, one "mkdir d; cd d"
# per level, on an empty file system. The wide trees are made by mkfs.ext4 -d
# from a source tree written by perl (one process instead of a million
# touch calls), in /dev/shm when there is one.
set -euo pipefail
: "${OUT:?OUT must be set}"
cd "$OUT"

deep() { # deep IMG LEVELS
	rm -f "$1"
	mkfs.ext4 -q -F -N $(($2 + 64)) -b 4096 "$1" $(($2 * 6 + 8192))K
	perl -e 'print "mkdir d\ncd d\n" x $ARGV[0]; print "write /dev/null leaf.txt\n"' "$2" >"$1.cmds"
	debugfs -w -f "$1.cmds" "$1" >/dev/null 2>"$1.log"
	rm "$1.cmds" "$1.log"
	e2fsck -fn "$1" >/dev/null
}
for n in 1000 2000 4000 10000; do deep deep-$n.img $n; done

tmp=$(mktemp -d "$([ -d /dev/shm ] && echo /dev/shm || echo "$OUT")/walk-trees.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
wide() { # wide IMG FOLDERS
	rm -rf "$tmp/src" "$1"
	perl -e 'mkdir $ARGV[0] or die; for my $d (0 .. $ARGV[1] - 1) { my $p = sprintf("%s/d%03d", $ARGV[0], $d);
		mkdir $p or die; for my $f (0 .. 999) { open(my $h, ">", sprintf("%s/f%03d", $p, $f)) or die "$p: $!" } }' "$tmp/src" "$2"
	mkfs.ext4 -q -F -N $(($2 * 1000 + $2 + 64)) -b 4096 -d "$tmp/src" "$1" $(($2 * 600))K
	rm -rf "$tmp/src"
}
wide wide-100k.img 100
wide wide-1m.img 1000

# XFS: mkfs.xfs -p takes a protofile (a directory is "name d--755 0 0", its
# entries, then "$"), so neither tree needs a mount.
xfsimg() { # IMG SIZE PROTO-GENERATOR...
	local img=$1 size=$2
	shift 2
	rm -f "$img"
	"$@" >"$img.proto"
	truncate -s "$size" "$img"
	mkfs.xfs -q -f -p "$img.proto" "$img"
	rm "$img.proto"
}
xfsimg xfs-deep-10000.img 512M perl -e 'print "/dev/null\n0 0\nd--755 0 0\n", "d d--755 0 0\n" x 10000,
	"leaf.txt ---644 0 0 /dev/null\n", "\$\n" x 10001'
xfsimg xfs-wide-1m.img 2G perl -e 'print "/dev/null\n0 0\nd--755 0 0\n"; for my $d (0 .. 999) {
	printf "d%03d d--755 0 0\n", $d; printf "f%03d ---644 0 0 /dev/null\n", $_ for 0 .. 999; print "\$\n" } print "\$\n"'
