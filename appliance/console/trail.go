package console

import (
	"context"
	"sync"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
)

// Trail keeps each datastore's reads over the last span at a fine
// resolution, in memory, for the console's charts; the appliance's
// database keeps the coarse history (results.History) that looks further
// back. Its methods are safe for concurrent use.
type Trail struct {
	mu    sync.Mutex
	span  time.Duration
	ring  map[string][]results.IOSample // by datastore, oldest first
	last  map[string]queue.DatastoreMetrics
	lastT time.Time
}

// NewTrail keeps samples for span (default one hour).
func NewTrail(span time.Duration) *Trail {
	if span <= 0 {
		span = time.Hour
	}
	return &Trail{span: span, ring: map[string][]results.IOSample{}, last: map[string]queue.DatastoreMetrics{}}
}

// Record adds one sample per datastore: what each read since the last
// call (the first call only sets the starting point).
func (t *Trail) Record(m queue.Metrics) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := m.At
	if now.IsZero() {
		now = time.Now()
	}
	first := t.lastT.IsZero()
	for _, d := range m.Datastores {
		prev, seen := t.last[d.Name]
		t.last[d.Name] = d
		if first || !seen || !now.After(t.lastT) {
			continue
		}
		s := results.IOSample{Datastore: d.Name, At: now.UTC(), Interval: now.Sub(t.lastT),
			BytesRead: max(d.BytesRead-prev.BytesRead, 0), ReadOps: max(d.ReadOps-prev.ReadOps, 0),
			BudgetBytesPerSec: d.Budget.BytesPerSec, BudgetOpsPerSec: d.Budget.OpsPerSec, Running: d.Running}
		r := append(t.ring[d.Name], s)
		cut := 0
		for cut < len(r) && now.Sub(r[cut].At) > t.span {
			cut++
		}
		t.ring[d.Name] = r[cut:]
	}
	t.lastT = now
}

// Since returns a datastore's samples taken at or after since, oldest
// first.
func (t *Trail) Since(datastore string, since time.Time) []results.IOSample {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.ring[datastore]
	i := 0
	for i < len(r) && r[i].At.Before(since) {
		i++
	}
	return append([]results.IOSample(nil), r[i:]...)
}

// Start is the time of the oldest sample kept (zero when none).
func (t *Trail) Start(datastore string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.ring[datastore]; len(r) > 0 {
		return r[0].At.Add(-r[0].Interval)
	}
	return time.Time{}
}

// Serve records metrics() every interval until ctx ends.
func (t *Trail) Serve(ctx context.Context, metrics func() queue.Metrics, every time.Duration) error {
	tk := time.NewTicker(every)
	defer tk.Stop()
	t.Record(metrics())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
			t.Record(metrics())
		}
	}
}
