package queue_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
)

// openStore opens a real SQLite store in path (created if needed).
func openStore(t testing.TB, path string) (*sql.DB, *sqlite.Store) {
	t.Helper()
	db, err := sqlitedb.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := sqlite.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return db, s
}

// fakeClock is a settable clock for job times and aging.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// harness is a queue on a fresh database with its events recorded.
type harness struct {
	t      testing.TB
	path   string
	store  *sqlite.Store
	q      *queue.Queue
	cancel context.CancelFunc
	served chan error

	mu       sync.Mutex
	finished map[int64]queue.Job // terminal jobs, by id, from OnFinish
	dupes    []int64             // ids reported finished twice
}

func newHarness(t testing.TB, cfg queue.Config, run queue.Runner) *harness {
	t.Helper()
	return newHarnessAt(t, filepath.Join(t.TempDir(), "queue.db"), cfg, run)
}

func newHarnessAt(t testing.TB, path string, cfg queue.Config, run queue.Runner) *harness {
	t.Helper()
	h := &harness{t: t, path: path, finished: map[int64]queue.Job{}}
	_, h.store = openStore(t, path)
	user := cfg.OnFinish
	cfg.OnFinish = func(j queue.Job) {
		h.mu.Lock()
		if _, ok := h.finished[j.ID]; ok {
			h.dupes = append(h.dupes, j.ID)
		}
		h.finished[j.ID] = j
		h.mu.Unlock()
		if user != nil {
			user(j)
		}
	}
	q, err := queue.New(context.Background(), h.store, run, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.q = q
	return h
}

// serve runs Serve until the test ends (or stop is called).
func (h *harness) serve() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.served = make(chan error, 1)
	go func() { h.served <- h.q.Serve(ctx) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	if err := <-h.served; err != nil {
		h.t.Errorf("Serve: %v", err)
	}
}

func (h *harness) enqueue(r queue.Request) queue.Job {
	h.t.Helper()
	j, err := h.q.Enqueue(context.Background(), r)
	if err != nil {
		h.t.Fatalf("Enqueue %+v: %v", r, err)
	}
	return j
}

func (h *harness) job(id int64) queue.Job {
	h.t.Helper()
	j, err := h.q.Job(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

// waitFinished waits until every id has reached a terminal state. The bound
// is generous: it only catches a hang, it does not time the queue.
func (h *harness) waitFinished(ids ...int64) {
	h.t.Helper()
	start, dumped := time.Now(), false
	waitFor(h.t, "jobs to finish", func() bool {
		if time.Since(start) > 55*time.Second && !dumped {
			dumped = true
			h.t.Logf("still waiting: %+v", h.q.Metrics())
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, id := range ids {
			if _, ok := h.finished[id]; !ok {
				return false
			}
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.dupes) > 0 {
		h.t.Fatalf("jobs reported finished twice: %v", h.dupes)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func disk(ds string, n int) queue.Disk {
	return queue.Disk{Path: "/snap/" + ds + "/" + string(rune('a'+n)) + ".qcow2", Datastore: ds}
}

func ok(context.Context, queue.Job, queue.Wrap) error { return nil }

// prevHolder is the lease a test's "previous process" of the appliance
// ("local", the default) ran jobs under: a queue started on the store
// reaps it at once.
const prevHolder = "local/previous"

// apply1 applies one transition as prevHolder (registered on first use),
// fenced to the job's current run, and returns its result as an error.
func apply1(ctx context.Context, s queue.Store, t queue.Transition) (queue.Job, error) {
	_ = s.Heartbeat(ctx, prevHolder, "local", time.Hour) // refused once reaped; the fence then refuses too
	if t.To == queue.Running && t.Holder == "" {
		t.Holder = prevHolder
		t.Slots = map[string]int{}
		if j, err := s.Get(ctx, t.ID); err == nil {
			for _, ds := range j.Datastores() {
				t.Slots[ds] = 100
			}
		}
	}
	if t.From == queue.Running && t.Holder == "" {
		j, err := s.Get(ctx, t.ID)
		if err != nil {
			return queue.Job{}, err
		}
		t.Holder, t.Epoch = j.Holder, j.Epoch
	}
	res, err := s.Apply(ctx, []queue.Transition{t})
	if err != nil {
		return queue.Job{}, err
	}
	return res[0].Job, res[0].Err
}
