#!/usr/bin/env bash
# Builds ISO9660 images with xorriso (as mkisofs) from one source tree, for
# the tests of snapshot/iso9660.
#
# $OUT/src           the source tree (what a Rock Ridge reader must show)
# $OUT/listing.txt   `find` listing of the source tree: type, size, path
# $OUT/rr-joliet.iso xorriso -as mkisofs -R -J (Rock Ridge and Joliet)
# $OUT/joliet.iso    xorriso -as mkisofs -J --norock (Joliet names only)
# $OUT/plain.iso     xorriso -as mkisofs --norock (ISO 9660 names only)
# $OUT/*.lsdl        xorriso's own listing of each image (the reference)
# $OUT/genisoimage.iso  genisoimage (Debian's mkisofs) -R -J: relocates the
#                    directories deeper than 8 levels (Rock Ridge CL/RE/PL)
# $OUT/small.iso     -R -J image of $OUT/small.src, for the fuzz seed
set -euo pipefail
: "${OUT:?}"
export TZ=UTC LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=1700000000
cd "$OUT"

prng() { # prng SEED BYTES: deterministic pseudo-random bytes
	{ openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null || true; } | head -c "$2"
}

rm -rf src small.src
mkdir -p src/dir/sub/deeper src/big src/empty-dir src/links
printf 'hello from an ISO\n' >src/readme.txt
printf 'dot file\n' >src/.hidden
# Deeper than the 8 levels ISO 9660 allows: Rock Ridge relocates it.
mkdir -p src/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10
printf 'relocated\n' >src/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/bottom.txt
: >src/empty.txt
printf 'Case\n' >src/Case.txt
printf 'case\n' >src/case.txt
printf 'long\n' >'src/A rather long file name that ISO level 1 cannot hold.text'
printf 'accents\n' >'src/naïve café.txt'
printf 'cjk\n' >'src/日本語.txt'
printf 'astral\n' >'src/emoji 😀.txt'
printf 'deep\n' >src/dir/sub/deeper/leaf.txt
prng 1 $((3 * 1024 * 1024 + 17)) >src/big/multi.bin
prng 2 2048 >src/big/one-block.bin
ln -s ../readme.txt src/links/relative
ln -s /etc/passwd src/links/absolute
ln -s dangling-target src/links/dangling
ln -s ../dir src/links/to-dir
find src -exec touch -h -d '2023-06-01 12:00:00' {} +

mkdir -p small.src/sub
printf 'small\n' >small.src/hello.txt
printf 'nested\n' >small.src/sub/nested.txt
ln -s hello.txt small.src/link
find small.src -exec touch -h -d '2023-06-01 12:00:00' {} +

mk() { # mk OUTPUT SOURCE ARGS...
	local out=$1 src=$2
	shift 2
	xorriso -as mkisofs -quiet -V SNAPSCAN_ISO "$@" -o "$out" "$src" 2>&1
}
rm -f rr-joliet.iso joliet.iso plain.iso small.iso genisoimage.iso
mk rr-joliet.iso src -R -J -joliet-long
mk joliet.iso src -J -joliet-long --norock
mk plain.iso src --norock
mk small.iso small.src -R -J
genisoimage -quiet -V SNAPSCAN_ISO -R -J -joliet-long -o genisoimage.iso src 2>&1
for iso in rr-joliet joliet plain; do
	xorriso -indev "$iso.iso" -find / -exec lsdl -- 2>/dev/null >"$iso.lsdl"
done

(cd src && find . -printf '%y %s %P\n' | sort -k3) >listing.txt
