package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/postgres"
	"github.com/snapscan/snapscan/queue/sqlite"
)

// errCut is what a cut store answers.
var errCut = errors.New("fleet test: network cut")

// cutStore is a real store whose connection the test can cut: while cut,
// every call fails as a lost network would make it fail, before reaching
// the database.
type cutStore struct {
	queue.Store
	cut atomic.Bool
}

func (c *cutStore) err() error {
	if c.cut.Load() {
		return errCut
	}
	return nil
}

func (c *cutStore) Enqueue(ctx context.Context, r []queue.Request, now time.Time) ([]queue.Job, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Enqueue(ctx, r, now)
}
func (c *cutStore) Apply(ctx context.Context, ts []queue.Transition) ([]queue.Result, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Apply(ctx, ts)
}
func (c *cutStore) Cancel(ctx context.Context, id int64, now time.Time) (queue.State, error) {
	if err := c.err(); err != nil {
		return "", err
	}
	return c.Store.Cancel(ctx, id, now)
}
func (c *cutStore) Queued(ctx context.Context) ([]queue.Job, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Queued(ctx)
}
func (c *cutStore) Running(ctx context.Context) ([]queue.Job, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Running(ctx)
}
func (c *cutStore) Datastores(ctx context.Context) (map[string]queue.DatastoreConfig, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Datastores(ctx)
}
func (c *cutStore) Heartbeat(ctx context.Context, holder, appliance string, ttl time.Duration) error {
	if err := c.err(); err != nil {
		return err
	}
	return c.Store.Heartbeat(ctx, holder, appliance, ttl)
}
func (c *cutStore) Reap(ctx context.Context, self string) ([]queue.Job, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Reap(ctx, self)
}
func (c *cutStore) Changes(ctx context.Context, after int64, limit int) ([]queue.Job, int64, error) {
	if err := c.err(); err != nil {
		return nil, after, err
	}
	return c.Store.Changes(ctx, after, limit)
}
func (c *cutStore) Shares(ctx context.Context, holder string, reqs []queue.ShareRequest) ([]queue.Share, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Shares(ctx, holder, reqs)
}

// fleetRun is one run of several queues on one store, with what the
// runners saw.
type fleetRun struct {
	mu        sync.Mutex
	reads     map[string][]simRead // per datastore, over every queue
	finished  map[int64][]queue.Job
	completed map[int64]int // runner returned nil
	running   map[string]int
	maxRun    map[string]int
}

// fleetCase is the scenario.
type fleetCase struct {
	queues, vms int
	budget      queue.Budget // of each of the datastores
	datastores  int
	diskSize    int
	// fault, if set, runs while the jobs do; cut(i, true) cuts queue i
	// from the database, cut(i, false) mends it.
	fault func(t *testing.T, cut func(i int, on bool))
}

