package appliance

import (
	"errors"
	"maps"
	"strings"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot"
)

// Reasons of Scan.Incomplete that are the appliance's own (the others are
// the scanner's skip reasons).
const (
	// IncompleteVolume counts volumes that hold files but could not be
	// read (encrypted, unsupported or damaged).
	IncompleteVolume = "volume_unreadable"
	// IncompleteTimeLimit is set when the job's time limit stopped the
	// scan (queue.job_timeout).
	IncompleteTimeLimit = "time_limit"
)

// incompleteSkips are the scanner's skip reasons that leave content
// unscanned. Excluded files are the operator's choice and links, devices
// and sockets have no content to scan: neither makes a scan incomplete.
var incompleteSkips = map[string]bool{
	scanner.SkipTooLarge: true, scanner.SkipReadError: true, scanner.SkipTimeout: true,
	scanner.SkipLimitHit: true, scanner.SkipScanError: true, scanner.SkipCanceled: true,
}

// diskScan is the scan of one disk of a job.
type diskScan struct {
	disk   queue.Disk
	report *scanner.Report
	// unread are the disk's volumes that hold files the scan could not
	// read, by volume id.
	unread map[string]bool
	// redact makes the report's error messages fit for API clients.
	redact func(string) string
}

// unreadVolumes returns the volumes of d that hold files but were not
// read. Swap, reserved and boot-loader partitions and LVM physical volumes
// (whose logical volumes are listed on their own) hold no files.
func unreadVolumes(d *snapshot.Disk) map[string]bool {
	out := map[string]bool{}
	for _, v := range d.Volumes {
		if v.Err == nil {
			continue
		}
		noFiles := v.FileSystem == "swap" || strings.Contains(v.Err.Error(), "holds no") ||
			(v.FileSystem == "lvm2" && errors.Is(v.Err, snapshot.ErrUnsupported))
		if !noFiles {
			out[v.ID] = true
		}
	}
	return out
}

// record turns a job's disk scans into the result to store: totals,
// volumes, findings, and the status with its incomplete reasons.
func record(job queue.Job, act activeSet, disks []diskScan, timedOut bool) *results.Scan {
	r := &results.Scan{JobID: job.ID, VM: job.VM, SigName: act.name, SigVersion: act.version, RulesID: act.rulesID,
		Incomplete: map[string]int64{}}
	for _, d := range job.Disks {
		r.Disks = append(r.Disks, resultDisk(d))
	}
	for _, d := range disks {
		for _, v := range d.report.Volumes {
			r.Files += v.Files
			r.Bytes += v.Bytes
			r.Cached += v.Cached
			rv := results.Volume{Disk: d.disk.Path, Volume: v.ID, FileSystem: v.FileSystem, Error: d.redact(v.Err),
				Files: v.Files, Bytes: v.Bytes, Cached: v.Cached, Skipped: maps.Clone(v.Skipped), ErrorsDropped: v.ErrorsDropped,
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
			for reason, n := range v.Skipped {
				if incompleteSkips[reason] && n > 0 {
					r.Incomplete[reason] += n
				}
			}
			if d.unread[v.ID] {
				r.Incomplete[IncompleteVolume]++
			}
		}
		for _, f := range d.report.Findings {
			for _, m := range f.Matches {
				r.Findings = append(r.Findings, results.Finding{Datastore: d.disk.Datastore, Disk: d.disk.Path, Volume: f.Volume,
					Path: f.Path, Size: f.Size, SHA256: f.SHA256, Namespace: m.Namespace, Rule: m.Rule,
					Tags: m.Tags, Meta: resultMeta(m.Meta)})
			}
		}
	}
	if timedOut {
		r.Incomplete[IncompleteTimeLimit] = 1
	}
	r.Status = results.StatusOf(len(r.Findings), r.Incomplete)
	return r
}

func resultDisk(d queue.Disk) results.Disk {
	return results.Disk{Datastore: d.Datastore, Path: d.Path, Format: d.Format, Layers: d.Layers}
}

func queueDisk(d results.Disk) queue.Disk {
	return queue.Disk{Datastore: d.Datastore, Path: d.Path, Format: d.Format, Layers: d.Layers}
}
