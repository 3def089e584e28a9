package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// TestWaiting puts one queued job in each situation and checks the reason
// Waiting gives it, and that the list is in rank order.
func TestWaiting(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
		switch j.VM {
		case "flaky":
			return errors.New("read: connection reset") // transient: retried after the backoff
		case "hold":
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	}
	h := newHarness(t, queue.Config{MaxScans: 1, BackoffBase: time.Hour, BackoffMax: time.Hour}, run)
	ctx := context.Background()
	if err := h.q.SetBudget(ctx, "A", queue.Budget{MaxScans: 1}); err != nil {
		t.Fatal(err)
	}
	if err := h.q.Pause(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	before := h.enqueue(queue.Request{VM: "early", Disks: []queue.Disk{disk("C", 0)}})
	if w := h.q.Waiting(); len(w) != 1 || w[0].Reason != queue.WaitNotServing {
		t.Fatalf("before Serve: %+v", w)
	}
	h.serve()
	h.waitFinished(before.ID)

	flaky := h.enqueue(queue.Request{VM: "flaky", Disks: []queue.Disk{disk("C", 1)}})
	waitFor(t, "the flaky job to be retried later", func() bool { return h.job(flaky.ID).Attempts == 1 && h.job(flaky.ID).State == queue.Queued })
	hold := h.enqueue(queue.Request{VM: "hold", Disks: []queue.Disk{disk("A", 0)}})
	waitFor(t, "the holding job to run", func() bool { return h.job(hold.ID).State == queue.Running })

	full := h.enqueue(queue.Request{VM: "full", Disks: []queue.Disk{disk("A", 1)}, Class: queue.OnDemand})
	paused := h.enqueue(queue.Request{VM: "paused", Disks: []queue.Disk{disk("B", 0)}})
	busy := h.enqueue(queue.Request{VM: "hold", Disks: []queue.Disk{disk("C", 2)}})
	later := h.enqueue(queue.Request{VM: "later", Disks: []queue.Disk{disk("C", 3)}, NotBefore: time.Now().Add(time.Hour)})
	slots := h.enqueue(queue.Request{VM: "slots", Disks: []queue.Disk{disk("C", 4)}, Class: queue.Rescan})

	want := map[int64]queue.WaitReason{flaky.ID: queue.WaitBackoff, full.ID: queue.WaitDatastoreFull, paused.ID: queue.WaitPaused,
		busy.ID: queue.WaitVMBusy, later.ID: queue.WaitNotBefore, slots.ID: queue.WaitSlots}
	w := h.q.Waiting()
	if len(w) != len(want) {
		t.Fatalf("%d waiting, want %d: %+v", len(w), len(want), w)
	}
	pos := map[int64]int{}
	for i, j := range w {
		pos[j.Job.ID] = j.Position
		if j.Position != i+1 {
			t.Errorf("entry %d has position %d", i, j.Position)
		}
		if j.Reason != want[j.Job.ID] {
			t.Errorf("job %d (%s): reason %s (%s), want %s", j.Job.ID, j.Job.VM, j.Reason, j.Detail, want[j.Job.ID])
		}
		switch j.Reason {
		case queue.WaitDatastoreFull:
			if j.Detail != "A: 1 of 1 scans" {
				t.Errorf("datastore_full detail %q", j.Detail)
			}
		case queue.WaitPaused:
			if j.Detail != "B" {
				t.Errorf("paused detail %q", j.Detail)
			}
		case queue.WaitSlots:
			if j.Detail != "1 of 1 scans" {
				t.Errorf("all_slots_busy detail %q", j.Detail)
			}
		case queue.WaitBackoff, queue.WaitNotBefore:
			if d := time.Until(j.Until); d < 10*time.Minute || d > time.Hour+time.Minute { // backoff is jittered
				t.Errorf("%s until %s", j.Reason, j.Until)
			}
		}
	}
	// On-demand outranks scheduled work enqueued at about the same time,
	// which outranks a rescan.
	if !(pos[full.ID] < pos[paused.ID] && pos[paused.ID] < pos[slots.ID]) {
		t.Errorf("positions %v: want on_demand %d before scheduled %d before rescan %d", pos, full.ID, paused.ID, slots.ID)
	}
}
