#!/usr/bin/env bash
# snapscan's scanner against the yara tool, same rules, same files, same
# cores, page cache warm, run alternately.
#
#   bench/scan-vs-yara.sh [FOLDER]
#
# FOLDER (default: a fresh copy of /usr/lib/x86_64-linux-gnu, /usr/bin,
# /usr/sbin, /usr/libexec, /usr/lib/python3 and /usr/lib/gcc, 1.2 GB) is
# scanned by `yara -r -p $WORKERS -N` and by the scanner library over
# os.DirFS. To time another snapscan front end on the same files (say
# `snapscan scan` over an ext4 image made from FOLDER), set SNAPSCAN_CMD to
# that command line; it replaces the library driver.
#
# Environment: RULES (default ../shared/rules/signature-base), RUNS (3),
# WORKERS (2), WORK (a scratch folder, default /tmp/snapscan-bench),
# SETUP_ONLY=1 (make the tree and the compiled rules, time nothing: for
# bench/scan-image.sh).
# Prints each run, the median ratio snapscan/yara (≤ 1.0: snapscan as fast
# or faster), the in-memory ceiling and peak RSS of each side.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
RULES=${RULES:-$here/../shared/rules/signature-base}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-2}
WORK=${WORK:-/tmp/snapscan-bench}
mkdir -p "$WORK"

target=${1:-}
if [ -z "$target" ]; then
	target=$WORK/tree
	if [ ! -f "$WORK/tree.done" ]; then
		rm -rf "$target"
		mkdir -p "$target"
		for d in /usr/lib/x86_64-linux-gnu /usr/bin /usr/sbin /usr/libexec /usr/lib/python3 /usr/lib/gcc; do
			mkdir -p "$target$d"
			cp -a "$d/." "$target$d/"
		done
		touch "$WORK/tree.done"
	fi
fi
echo "target: $target ($(find "$target" -type f -printf "%s\n" | awk "{s+=\$1} END{print s}") bytes in $(find "$target" -type f | wc -l) regular files)"

# One compiled rule set for both sides, with the externals signature-base
# needs defined empty (as snapscan does).
yarc=$WORK/rules.yarc
mapfile -t srcs < <(if [ -d "$RULES" ]; then find "$RULES" -name '*.yar' -o -name '*.yara' | sort; else echo "$RULES"; fi)
if [ ! -f "$yarc" ] || [ -n "$(find "${srcs[@]}" -newer "$yarc" -print -quit)" ]; then
	yarac -d filename= -d filepath= -d extension= -d filetype= -d owner= "${srcs[@]}" "$yarc"
fi
echo "rules: ${#srcs[@]} files compiled to $yarc"
if [ -n "${SETUP_ONLY:-}" ]; then exit 0; fi

# The library driver: the scanner package's test binary.
(cd "$here" && go test -c -o "$WORK/scanner.test" ./scanner)
export SNAPSCAN_BENCH_TARGET=$target SNAPSCAN_BENCH_RULES=$yarc SNAPSCAN_BENCH_WORKERS=$WORKERS
driver=("$WORK/scanner.test" -test.run '^TestBenchDriver$' -test.count=1)
if [ -n "${SNAPSCAN_CMD:-}" ]; then
	snap=(bash -c "$SNAPSCAN_CMD")
else
	snap=(env SNAPSCAN_BENCH_MODE=scan "${driver[@]}")
fi

# Warm the page cache.
find "$target" -type f -print0 | xargs -0 cat >/dev/null 2>&1 || true

timed() { # label, command...: prints wall seconds, peak RSS in KiB, CPU seconds
	local label=$1
	shift
	local log=$WORK/time.$label
	/usr/bin/time -v -o "$log" "$@" >"$WORK/out.$label" 2>&1 || true
	local wall rss
	wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
	rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$log")
	cpu=$(awk -F': ' '/User time|System time/{s+=$2} END{print s}' "$log")
	echo "$wall $rss $cpu"
}

# The machine may be shared: wall-clock ratios swing with other load, so
# CPU time (user+sys) is reported too.
ratios=()
cratios=()
for i in $(seq 1 "$RUNS"); do
	read -r ty ry cy < <(timed yara yara -r -p "$WORKERS" -N -C "$yarc" "$target")
	read -r ts rs cs < <(timed snap "${snap[@]}")
	r=$(awk -v a="$ts" -v b="$ty" 'BEGIN{printf "%.3f", a/b}')
	c=$(awk -v a="$cs" -v b="$cy" 'BEGIN{printf "%.3f", a/b}')
	ratios+=("$r")
	cratios+=("$c")
	echo "run $i: yara ${ty}s cpu ${cy}s (peak RSS $((ry / 1024)) MiB, $(grep -c . "$WORK/out.yara" || true) matches) | snapscan ${ts}s cpu ${cs}s (peak RSS $((rs / 1024)) MiB) | ratio $r, cpu ratio $c"
	if [ -z "${SNAPSCAN_CMD:-}" ]; then grep '^snapscan' "$WORK/out.snap" | sed 's/^/    /'; fi
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
cmedian=$(printf '%s\n' "${cratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo "median ratio snapscan/yara: wall $median, cpu $cmedian (target <= 1.0)"

read -r tc rc < <(timed ceil env SNAPSCAN_BENCH_MODE=ceiling "${driver[@]}")
echo "in-memory ceiling (YARA alone over bytes already in memory, $WORKERS workers): $(grep '^ceiling' "$WORK/out.ceil") (${tc}s wall with loading)"
