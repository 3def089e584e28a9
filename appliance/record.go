package appliance

import (
	"maps"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
)

// IncompleteTimeLimit is the reason of Scan.Incomplete that is the
// appliance's own (the others are the scanner's: scanner.Result): the job's
// time limit (queue.job_timeout) stopped the scan.
const IncompleteTimeLimit = "time_limit"

// diskScan is the scan of one disk of a job.
type diskScan struct {
	disk   queue.Disk
	report *scanner.Report
	// redact makes the report's error messages fit for API clients.
	redact func(string) string
}

// record turns a job's disk scans into the result to store: totals,
// volumes, findings, and the status with its incomplete reasons.
func record(job queue.Job, act activeSet, disks []diskScan, timedOut bool) *results.Scan {
	r := &results.Scan{JobID: job.ID, VM: job.VM, SigName: act.name, SigVersion: act.version, RulesID: act.rulesID,
		Incomplete: map[string]int64{}, Plans: []results.Plan{}}
	var reports []scanner.Result
	for _, d := range job.Disks {
		r.Disks = append(r.Disks, resultDisk(d))
	}
	for _, d := range disks {
		for _, v := range d.report.Volumes {
			r.Files += v.Files
			r.Bytes += v.Bytes
			r.Cached += v.Cached
			rv := results.Volume{Disk: d.disk.Path, Volume: v.ID, FileSystem: v.FileSystem, Error: d.redact(v.Err),
				Files: v.Files, Bytes: v.Bytes, Cached: v.Cached, Reused: v.Reused, Skipped: maps.Clone(v.Skipped), ErrorsDropped: v.ErrorsDropped,
				Errors: make([]results.FileError, 0, min(len(v.Errors), results.MaxVolumeErrors))}
			if rv.Skipped == nil {
				rv.Skipped = map[string]int64{}
			}
			for _, e := range v.Errors {
				msg := ""
				if e.Err != nil {
					msg = e.Err.Error()
				}
				rv.Errors = append(rv.Errors, results.FileError{Path: e.Path, Reason: e.Reason, Error: d.redact(msg)})
			}
			r.Volumes = append(r.Volumes, rv)
		}
		r.Plans = append(r.Plans, plan(d))
		reports = append(reports, d.report.Result)
		for _, f := range d.report.Findings {
			for _, m := range f.Matches {
				r.Findings = append(r.Findings, results.Finding{Datastore: d.disk.Datastore, Disk: d.disk.Path, Volume: f.Volume,
					Path: f.Path, Size: f.Size, SHA256: f.SHA256, Namespace: m.Namespace, Rule: m.Rule,
					Tags: m.Tags, Meta: resultMeta(m.Meta)})
			}
		}
	}
	// The scanner's rule (scanner.MergeResults) decides what is
	// incomplete; the time limit adds its own reason.
	res := scanner.MergeResults(reports...)
	maps.Copy(r.Incomplete, res.NotScanned)
	if timedOut {
		r.Incomplete[IncompleteTimeLimit] = 1
	}
	r.Status = results.StatusOf(len(r.Findings), r.Incomplete)
	return r
}

// PlanOff is the warning of a disk's plan when the appliance makes none:
// incremental scans are off (scanner.incremental: false).
const PlanOff = "incremental scans are off on this appliance (scanner.incremental: false): full scan"

// plan is how d's scan was planned, from its report (scanner/incremental
// wrote rep.Incremental), with paths and messages redacted as the
// volumes' errors are.
func plan(d diskScan) results.Plan {
	p := results.Plan{Datastore: d.disk.Datastore, Disk: d.disk.Path, Mode: results.PlanFull}
	for _, v := range d.report.Volumes {
		p.Reused += v.Reused
	}
	inc := d.report.Incremental
	if inc == nil {
		p.Warnings = []string{PlanOff}
		return p
	}
	for _, w := range inc.Warnings {
		p.Warnings = append(p.Warnings, d.redact(w))
	}
	if t := inc.Tracked; t != nil {
		p.Tracked = &results.TrackedPlan{VMDisk: t.Disk, Checkpoint: t.Checkpoint, Since: t.Since, ChangedBytes: t.ChangedBytes}
	}
	switch {
	case inc.Tracked != nil && inc.Tracked.Since != "":
		p.Mode = results.PlanTracked
	case inc.Base != "":
		p.Mode = results.PlanBase
	}
	if p.Mode != results.PlanFull {
		p.Base, p.Identity = d.redact(inc.Base), inc.Identity
	}
	return p
}

func resultDisk(d queue.Disk) results.Disk {
	return results.Disk{Datastore: d.Datastore, Path: d.Path, Format: d.Format, Layers: d.Layers}
}

func queueDisk(d results.Disk) queue.Disk {
	return queue.Disk{Datastore: d.Datastore, Path: d.Path, Format: d.Format, Layers: d.Layers}
}
