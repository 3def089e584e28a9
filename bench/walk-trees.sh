#!/usr/bin/env bash
# Builds the ext4 images of snapshot/vfs's BenchmarkWalkDeep and
# BenchmarkWalkWide (issue 10.3: a walk must cost time linear in the
# entries it lists, whatever the tree's shape). Run by
# internal/testenv.Fixture with $OUT set.
#
#   deep-1000.img, deep-10000.img   a chain of 1,000 / 10,000 directories
#                                   "d/d/d/..." with leaf.txt at the bottom
#   wide-100k.img, wide-1m.img      100 / 1,000 folders d000.. of 1,000 empty
#                                   files f000..f999 each (100,000 and
#                                   1,000,000 entries besides the folders)
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
deep deep-1000.img 1000
deep deep-10000.img 10000

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
