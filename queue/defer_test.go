package queue_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// TestDefer: a run that says "not now, at T" (queue.Defer) puts its job
// back due at T without counting the run, however often it happens, and
// the due time is in the store: a restarted queue does not start the
// job before it.
func TestDefer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	var runs atomic.Int32
	// Deferred more times than MaxAttempts allows runs: none is counted.
	defers := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
		if runs.Add(1) <= 5 {
			return queue.Defer(errors.New("outside the freeze window"), time.Now().Add(10*time.Millisecond))
		}
		return nil
	}
	h := newHarnessAt(t, path, queue.Config{MaxAttempts: 2, BackoffBase: time.Hour, BackoffMax: time.Hour}, defers)
	j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
	h.serve()
	h.waitFinished(j.ID)
	if got := h.job(j.ID); got.State != queue.Done || got.Attempts != 1 || runs.Load() != 6 {
		t.Fatalf("job %s after %d counted attempts and %d runs; want done, 1, 6", got.State, got.Attempts, runs.Load())
	}
	h.stop()

	// A job deferred far ahead is still waiting after a restart.
	later := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	var first atomic.Bool
	once := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
		if first.CompareAndSwap(false, true) {
			return queue.Defer(errors.New("group busy"), later)
		}
		t.Errorf("job %d started again before its due time", j.ID)
		return nil
	}
	path2 := filepath.Join(t.TempDir(), "queue.db")
	h2 := newHarnessAt(t, path2, queue.Config{}, once)
	k := h2.enqueue(queue.Request{VM: "vm2", Disks: []queue.Disk{disk("A", 0)}})
	h2.serve()
	waitFor(t, "the deferral", func() bool {
		g := h2.job(k.ID)
		return first.Load() && g.State == queue.Queued && !g.RetryAt.IsZero()
	})
	h2.stop()
	h3 := newHarnessAt(t, path2, queue.Config{}, once)
	h3.serve()
	time.Sleep(300 * time.Millisecond)
	g := h3.job(k.ID)
	if g.State != queue.Queued || !g.RetryAt.Equal(later) || g.Attempts != 0 || g.Error != "group busy" {
		t.Fatalf("after a restart: %s, retry at %v (want %v), %d attempts, error %q", g.State, g.RetryAt, later, g.Attempts, g.Error)
	}
	if until, ok := queue.IsDeferred(queue.Defer(errors.New("x"), later)); !ok || !until.Equal(later) || queue.Defer(nil, later) != nil {
		t.Fatal("IsDeferred/Defer")
	}
}
