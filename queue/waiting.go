package queue

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// WaitReason says why a queued job has not started.
type WaitReason string

// The reasons, in the order Waiting checks them: the first that applies
// is the one given.
const (
	// WaitNotServing: the queue is not running jobs (Serve has not been
	// called: the appliance waits for a signature set).
	WaitNotServing WaitReason = "not_serving"
	// WaitDraining: the queue is shutting down and starts nothing.
	WaitDraining WaitReason = "draining"
	// WaitBackoff: a run failed and the retry waits (Until).
	WaitBackoff WaitReason = "backoff"
	// WaitNotBefore: the job asked not to start before Until (rescans are
	// spread this way).
	WaitNotBefore WaitReason = "not_before"
	// WaitPaused: one of its datastores is paused.
	WaitPaused WaitReason = "paused"
	// WaitVMBusy: another job of the same VM runs.
	WaitVMBusy WaitReason = "vm_running"
	// WaitDatastoreFull: one of its datastores runs as many scans as its
	// budget allows (Budget.MaxScans).
	WaitDatastoreFull WaitReason = "datastore_full"
	// WaitSlots: the queue runs Config.MaxScans jobs in all.
	WaitSlots WaitReason = "all_slots_busy"
	// WaitNext: nothing of its own holds it: it starts when the scheduler
	// next looks, unless jobs ahead of it take the slots (or a job that
	// has waited long holds one of its datastores for itself).
	WaitNext WaitReason = "next"
)

// WaitingJob is a queued job, its place in line and why it waits.
type WaitingJob struct {
	Job Job
	// Position is the job's rank among queued jobs, 1 first: the order of
	// the rank key (class and aging; see the package documentation).
	// When the global limit binds the scheduler may start a job on an
	// idle datastore before a better-ranked one on a busy datastore.
	Position int
	Reason   WaitReason
	// Detail says more: which datastores are paused or full ("ds-a: 2 of
	// 2 scans"), how many slots are taken.
	Detail string
	// Until is when the reason ends, where that is known (backoff,
	// not_before).
	Until time.Time
}

// Waiting returns the queued jobs in rank order, each with why it has not
// started, as the scheduler sees it now. It is safe for concurrent use and
// reads no store.
func (q *Queue) Waiting() []WaitingJob {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.cfg.Now()
	entries := make([]*entry, 0, len(q.queued))
	for _, e := range q.queued {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b *entry) int {
		if c := a.key.Compare(b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	out := make([]WaitingJob, len(entries))
	for i, e := range entries {
		w := WaitingJob{Job: e.Job, Position: i + 1}
		w.Job.Disks = slices.Clone(e.Disks)
		var paused, full []string
		for _, d := range e.ds {
			if d.cfg.Paused {
				paused = append(paused, d.name)
			}
			if m := d.cfg.Budget.maxScans(); d.running >= m {
				full = append(full, fmt.Sprintf("%s: %d of %d scans", d.name, d.running, m))
			}
		}
		switch {
		case !q.serving:
			w.Reason = WaitNotServing
		case q.draining:
			w.Reason = WaitDraining
		case e.RetryAt.After(now) && !e.RetryAt.Before(e.NotBefore):
			w.Reason, w.Until = WaitBackoff, e.RetryAt
			w.Detail = fmt.Sprintf("after attempt %d: %s", e.Attempts, e.Error)
		case e.readyAt().After(now):
			w.Reason, w.Until = WaitNotBefore, e.readyAt()
		case len(paused) > 0:
			w.Reason, w.Detail = WaitPaused, strings.Join(paused, ", ")
		case q.runningVM[e.VM] > 0:
			w.Reason = WaitVMBusy
		case len(full) > 0:
			w.Reason, w.Detail = WaitDatastoreFull, strings.Join(full, ", ")
		case q.active >= q.cfg.MaxScans:
			w.Reason, w.Detail = WaitSlots, fmt.Sprintf("%d of %d scans", q.active, q.cfg.MaxScans)
		default:
			w.Reason = WaitNext
		}
		out[i] = w
	}
	return out
}

// Slots returns how many jobs run now and how many may run at once
// (Config.MaxScans).
func (q *Queue) Slots() (running, limit int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.active, q.cfg.MaxScans
}
