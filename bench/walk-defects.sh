#!/usr/bin/env bash
# Issue 10's measure for the walk defects, in one invocation: wall time and
# peak RSS of "snapscan ls" on each reproduction, built from the commit
# before the fixes (BEFORE, default f291206^: vfs without cycle detection,
# resolving every path from the root) and from this tree (after).
#
#   bench/walk-defects.sh [WORKDIR]     (root; default /tmp/snapscan-walk-defects)
#
# Reproductions (images by bench/walk-trees.sh and testdata/hostile-trees.sh,
# built once in WORKDIR):
#   10.2  xfs-cycle.img: a/b/up names a, a/b/top the root (ran forever,
#         memory growing)
#   10.3  ext4 chains of 1,000, 2,000, 4,000 and 10,000 directories (1.9 s,
#         11.5 s, 79 s, > 60 s)
#   and the walks of a 10,000-deep and a 1,000,000-entry tree, ext4 and XFS.
#
# Each run is killed after TIMEOUT seconds (default 60; the before build of
# the XFS cycle gets CYCLE_TIMEOUT, default 20, and an address-space limit
# of MEM_LIMIT KiB, default 8 GiB, since its memory grows without bound).
# A run counts only if it lists what it must: the after build's entries are
# checked (the 10,000-deep chain ends at the depth bound with the rest
# reported as a limit hit); the before build's are printed. The table goes
# to stdout, one line per run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/snapscan-walk-defects}
BEFORE=${BEFORE:-$(git -C "$ROOT" rev-parse f291206^)}
TIMEOUT=${TIMEOUT:-60}
CYCLE_TIMEOUT=${CYCLE_TIMEOUT:-20}
MEM_LIMIT=${MEM_LIMIT:-8388608}
mkdir -p "$W"

if [ ! -e "$W/trees/.done" ]; then
	rm -rf "$W/trees" && mkdir -p "$W/trees"
	OUT="$W/trees" bash "$ROOT/bench/walk-trees.sh"
	touch "$W/trees/.done"
fi
if [ ! -e "$W/hostile/.done" ]; then
	rm -rf "$W/hostile" && mkdir -p "$W/hostile"
	OUT="$W/hostile" bash "$ROOT/testdata/hostile-trees.sh"
	touch "$W/hostile/.done"
fi

# The two builds.
if [ ! -e "$W/before-src/.git" ]; then
	rm -rf "$W/before-src"
	git -C "$ROOT" worktree add --detach "$W/before-src" "$BEFORE" >/dev/null
fi
(cd "$W/before-src" && go build -o "$W/snapscan-before" ./cmd/snapscan)
(cd "$ROOT" && go build -o "$W/snapscan-after" ./cmd/snapscan)
echo "before: $(git -C "$ROOT" log --oneline -1 "$BEFORE")"
echo "after:  $(git -C "$ROOT" log --oneline -1 HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with local changes)')"
echo

failed=0
printf '%-26s %-6s %4s %9s %9s %10s  %s\n' case build exit entries seconds peak-MiB check
run() { # CASE BUILD IMAGE WANT(entries, or - to print only)
	local name=$1 build=$2 img=$3 want=$4 limit=$TIMEOUT rc secs=- kb=0 n check
	if [ "$build" = before ] && [ "$name" = "10.2 xfs cycle" ]; then limit=$CYCLE_TIMEOUT; fi
	# /usr/bin/time waits for snapscan, so its figures hold for a run
	# that is killed too (timeout(1) would kill time with it).
	(
		if [ "$build" = before ]; then ulimit -v "$MEM_LIMIT"; fi
		exec /usr/bin/time -f '%e %M' -o "$W/time.txt" "$W/snapscan-$build" ls "$img"
	) >"$W/out.txt" 2>"$W/err.txt" &
	local tpid=$! child="" killed="" t0=$SECONDS
	while kill -0 "$tpid" 2>/dev/null; do
		if [ $((SECONDS - t0)) -ge "$limit" ]; then
			child=$(pgrep -P "$tpid" || true)
			[ -n "$child" ] && kill -KILL "$child" 2>/dev/null && killed=1
			break
		fi
		sleep 0.05
	done
	set +e
	wait "$tpid"
	rc=$?
	set -e
	read -r secs kb < <(grep -E '^[0-9.]+ [0-9]+$' "$W/time.txt" || echo "- 0")
	# ls prints one line per file: volume id, mode, size, time, path (at
	# the end: a killed run prints none).
	n=$(grep -cE '^disk +[-dlpscb][-rwxsStT]{9} ' "$W/out.txt" || true)
	check=-
	if [ -n "$killed" ]; then
		check="killed after ${limit} s"
	elif [ "$want" != - ]; then
		if [ "$n" = "$want" ]; then check=ok; else check="WRONG: want $want entries"; failed=1; fi
	fi
	printf '%-26s %-6s %4s %9s %9s %10s  %s\n' "$name" "$build" "$rc" "$n" "$secs" "$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')" "$check"
	if [ "$build" = after ] && [ "$check" != ok ] && [ "$want" != - ]; then
		failed=1
		sed -n 1,5p "$W/err.txt" >&2
	fi
}

T=$W/trees
# 10.2: the after build lists the 8 entries and reports the two cycles.
run "10.2 xfs cycle" before "$W/hostile/xfs-cycle.img" -
run "10.2 xfs cycle" after "$W/hostile/xfs-cycle.img" 8
# 10.3: lost+found, the chain and leaf.txt.
for n in 1000 2000 4000; do
	run "10.3 ext4 depth $n" before "$T/deep-$n.img" -
	run "10.3 ext4 depth $n" after "$T/deep-$n.img" $((n + 2))
done
# Past the depth bound the rest is a limit hit: the directories down to
# depth 4097 are listed, the deepest not entered (exit status 1).
run "10.3 ext4 depth 10000" before "$T/deep-10000.img" -
run "10.3 ext4 depth 10000" after "$T/deep-10000.img" 4098
run "xfs depth 10000" after "$T/xfs-deep-10000.img" 4097
# 1,000,000 files in 1,000 folders.
run "ext4 1,000,000 entries" before "$T/wide-1m.img" -
run "ext4 1,000,000 entries" after "$T/wide-1m.img" $((1000 * 1001 + 1))
run "xfs 1,000,000 entries" before "$T/xfs-wide-1m.img" -
run "xfs 1,000,000 entries" after "$T/xfs-wide-1m.img" $((1000 * 1001))
exit $failed
