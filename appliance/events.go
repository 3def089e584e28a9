package appliance

import (
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/signatures"
)

// The appliance's side of package events: what it tells a SIEM and when.
//
//   - finding: each finding of a stored scan (findings of a scan redone
//     after a crash are sent again: at least once per stored result);
//   - scan_incomplete: a stored scan that could not scan everything;
//   - scan_failed: a job that ended failed (it will not be retried);
//   - vm_unreadable: a job that ended failed because one of its disks
//     could not be opened or read (instead of scan_failed);
//   - signature_installed: a signature set version became active;
//   - signature_refused: a bundle was refused (its version when its
//     signature verified, and why).

// newEvents makes the event dispatcher from the configuration; log is the
// event log stream (nil: none).
func newEvents(cfg *Config, log io.Writer, logger *slog.Logger) (*events.Dispatcher, error) {
	d, err := events.New(events.Config{
		Appliance: cfg.Signatures.ApplianceID,
		Product:   events.Product{Version: moduleVersion()},
		Buffer:    cfg.Events.Buffer,
		Log:       log,
		LogFormat: cfg.Events.LogFormat,
		Webhook:   cfg.Events.Webhook,
		Syslog:    cfg.Events.Syslog,
		Logger:    logger,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return d, nil
}

// moduleVersion is the binary's module version ("(devel)" in a build
// from a work tree).
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// scanEvents are what a stored scan tells: its findings, and that it was
// incomplete when it could not scan everything.
func scanEvents(s *results.Scan, rows []results.Finding) []events.Event {
	out := make([]events.Event, 0, len(rows)+1)
	for _, f := range rows {
		ev := events.Event{Kind: events.KindFinding, ID: f.ID, JobID: f.JobID, VM: f.VM, Datastore: f.Datastore,
			Disk: f.Disk, Volume: f.Volume, Path: f.Path, Size: f.Size, SHA256: f.SHA256, Namespace: f.Namespace,
			Rule: f.Rule, Tags: f.Tags, SigName: s.SigName, SigVersion: f.SigVersion, FoundAt: f.FoundAt}
		for _, m := range f.Meta {
			ev.Meta = append(ev.Meta, events.Meta{Key: m.Key, Value: m.Value})
		}
		out = append(out, ev)
	}
	if len(s.Incomplete) > 0 {
		ev := events.Event{Kind: events.KindScanIncomplete, JobID: s.JobID, VM: s.VM, SigName: s.SigName,
			SigVersion: s.SigVersion, Reasons: s.Incomplete}
		if len(s.Disks) == 1 {
			ev.Datastore, ev.Disk = s.Disks[0].Datastore, s.Disks[0].Path
		}
		out = append(out, ev)
	}
	return out
}

// unreadableDisks remembers, per running job, the disk its last run could
// not open or read, until the job ends: a job that ends failed for that
// reason is reported as vm_unreadable, naming the disk.
type unreadableDisks struct{ m sync.Map } // job id -> queue.Disk

func (u *unreadableDisks) set(job int64, d queue.Disk) { u.m.Store(job, d) }
func (u *unreadableDisks) clear(job int64)             { u.m.Delete(job) }
func (u *unreadableDisks) take(job int64) (queue.Disk, bool) {
	v, ok := u.m.LoadAndDelete(job)
	if !ok {
		return queue.Disk{}, false
	}
	return v.(queue.Disk), true
}

// jobEvent is what a job that ended failed tells.
func (a *Appliance) jobEvent(j queue.Job) (events.Event, bool) {
	d, unreadable := a.unreadable.take(j.ID)
	if j.State != queue.Failed {
		return events.Event{}, false
	}
	ev := events.Event{Kind: events.KindScanFailed, JobID: j.ID, VM: j.VM, Error: j.Error}
	if unreadable {
		ev.Kind, ev.Datastore, ev.Disk = events.KindVMUnreadable, d.Datastore, d.Path
	} else if len(j.Disks) == 1 {
		ev.Datastore, ev.Disk = j.Disks[0].Datastore, j.Disks[0].Path
	}
	return ev, true
}

// refusalEvent is a signature bundle refused (pushed or pulled).
func refusalEvent(r signatures.Refusal) events.Event {
	return events.Event{Kind: events.KindSignatureRefused, SigName: r.Name, SigVersion: r.Version, Error: r.Error}
}

// signatureEvent is a signature update that became active.
func signatureEvent(u signatures.Update) events.Event {
	return events.Event{Kind: events.KindSignatureInstalled, SigName: u.Name, SigVersion: u.Version}
}
