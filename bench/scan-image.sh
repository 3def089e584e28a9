#!/usr/bin/env bash
# Issue 4's benchmark on a disk image: `snapscan scan` over an ext4 image
# made (mkfs.ext4 -d) from the same tree that `yara -r -p 2` scans in a
# folder, same compiled rules (signature-base), same 2 workers, page cache
# warm, run alternately: yara, snapscan (verdict cache on, the default),
# snapscan --no-cache. Prints each run's wall and CPU seconds and peak RSS,
# and the median ratios snapscan/yara (target <= 1.0).
#
#   bench/scan-image.sh
#
# Environment: RULES, RUNS (3), WORKERS (2), WORK (/tmp/snapscan-bench), as
# bench/scan-vs-yara.sh, which makes the tree and the compiled rules.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export WORK=${WORK:-/tmp/snapscan-bench} WORKERS=${WORKERS:-2}
RUNS=${RUNS:-3}
RUNS=1 bash "$here/bench/scan-vs-yara.sh" >/dev/null # tree, rules.yarc
img=$WORK/tree.ext4
if [ ! -f "$img.done" ]; then
	size=$(du -sk --apparent-size "$WORK/tree" | awk '{print int($1 * 1.3 + 65536)}')
	rm -f "$img"
	mkfs.ext4 -q -F -d "$WORK/tree" "$img" "${size}K"
	touch "$img.done"
fi
(cd "$here" && go build -o "$WORK/snapscan" ./cmd/snapscan)
cat "$img" >/dev/null
find "$WORK/tree" -type f -print0 | xargs -0 cat >/dev/null

# Archives off: the yara tool does not look inside them either.
snap=("$WORK/snapscan" scan --rules "$WORK/rules.yarc" --workers "$WORKERS" --no-archives --no-progress)
run() { # label command...: "label wall cpu rssKiB"
	local label=$1
	shift
	/usr/bin/time -f "$label %e %U %S %M" -o "$WORK/time.$label" "$@" >/dev/null 2>&1 || true
	awk '{printf "%s %.2f %.2f %d\n", $1, $2, $3 + $4, $5}' "$WORK/time.$label"
}
for i in $(seq 1 "$RUNS"); do
	run yara yara -r -p "$WORKERS" -N -C "$WORK/rules.yarc" "$WORK/tree"
	run snapscan "${snap[@]}" "$img"
	run snapscan-nocache "${snap[@]}" --no-cache "$img"
done | tee "$WORK/scan-image.txt"
awk '{ wall[$1] = wall[$1] " " $2; cpu[$1] = cpu[$1] " " $3; rss[$1] = ($4 > rss[$1]) ? $4 : rss[$1] }
END { for (k in wall) printf "%-17s wall%s  cpu%s  peak RSS %d MiB\n", k, wall[k], cpu[k], rss[k] / 1024 }' "$WORK/scan-image.txt"
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratios() { # ratios LABEL: each run's wall time over yara's in the same round
	awk -v l="$1" '$1 == "yara" { y = $2 } $1 == l { printf "%.3f\n", $2 / y }' "$WORK/scan-image.txt"
}
echo "median ratio snapscan/yara: $(ratios snapscan | median) (verdict cache), $(ratios snapscan-nocache | median) (--no-cache); target <= 1.0"
