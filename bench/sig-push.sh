#!/usr/bin/env bash
# Signed bundles end to end with signature-base: build + sign, then push
# to three appliance receivers over HTTPS on loopback and activate.
#
#   bench/sig-push.sh [RULES]
#
# RULES (default ../shared/rules/signature-base) is read in place, never
# copied. Prints:
#  - `snapscan sig build` (load, compile, sign, write) and `sig verify`
#    (verify, compile) wall times;
#  - the bundle's size against a plain tar of the same rule files (and,
#    for reference, that tar through `zstd -19`);
#  - BenchmarkPushSignatureBase: seconds from the start of the server's
#    build (the same steps as `sig build`) to all three receivers active,
#    each receiver verifying and compiling the set itself.
# Environment: RUNS (benchmark iterations, default 2; Go runs one more first), WORK (scratch
# folder, default /tmp/snapscan-sig-bench).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
RULES=$(cd "${1:-$here/../shared/rules/signature-base}" && pwd)
RUNS=${RUNS:-2}
WORK=${WORK:-/tmp/snapscan-sig-bench}
rm -rf "$WORK"
mkdir -p "$WORK"

cd "$here"
go build -o "$WORK/snapscan" ./cmd/snapscan
"$WORK/snapscan" sig keygen --out "$WORK/k" >/dev/null

t0=$(date +%s.%N)
"$WORK/snapscan" sig build --key "$WORK/k.key" --name signature-base --version 1 --out "$WORK/sb.bundle" "$RULES"
t1=$(date +%s.%N)
"$WORK/snapscan" sig verify --pub "$WORK/k.pub" "$WORK/sb.bundle" | tail -1
t2=$(date +%s.%N)
printf 'sig build: %.2fs   sig verify: %.2fs\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"

# The same files the bundle holds: .yar and .yara, recursively.
(cd "$RULES" && find . -type f \( -iname '*.yar' -o -iname '*.yara' \) -printf '%P\n' | LC_ALL=C sort) >"$WORK/list"
(cd "$RULES" && tar --format=ustar -cf "$WORK/plain.tar" -T "$WORK/list")
zstd -q -19 -f "$WORK/plain.tar" -o "$WORK/plain.tar.zst"
bundle=$(stat -c %s "$WORK/sb.bundle")
plain=$(stat -c %s "$WORK/plain.tar")
zst=$(stat -c %s "$WORK/plain.tar.zst")
printf 'files: %d   plain tar: %d bytes   bundle: %d bytes (%.1f%% of the tar)   tar | zstd -19: %d bytes\n' \
	"$(wc -l <"$WORK/list")" "$plain" "$bundle" "$(echo "100 * $bundle / $plain" | bc -l)" "$zst"

SNAPSCAN_SIGBASE="$RULES" go test -run '^$' -bench PushSignatureBase -benchtime "${RUNS}x" -v ./signatures/sigserver/ |
	grep -E 'Benchmark|built and signed'