// runFleet runs c with queues on stores made by open (one handle each, on
// one database) and checks that every job completed exactly once, that
// no datastore ran more scans than its budget allows at any moment over
// the whole fleet, and that no second of summed reads exceeded its byte
// budget by more than the buckets' bursts.
//
// open returns queue i's handle on the database and a function that cuts
// it off (true) and mends it (false).
func runFleet(t *testing.T, open func(t *testing.T, i int) (queue.Store, func(bool)), c fleetCase) {
	fr := &fleetRun{reads: map[string][]simRead{}, finished: map[int64][]queue.Job{}, completed: map[int64]int{},
		running: map[string]int{}, maxRun: map[string]int{}}
	data := simPool[:c.diskSize]
	run := func(ctx context.Context, j queue.Job, wrap queue.Wrap) error {
		ds := j.Disks[0].Datastore
		fr.mu.Lock()
		fr.running[ds]++
		fr.maxRun[ds] = max(fr.maxRun[ds], fr.running[ds])
		fr.mu.Unlock()
		defer func() { fr.mu.Lock(); fr.running[ds]--; fr.mu.Unlock() }()
		r := wrap(ds, bytes.NewReader(data))
		buf := make([]byte, 32<<10)
		for off := 0; off < len(data); off += len(buf) {
			n, err := r.ReadAt(buf, int64(off))
			if err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], data[off:off+n]) {
				return queue.Permanent(fmt.Errorf("bytes at %d differ", off))
			}
			fr.mu.Lock()
			fr.reads[ds] = append(fr.reads[ds], simRead{time.Now(), n})
			fr.mu.Unlock()
		}
		fr.mu.Lock()
		fr.completed[j.ID]++
		fr.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stores []queue.Store
	var cuts []func(bool)
	var qs []*queue.Queue
	for i := range c.queues {
		cs, cut := open(t, i)
		stores, cuts = append(stores, cs), append(cuts, cut)
		q, err := queue.New(ctx, cs, run, queue.Config{
			Appliance: fmt.Sprint("appliance-", i), MaxScans: 4, LeaseTTL: 2 * time.Second, SyncInterval: 100 * time.Millisecond,
			BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond, MaxAttempts: 10,
			OnFinish: func(j queue.Job) { fr.mu.Lock(); fr.finished[j.ID] = append(fr.finished[j.ID], j); fr.mu.Unlock() },
		})
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	// Every appliance sets the budgets from its configuration at start.
	for _, q := range qs {
		for d := range c.datastores {
			if err := q.SetBudget(ctx, fmt.Sprint("ds", d), c.budget); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	for _, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := q.Serve(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	start := time.Now()
	var ids []int64
	for v := range c.vms {
		j, err := qs[v%len(qs)].Enqueue(ctx, queue.Request{VM: fmt.Sprint("vm", v),
			Disks: []queue.Disk{{Path: fmt.Sprint("/d/", v), Datastore: fmt.Sprint("ds", v%c.datastores)}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	if c.fault != nil {
		c.fault(t, func(i int, on bool) { cuts[i](on) })
	}
	waitFor(t, "every job to finish", func() bool {
		fr.mu.Lock()
		defer fr.mu.Unlock()
		return len(fr.finished) == len(ids)
	})
	makespan := time.Since(start)
	cancel()
	wg.Wait()

	fr.mu.Lock()
	defer fr.mu.Unlock()
	reruns := 0
	for _, id := range ids {
		if f := fr.finished[id]; len(f) != 1 || f[0].State != queue.Done {
			t.Errorf("job %d reported finished %d times: %+v", id, len(f), f)
		}
		if fr.completed[id] == 0 {
			t.Errorf("job %d done but no runner completed it", id)
		}
		reruns += fr.completed[id] - 1
		j, err := stores[0].Get(context.Background(), id)
		if err != nil || j.State != queue.Done {
			t.Errorf("job %d stored as %s (%v)", id, j.State, err)
		}
	}
	for ds, n := range fr.maxRun {
		if n > c.budget.MaxScansOrOne() {
			t.Errorf("%s: %d scans at once over the fleet, budget %d", ds, n, c.budget.MaxScansOrOne())
		}
	}
	burst, _ := c.budget.Burst()
	var worst, worstRaw float64
	for ds, reads := range fr.reads {
		slices.SortFunc(reads, func(a, b simRead) int { return a.at.Compare(b.at) })
		var wb float64
		j := 0
		for i := range reads {
			for ; j < len(reads) && reads[j].at.Sub(reads[i].at) < time.Second; j++ {
				wb += float64(reads[j].n)
			}
			raw := wb / c.budget.BytesPerSec
			// Every queue's bucket may hold a burst, but the bursts are
			// cut from the shares, which add up to the budget: one
			// burst in all, plus the floor each bucket keeps.
			after := (wb - float64(burst) - float64(c.queues*4096)) / c.budget.BytesPerSec
			if after > 1.05 {
				t.Errorf("%s: %.0f bytes in the second from %v: %.3f× budget (%.3f× after the bursts)", ds, wb,
					reads[i].at.Sub(start).Round(time.Millisecond), raw, after)
			}
			worst, worstRaw = max(worst, after), max(worstRaw, raw)
			wb -= float64(reads[i].n)
		}
	}
	var total float64
	for _, reads := range fr.reads {
		for _, r := range reads {
			total += float64(r.n)
		}
	}
	bound := time.Duration(float64(c.vms*c.diskSize) / float64(c.datastores) / c.budget.BytesPerSec * float64(time.Second))
	t.Logf("%d queues, %d jobs: makespan %v, lower bound %v (%.2f×); %d runs redone after a fault; worst second %.3f× budget raw, %.3f× after bursts; %.1f MiB read",
		c.queues, c.vms, makespan.Round(time.Millisecond), bound, makespan.Seconds()/bound.Seconds(), reruns, worstRaw, worst, total/(1<<20))
}

// cutOne cuts one queue's store for longer than its lease, then mends it:
// its runs stop, the others reap its lease and run its jobs, and it comes
// back under a new lease.
func cutOne(t *testing.T, cut func(int, bool)) {
	time.Sleep(700 * time.Millisecond)
	cut(1, true)
	time.Sleep(3500 * time.Millisecond)
	cut(1, false)
}

var fleetBase = fleetCase{queues: 3, vms: 36, datastores: 3, diskSize: 384 << 10,
	budget: queue.Budget{MaxScans: 2, BytesPerSec: 1 << 20}}

func TestFleetSQLite(t *testing.T) {
	// Processes on one host sharing the file; SQLite has no network to
	// cut, so the cut is made in front of the store.
	path := filepath.Join(t.TempDir(), "fleet.db")
	open := func(t *testing.T, _ int) (queue.Store, func(bool)) {
		db, err := sqlitedb.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		s, err := sqlite.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		cs := &cutStore{Store: s}
		return cs, cs.cut.Store
	}
	c := fleetBase
	c.fault = cutOne
	runFleet(t, open, c)
}

func TestFleetPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	srv := pgtest.Start(t)
	for _, tc := range []struct {
		name  string
		fault func(t *testing.T, cut func(int, bool))
	}{
		{"network cut", cutOne},
		{"server restart", func(t *testing.T, _ func(int, bool)) {
			time.Sleep(800 * time.Millisecond)
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"failover", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if raceEnabled && tc.name != "network cut" {
				t.Skip("under -race, the network cut covers the same code; the suite's time is kept for the rest")
			}
			if tc.name == "failover" {
				testFailover(t)
				return
			}
			dsn := srv.NewDatabase(t)
			// Each queue reaches the server through a proxy of its own:
			// a cut closes its connections and refuses new ones, as a
			// network failure would.
			open := func(t *testing.T, _ int) (queue.Store, func(bool)) {
				p := pgtest.NewProxy(t, srv.Port())
				pool, err := pgxpool.New(context.Background(), p.DSN(srv, dsn))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(pool.Close)
				s, err := postgres.New(context.Background(), pool)
				if err != nil {
					t.Fatal(err)
				}
				return s, func(on bool) {
					if on {
						p.Cut()
					} else {
						p.Mend()
					}
				}
			}
			c := fleetBase
			c.fault = tc.fault
			runFleet(t, open, c)
		})
	}
}

// testFailover runs the fleet on a primary with a synchronous standby,
// through a connection string naming both with
// target_session_attrs=read-write; the primary stops and the standby is
// promoted while the jobs run: the queues follow it, and every job is
// done exactly once.
func testFailover(t *testing.T) {
	primary := pgtest.Start(t)
	dsn := primary.NewDatabase(t) // before the standby copies the cluster
	standby := primary.StartStandby(t)
	both := strings.Replace(dsn, fmt.Sprintf("127.0.0.1:%d", primary.Port()),
		fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", primary.Port(), standby.Port()), 1) + "&target_session_attrs=read-write"
	open := func(t *testing.T, _ int) (queue.Store, func(bool)) {
		pool, err := pgxpool.New(context.Background(), both)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		s, err := postgres.New(context.Background(), pool)
		if err != nil {
			t.Fatal(err)
		}
		return s, nil
	}
	c := fleetBase
	c.fault = func(t *testing.T, _ func(int, bool)) {
		time.Sleep(800 * time.Millisecond)
		if err := primary.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := standby.Promote(); err != nil {
			t.Fatal(err)
		}
	}
	runFleet(t, open, c)
}
