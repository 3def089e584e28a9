// Package report renders the appliance's printable reports as HTML: one
// scan (what was read, what was not and why, what matched) and one period
// (findings and coverage: the VMs scanned, those skipped or failed with
// the reason, and those not scanned within the schedule).
//
// The package only renders: the appliance gathers the data from its queue
// and results store (GET /v1/reports/...). Pages carry no script; their
// style sheet is the console's report.css, and they print on A4 or Letter
// with each table's header repeated on every page.
package report

import (
	"embed"
	"fmt"
	"html/template"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
)

//go:embed templates
var files embed.FS

var tmpl = template.Must(template.New("").Funcs(template.FuncMap{
	"when":    when,
	"bytes":   sizeOf,
	"dur":     func(a, b time.Time) string { return b.Sub(a).Round(time.Second).String() },
	"reasons": reasons,
	"meta":    meta,
	"join":    strings.Join,
	"short":   func(s string) string { return s[:min(len(s), 16)] },
	"ms":      func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) },
	"plan":    planLine,
	"planned": func(ps []results.Plan) bool { return ps != nil },
}).ParseFS(files, "templates/*.html"))

// Scan is the data of a per-scan report.
type Scan struct {
	Appliance string
	Generated time.Time
	// Job is the scan's queue record: state, attempts, error.
	ID       int64
	VM       string
	State    string // queued, running, done, failed, cancelled
	Priority string
	Attempts int
	Error    string
	Disks    []results.Disk
	// Result is the stored result (nil when the scan stored none: it
	// failed before it could read the disks, or has not finished).
	Result *results.Scan
	// Findings of the result; FindingsTotal counts all of them when
	// Findings holds only the first ones.
	Findings      []results.Finding
	FindingsTotal int
	// Freezes are the hypervisor snapshots the scan took of a connector's
	// VM, with the guest's stun at the freeze and at the release.
	Freezes []results.Freeze
}

// Period is the data of a per-period report.
type Period struct {
	Appliance string
	Generated time.Time
	// Since and Until bound the period; Schedule is how often every VM
	// should be scanned: VMs whose last scan is older than Until-Schedule
	// are listed as not scanned within the schedule.
	Since, Until time.Time
	Schedule     time.Duration
	VMsKnown     int
	// Scanned are the VMs with a scan stored in the period (their latest
	// one), by VM.
	Scanned []VMScan
	// Failed are the scans that ended failed or cancelled in the period.
	Failed []JobLine
	// NotScanned are the VMs with no scan within the schedule (the
	// first ones, by id, when NotScannedTotal is larger: a report for a
	// large fleet stays printable, the API lists them all).
	NotScanned      []results.VM
	NotScannedTotal int
	// Findings found in the period (at most a page of them when
	// FindingsTotal is larger).
	Findings      []results.Finding
	FindingsTotal int
}

// VMScan is one VM's latest scan of a period.
type VMScan struct {
	VM         string
	Job        int64
	Finished   time.Time
	Status     results.Status
	Findings   int64
	SigVersion uint64
	Incomplete map[string]int64
	BytesRead  int64
}

// JobLine is a scan that did not store a complete result.
type JobLine struct {
	ID       int64
	VM       string
	State    string
	Finished time.Time
	Attempts int
	Error    string
}

// StatusCounts counts scanned VMs by the status of their scan.
type StatusCounts struct{ Clean, Findings, Incomplete int }

// Counts returns how many of the period's scanned VMs had each status.
func (p *Period) Counts() StatusCounts {
	var c StatusCounts
	for _, s := range p.Scanned {
		switch s.Status {
		case results.StatusClean:
			c.Clean++
		case results.StatusFindings:
			c.Findings++
		case results.StatusIncomplete:
			c.Incomplete++
		}
	}
	return c
}

// NotScannedCount is how many VMs were not scanned within the schedule.
func (p *Period) NotScannedCount() int { return max(p.NotScannedTotal, len(p.NotScanned)) }

// Incomplete returns the period's scanned VMs whose scan left something
// out.
func (p *Period) Incomplete() []VMScan {
	var out []VMScan
	for _, s := range p.Scanned {
		if len(s.Incomplete) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// WriteScan writes the per-scan report.
func WriteScan(w io.Writer, s *Scan) error { return tmpl.ExecuteTemplate(w, "scan.html", s) }

// WritePeriod writes the per-period report.
func WritePeriod(w io.Writer, p *Period) error { return tmpl.ExecuteTemplate(w, "period.html", p) }

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func sizeOf(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGT"[i-1])
}

// reasons is "read_error 2, too_large 1", by reason.
func reasons(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func meta(ms []results.Meta) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%s=%v", m.Key, m.Value)
	}
	return strings.Join(parts, "; ")
}

// planLine says how a disk's scan was planned, in a line: what it took
// from an earlier scan, or why it read the whole disk.
func planLine(p results.Plan) string {
	var line string
	switch p.Mode {
	case results.PlanBase:
		line = fmt.Sprintf("incremental from base %s: %d files reused", p.Base, p.Reused)
	case results.PlanTracked:
		line = fmt.Sprintf("changed-block tracking since %s: %s changed, %d files reused", p.Tracked.Since, sizeOf(p.Tracked.ChangedBytes), p.Reused)
	default:
		switch {
		case len(p.Warnings) > 0:
			return "full: " + warnings(p)
		case p.Tracked != nil:
			return "full: the first scan with changed-block tracking (recorded at checkpoint " + p.Tracked.Checkpoint + ")"
		}
		return "full: no recorded base layer under this disk"
	}
	if len(p.Warnings) > 0 {
		line += " (" + warnings(p) + ")"
	}
	return line
}

func warnings(p results.Plan) string {
	s := strings.Join(p.Warnings, "; ")
	if p.WarningsDropped > 0 {
		s += fmt.Sprintf("; and %d more", p.WarningsDropped)
	}
	return s
}
