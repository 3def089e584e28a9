#!/usr/bin/env bash
# Builds the scanner package's fixture: a tree of real files in $OUT/tree
# (ELF binaries of this machine, a signed PE from Go's module cache,
# planted test strings, archives made by zip/tar/gzip/zstd/bzip2/xz,
# hostile archives, an empty file) and
# $OUT/files.txt, the list of its regular files (the expected listing).
#
# Tools: coreutils, perl, zip, tar, gzip, zstd, bzip2, xz, go (to locate the PE).
set -euo pipefail
: "${OUT:?OUT must be set}"
T="$OUT/tree"
rm -rf "$T"
mkdir -p "$T"/{bin,lib,pe,text,arch,hostile,empty,Mixed.Case}
export LC_ALL=C TZ=UTC
# Fixed times make the archives' bytes (and so their hashes) repeatable.
STAMP=202401020304.05

# --- ELF binaries and a shared library from this machine.
for b in ls cat echo; do cp "/usr/bin/$b" "$T/bin/$b"; done
cp -L /lib/x86_64-linux-gnu/libz.so.1 "$T/lib/libz.so.1" 2>/dev/null ||
	cp -L "$(ldconfig -p | awk '/libz\.so\.1 /{print $NF; exit}')" "$T/lib/libz.so.1"

# --- A real Authenticode-signed PE: golang.org/x/sys (a dependency of the
# module) ships one as test data.
pe="$(go env GOMODCACHE)/golang.org/x/sys@v0.49.0/windows/testdata/ev-signed-file.exe"
if [ ! -f "$pe" ]; then
	dir=$(cd "$(dirname "$0")/.." && go mod download -json golang.org/x/sys@v0.49.0 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	pe="$dir/windows/testdata/ev-signed-file.exe"
fi
cp "$pe" "$T/pe/Signed.EXE"
# The same PE again under another name: identical content for the cache.
cp "$pe" "$T/pe/copy-of-signed.dll"

# --- Planted strings.
printf 'hello\nSNAPSCAN-PLANTED-1 evil marker\n' >"$T/text/planted.txt"
printf '#!/bin/sh\necho SNAPSCAN-PLANTED-2\n' >"$T/text/dropper.sh"
printf '%%PDF-1.4\n%% SNAPSCAN-PLANTED-1\n%%%%EOF\n' >"$T/Mixed.Case/Report.PDF"
printf 'no extension, nothing planted\n' >"$T/text/README"
printf 'clean text\n' >"$T/text/.hidden"
cp "$T/text/planted.txt" "$T/text/planted-copy.txt"
# Random-looking bytes for math.entropy (deterministic: a hash chain).
for i in $(seq 1 64); do printf '%s' "$i" | sha256sum | cut -c1-64; done | perl -ne 'chomp; print pack("H*", $_)' >"$T/text/random.bin"

# --- An empty file. (Files above the memory window are made by the tests
# that need them: scanning one costs a spool copy.)
: >"$T/empty/empty.dat"

# --- Archives (each member is known; see files.txt for the tree).
W="$OUT/work"
rm -rf "$W"
mkdir -p "$W/z/dir" "$W/t/etc"
cp "$T/text/planted.txt" "$W/z/planted.txt"
cp "$T/pe/Signed.EXE" "$W/z/dir/inner.exe"
cp "$T/bin/echo" "$W/t/etc/echo"
cp "$T/text/dropper.sh" "$W/t/dropper.sh"
find "$W" -exec touch -h -t "$STAMP" {} +
(cd "$W/z" && zip -X -q -r "$T/arch/planted.zip" planted.txt dir)
(cd "$W/t" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1704164645 -cf "$W/t.tar" etc dropper.sh)
gzip -n -9 -c "$W/t.tar" >"$T/arch/bundle.tar.gz"
zstd -q -19 -c "$T/text/planted.txt" >"$T/arch/planted.txt.zst"
bzip2 -9 -c "$T/text/dropper.sh" >"$T/arch/dropper.sh.bz2"
xz -9 -c "$T/pe/Signed.EXE" >"$T/arch/signed.exe.xz"
# Nested: a zip in a tar in an xz; a gz in a zip.
mkdir -p "$W/n"
cp "$T/arch/planted.zip" "$W/n/inner.zip"
gzip -n -c "$T/text/planted.txt" >"$W/n/planted.txt.gz"
touch -h -t "$STAMP" "$W/n"/*
(cd "$W/n" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1704164645 -cf "$W/n.tar" inner.zip)
xz -c "$W/n.tar" >"$T/arch/nested.tar.xz"
(cd "$W/n" && zip -X -q "$T/arch/gz-in.zip" planted.txt.gz)

# --- Hostile archives.
# A zip bomb: 300 MiB of zeros in one member (about 300 KiB compressed).
mkdir -p "$W/bomb"
truncate -s 300M "$W/bomb/zeros.bin"
touch -t "$STAMP" "$W/bomb/zeros.bin"
(cd "$W/bomb" && zip -X -q -9 "$T/hostile/bomb.zip" zeros.bin)
# Deep nesting: planted.txt gzipped 8 times.
cp "$T/text/planted.txt" "$W/deep"
for i in 1 2 3 4 5 6 7 8; do gzip -n -c "$W/deep" >"$W/deep.gz"; mv "$W/deep.gz" "$W/deep"; done
mv "$W/deep" "$T/hostile/deep.gz"
# A truncated gzip (the stream ends early).
head -c 40 "$T/arch/bundle.tar.gz" >"$T/hostile/truncated.tar.gz"
# A zip whose member lies about its size: the local and central headers
# say 5 bytes uncompressed, the data holds planted.txt.
(cd "$W/z" && zip -X -q -0 "$W/liar.zip" planted.txt)
cp "$W/liar.zip" "$T/hostile/liar.zip"
size=$(stat -c %s "$T/text/planted.txt")
# Patch uncompressed size fields: local header at 22, central header at
# (central directory offset) + 24.
cdoff=$(od -An -tu4 -j $(($(stat -c %s "$W/liar.zip") - 6)) -N4 "$W/liar.zip" | tr -d ' ')
printf '\x05\x00\x00\x00' | dd of="$T/hostile/liar.zip" bs=1 seek=22 conv=notrunc status=none
printf '\x05\x00\x00\x00' | dd of="$T/hostile/liar.zip" bs=1 seek=$((cdoff + 24)) conv=notrunc status=none
# An xz stream whose block header asks for a 4 GiB dictionary.
xz -c "$T/text/planted.txt" >"$T/hostile/bigdict.xz"
# The block header starts at 12: size byte, flags, filter id 0x21, props
# size 1, dictionary byte.
printf '\x28' | dd of="$T/hostile/bigdict.xz" bs=1 seek=16 conv=notrunc status=none

rm -rf "$W"
find "$T" -exec touch -h -t "$STAMP" {} +
(cd "$T" && find . -type f | sed 's|^\.||' | sort) >"$OUT/files.txt"
echo "planted size $size" >"$OUT/info.txt"
