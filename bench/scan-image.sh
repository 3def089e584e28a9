#!/usr/bin/env bash
# Issue 4's benchmark on a disk image: `snapscan scan` over an ext4 image
# made (mkfs.ext4 -d) from the same tree that `yara -r -p 2` scans in a
# folder, same compiled rules (signature-base), same cores, page cache warm,
# run alternately by bench/scan-vs-yara.sh.
#
#   bench/scan-image.sh
#
# Environment: as bench/scan-vs-yara.sh (RULES, RUNS, WORKERS, WORK).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/snapscan-bench}
WORKERS=${WORKERS:-2}
export WORK WORKERS
# Let scan-vs-yara.sh make the tree and the compiled rules first (one run).
RUNS=1 bash "$here/bench/scan-vs-yara.sh" >/dev/null
img=$WORK/tree.ext4
if [ ! -f "$img.done" ]; then
	size=$(du -sk --apparent-size "$WORK/tree" | awk '{print int($1 * 1.3 + 65536)}')
	rm -f "$img"
	mkfs.ext4 -q -F -d "$WORK/tree" "$img" "${size}K"
	touch "$img.done"
fi
(cd "$here" && go build -o "$WORK/snapscan" ./cmd/snapscan)
cat "$img" >/dev/null # warm the page cache for the image too
# Archives off: the yara tool does not look inside them either.
SNAPSCAN_CMD="$WORK/snapscan scan --rules $WORK/rules.yarc --workers $WORKERS --no-archives --no-progress $img" \
	bash "$here/bench/scan-vs-yara.sh" "$WORK/tree"
