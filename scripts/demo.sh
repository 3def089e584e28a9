#!/usr/bin/env bash
# The README's main job: builds snapscan, makes a sample VM disk with real
# tools (GPT, FAT32 EFI partition, ext4 root, qcow2), and shows what
# snapscan sees in it: its volumes and files, then a YARA scan.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin # mkfs.*, sgdisk live in sbin
mkdir -p bin
go build -o bin/snapscan ./cmd/snapscan
out=${SAMPLE_DIR:-/tmp/snapscan-sample}
OUT=$out bash testdata/sample-disk.sh >/dev/null
echo "== bin/snapscan ls $out/sample.qcow2"
bin/snapscan ls "$out/sample.qcow2"
echo
echo "== bin/snapscan scan --rules testdata/rules/demo.yar $out/sample.qcow2"
set +e
bin/snapscan scan --rules testdata/rules/demo.yar "$out/sample.qcow2"
code=$?
set -e
echo "(exit status $code: 0 clean, 1 findings, 2 nothing could be scanned, 3 incomplete)"
[ "$code" -eq 1 ] # the planted files must be found
