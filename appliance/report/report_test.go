package report

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestScanReport(t *testing.T) {
	evil := `/tmp/<script>alert(1)</script>.sh`
	s := &Scan{Appliance: "appl-1", Generated: t0, ID: 7, VM: "web01", State: "done", Priority: "on_demand", Attempts: 1,
		Result: &results.Scan{JobID: 7, VM: "web01", Status: results.StatusFindings, Incomplete: map[string]int64{"too_large": 2},
			SigName: "site", SigVersion: 3, StartedAt: t0, FinishedAt: t0.Add(90 * time.Second), Files: 1200, Bytes: 5 << 20,
			FindingCount: 1, BytesRead: 7 << 20, ReadOps: 300,
			Volumes: []results.Volume{{Disk: "web01.qcow2", Volume: "p2", FileSystem: "ext4", Files: 1200, Skipped: map[string]int64{"too_large": 2},
				Errors: []results.FileError{{Path: "/big.iso", Reason: "too_large", Error: "larger than 512 MiB"}}}},
			Plans: []results.Plan{
				{Datastore: "ds-a", Disk: "web01.qcow2", Mode: results.PlanBase, Base: "golden/<b>.qcow2", Identity: "id-1", Reused: 1100},
				{Datastore: "ds-a", Disk: "data.qcow2", Mode: results.PlanFull,
					Warnings: []string{"base data-base.qcow2 changed since it was recorded at 2026-02-28T10:00:00Z: full scan"}, WarningsDropped: 2},
				{Datastore: "vc", Disk: "[ds1] web01/web01.vmdk", Mode: results.PlanTracked, Base: "VM disk vc/vm-42/2000 at checkpoint 52 a/7", Reused: 40,
					Tracked: &results.TrackedPlan{VMDisk: "vc/vm-42/2000", Checkpoint: "52 a/9", Since: "52 a/7", ChangedBytes: 3 << 20}},
				{Datastore: "vc", Disk: "[ds1] web01/web01_1.vmdk", Mode: results.PlanFull,
					Tracked: &results.TrackedPlan{VMDisk: "vc/vm-42/2001", Checkpoint: "52 b/1"}},
				{Datastore: "ds-b", Disk: "single.raw", Mode: results.PlanFull},
			}},
		Findings: []results.Finding{{ID: 1, VM: "web01", Datastore: "ds-a", Disk: "web01.qcow2", Volume: "p2", Path: evil,
			SHA256: strings.Repeat("ab", 32), Namespace: "shells.yar", Rule: "Webshell", Tags: []string{"webshell"},
			Meta: []results.Meta{{Key: "score", Value: int64(80)}}, FoundAt: t0}},
		FindingsTotal: 1,
		Freezes: []results.Freeze{{VM: "vc/vm-42", ID: "snapshot-7", Connector: "vc", JobID: 7, Taken: t0, FreezeStun: 23456 * time.Microsecond,
			Released: t0.Add(2 * time.Minute), ReleaseStun: 41 * time.Millisecond, Held: 2 * time.Minute}}}
	var b bytes.Buffer
	if err := WriteScan(&b, s); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"Scan 7 of VM web01", "Findings: 1 rule matches.", "Not everything was scanned: too_large 2.",
		"site version 3", "1m30s", "7.0 MiB in 300 reads", "/big.iso", "larger than 512 MiB", "shells.yar:Webshell", "score=80",
		"&lt;script&gt;alert(1)&lt;/script&gt;", `href="/console/static/report.css"`,
		"Hypervisor snapshots", "snapshot-7", "23.5 ms", "41.0 ms", "2m0s",
		"<td>ds-a: web01.qcow2</td><td class=\"plan base\">incremental from base golden/&lt;b&gt;.qcow2: 1100 files reused</td>",
		"full: base data-base.qcow2 changed since it was recorded at 2026-02-28T10:00:00Z: full scan; and 2 more",
		"changed-block tracking since 52 a/7: 3.0 MiB changed, 40 files reused",
		"full: the first scan with changed-block tracking (recorded at checkpoint 52 b/1)",
		"<td>ds-b: single.raw</td><td class=\"plan full\">full: no recorded base layer under this disk</td>"} {
		if !strings.Contains(out, want) {
			t.Errorf("scan report lacks %q", want)
		}
	}
	if strings.Contains(out, "<script>") {
		t.Error("a path's markup reached the report unescaped")
	}
	// A result stored before plans were says so, not "full".
	s.Result.Plans = nil
	b.Reset()
	if err := WriteScan(&b, s); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "No plan recorded") || strings.Contains(out, "full:") {
		t.Errorf("a result without plans is not said to have none recorded:\n%s", out)
	}
	// A scan that stored no result says why.
	b.Reset()
	if err := WriteScan(&b, &Scan{ID: 8, VM: "broken", State: "failed", Error: "disk corrupt.qcow2: qcow2: bad header",
		Disks: []results.Disk{{Datastore: "ds-a", Path: "corrupt.qcow2"}}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "No result stored: the scan is failed: disk corrupt.qcow2: qcow2: bad header.") {
		t.Errorf("failed scan report:\n%s", b.String())
	}
}

func TestPeriodReport(t *testing.T) {
	p := &Period{Appliance: "appl-1", Generated: t0, Since: t0.Add(-24 * time.Hour), Until: t0, Schedule: 24 * time.Hour, VMsKnown: 4,
		Scanned: []VMScan{
			{VM: "a", Job: 1, Finished: t0.Add(-time.Hour), Status: results.StatusClean, SigVersion: 3},
			{VM: "b", Job: 2, Finished: t0.Add(-time.Hour), Status: results.StatusFindings, Findings: 2, SigVersion: 3},
			{VM: "c", Job: 3, Finished: t0.Add(-time.Hour), Status: results.StatusIncomplete, Incomplete: map[string]int64{"timeout": 1, "read_error": 4}},
		},
		Failed:     []JobLine{{ID: 4, VM: "d", State: "failed", Finished: t0.Add(-2 * time.Hour), Attempts: 5, Error: "crashed the scanner 5 times"}},
		NotScanned: []results.VM{{ID: "d", Source: "libvirt"}, {ID: "e", Source: "api", LastScanned: t0.Add(-72 * time.Hour), LastStatus: results.StatusClean}},
		Findings:   []results.Finding{{VM: "b", Path: "/x", Rule: "R", Namespace: "n", SHA256: "00"}}, FindingsTotal: 2}
	var b bytes.Buffer
	if err := WritePeriod(&b, p); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"2026-02-28 12:00:00Z to 2026-03-01 12:00:00Z", "every VM within 24h0m0s",
		"<th>VMs scanned in the period</th><td class=\"num\">3</td>", "<th>… incomplete (not everything scanned)</th><td class=\"num\">1</td>",
		"The first 1 of 2 findings.", "read_error 4, timeout 1", "crashed the scanner 5 times", "never scanned",
		`<td>e</td><td>api</td><td>2026-02-26 12:00:00Z</td>`, `href="/v1/reports/scans/3"`} {
		if !strings.Contains(out, want) {
			t.Errorf("period report lacks %q", want)
		}
	}
}

func ExamplePeriod_Counts() {
	p := &Period{Scanned: []VMScan{{Status: results.StatusClean}, {Status: results.StatusFindings}, {Status: results.StatusClean}}}
	fmt.Printf("%+v\n", p.Counts())
	// Output: {Clean:2 Findings:1 Incomplete:0}
}
