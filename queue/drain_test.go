package queue_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// TestDrain: Drain starts nothing more, lets a running job finish within
// the grace period, and a job still running when it ends goes back to the
// queue when Serve stops, without the interrupted run counting as an
// attempt; after a restart it runs once more and completes.
func TestDrain(t *testing.T) {
	tests := []struct {
		name         string
		failFirst    bool // the first run fails transiently: the drained run is the second
		finish       bool // the running job returns within the grace period
		wantDrainErr bool
		wantState    queue.State // of the running job once Serve stopped
		wantAttempts int
	}{
		{"finishes within grace", false, true, false, queue.Done, 1},
		{"outlives grace", false, false, true, queue.Queued, 0},
		{"retried, then outlives grace", true, false, true, queue.Queued, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			started := make(chan struct{}, 1)
			release := make(chan struct{})
			var mu sync.Mutex
			runs := map[string]int{}
			run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
				mu.Lock()
				runs[j.VM]++
				n := runs[j.VM]
				mu.Unlock()
				if tt.failFirst && n == 1 {
					return errors.New("transient")
				}
				if j.VM != "vm" {
					return nil // started while draining: the checks below fail
				}
				started <- struct{}{}
				if tt.finish {
					<-release
					return nil
				}
				<-ctx.Done()
				return ctx.Err()
			}
			// One scan at a time: "other" waits for the global slot, which
			// frees when "vm" ends; only the drain keeps it from starting.
			h := newHarness(t, queue.Config{MaxScans: 1, BackoffBase: 10 * time.Millisecond, BackoffMax: 10 * time.Millisecond}, run)
			j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand})
			h.serve()
			<-started
			other := h.enqueue(queue.Request{VM: "other", Disks: []queue.Disk{disk("B", 0)}})

			grace := 300 * time.Millisecond
			if tt.finish {
				grace = 30 * time.Second // only bounds a hang
			}
			dctx, cancel := context.WithTimeout(ctx, grace)
			defer cancel()
			drained := make(chan error, 1)
			go func() { drained <- h.q.Drain(dctx) }()
			// Drain takes effect at once; wait for it before letting
			// the job end, so its slot frees while draining.
			waitFor(t, "drain to start", h.q.Draining)
			close(release)
			err := <-drained
			if (err != nil) != tt.wantDrainErr || (err != nil && !errors.Is(err, context.DeadlineExceeded)) {
				t.Fatalf("Drain = %v, want error: %v", err, tt.wantDrainErr)
			}
			// A late enqueue is accepted and stays queued.
			late := h.enqueue(queue.Request{VM: "late", Disks: []queue.Disk{disk("C", 0)}})
			time.Sleep(100 * time.Millisecond) // a wrongly started job would run by now
			h.stop()

			got := h.job(j.ID)
			if got.State != tt.wantState || got.Attempts != tt.wantAttempts {
				t.Errorf("drained job: %s after %d attempts (%q), want %s after %d", got.State, got.Attempts, got.Error, tt.wantState, tt.wantAttempts)
			}
			for _, id := range []int64{other.ID, late.ID} {
				if o := h.job(id); o.State != queue.Queued || o.Attempts != 0 {
					t.Errorf("job %d (%s) %s after %d attempts: started while draining", id, o.VM, o.State, o.Attempts)
				}
			}
			mu.Lock()
			if runs["other"]+runs["late"] != 0 {
				t.Errorf("runner called for jobs enqueued before or during the drain: %v", runs)
			}
			mu.Unlock()
			if t.Failed() {
				return
			}

			// Restart: what was left queued runs once and completes.
			var reran atomic.Int32
			h2 := newHarnessAt(t, h.path, queue.Config{}, func(context.Context, queue.Job, queue.Wrap) error { reran.Add(1); return nil })
			h2.serve()
			ids := []int64{other.ID, late.ID}
			if tt.wantState == queue.Queued {
				ids = append(ids, j.ID)
			}
			h2.waitFinished(ids...)
			if int(reran.Load()) != len(ids) {
				t.Errorf("%d runs after restart, want %d", reran.Load(), len(ids))
			}
			if got := h2.job(j.ID); got.State != queue.Done || got.Attempts != tt.wantAttempts+boolInt(tt.wantState == queue.Queued) {
				t.Errorf("after restart: %s after %d attempts", got.State, got.Attempts)
			}
		})
	}

	// Draining an idle queue, serving or not, returns at once.
	h := newHarness(t, queue.Config{}, ok)
	if err := h.q.Drain(context.Background()); err != nil {
		t.Errorf("Drain of an idle queue: %v", err)
	}
	h.serve()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.q.Drain(ctx); err != nil {
		t.Errorf("second Drain of an idle, serving queue: %v", err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
