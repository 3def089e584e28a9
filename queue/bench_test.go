package queue_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/queue/postgres"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
)

// benchStores opens a fresh store of each kind for a benchmark:
// SQLite flushed to disk (what the appliance runs), SQLite unflushed
// (the scheduler's and SQLite's own work), and PostgreSQL on loopback
// (fsync on, as in production).
func benchStores(parent *testing.B) map[string]func(b *testing.B) queue.Store {
	var srv *pgtest.Server
	return map[string]func(b *testing.B) queue.Store{
		"sqlite-sync":   func(b *testing.B) queue.Store { return openSQLiteStore(b, sqlitedb.Open) },
		"sqlite-nosync": func(b *testing.B) queue.Store { return openSQLiteStore(b, sqlitedb.OpenUnsynced) },
		"postgres": func(b *testing.B) queue.Store {
			if srv == nil {
				// One server for every sub-benchmark: it stops with the parent.
				srv = pgtest.StartOptions(parent, pgtest.Options{Fsync: true})
			}
			pool, err := pgxpool.New(context.Background(), srv.NewDatabase(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(pool.Close)
			s, err := postgres.New(context.Background(), pool)
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
}

func openSQLiteStore(b *testing.B, open func(string) (*sql.DB, error)) queue.Store {
	db, err := open(filepath.Join(b.TempDir(), "q.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	s, err := sqlite.New(context.Background(), db)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkEnqueueToStart measures the scheduler overhead per job: from
// Enqueue being called to the runner being called, with free budget, on
// each store. It includes two commits: the enqueue and the running
// transition. The backlog variants keep 10,000 queued jobs the scheduler
// cannot start, on a paused datastore or on a full one (its one slot held
// by a job that never ends): the time and the scheduler's CPU per job
// (cpu-µs/job, the process's CPU time over the jobs) must not grow with
// them.
func BenchmarkEnqueueToStart(b *testing.B) {
	stores := benchStores(b)
	for _, kind := range []string{"sqlite-sync", "sqlite-nosync", "postgres"} {
		for _, backlog := range []string{"none", "paused", "full"} {
			b.Run(fmt.Sprintf("store=%s/backlog=%s", kind, backlog), func(b *testing.B) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				store := stores[kind](b)
				started := make(chan time.Time, 1)
				run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
					if j.VM == "blocker" {
						<-ctx.Done()
						return ctx.Err()
					}
					started <- time.Now()
					return nil
				}
				q, err := queue.New(ctx, store, run, queue.Config{MaxScans: 64, DefaultBudget: queue.Budget{MaxScans: 64}})
				if err != nil {
					b.Fatal(err)
				}
				served := make(chan error, 1)
				go func() { served <- q.Serve(ctx) }()
				defer func() { cancel(); <-served }()
				if backlog != "none" {
					if backlog == "paused" {
						if err := q.Pause(ctx, "backlog"); err != nil {
							b.Fatal(err)
						}
					} else {
						if err := q.SetBudget(ctx, "backlog", queue.Budget{MaxScans: 1}); err != nil {
							b.Fatal(err)
						}
						if _, err := q.Enqueue(ctx, queue.Request{VM: "blocker", Class: queue.OnDemand,
							Disks: []queue.Disk{{Path: "/p", Datastore: "backlog"}}}); err != nil {
							b.Fatal(err)
						}
						waitFor(b, "the blocker to start", func() bool { return len(q.Metrics().Running) == 1 })
					}
					reqs := make([]queue.Request, 10000)
					for i := range reqs {
						reqs[i] = queue.Request{VM: fmt.Sprint("backlog", i), Disks: []queue.Disk{{Path: "/p", Datastore: "backlog"}}}
					}
					if _, err := q.EnqueueBatch(ctx, reqs); err != nil {
						b.Fatal(err)
					}
				}
				var total, enq time.Duration
				i := 0
				cpu0 := cpuTime()
				for b.Loop() {
					t0 := time.Now()
					_, err := q.Enqueue(ctx, queue.Request{VM: fmt.Sprint("vm", i), Disks: []queue.Disk{{Path: "/d", Datastore: fmt.Sprint("ds", i%8)}}})
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					total += (<-started).Sub(t0)
					enq += t1.Sub(t0)
					i++
				}
				cpu := cpuTime() - cpu0
				b.ReportMetric(float64(total.Microseconds())/float64(i), "µs-enqueue-to-start")
				b.ReportMetric(float64(enq.Microseconds())/float64(i), "µs-enqueue-commit")
				b.ReportMetric(float64(cpu.Microseconds())/float64(i), "cpu-µs/job")
			})
		}
	}
}

// cpuTime is the CPU time this process used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStoreTransition measures one conditional transition commit
// (synchronous=FULL), the store's share of every start and finish.
func BenchmarkStoreTransition(b *testing.B) {
	_, s := openStore(b, filepath.Join(b.TempDir(), "q.db"))
	ctx := context.Background()
	jobs, err := s.Enqueue(ctx, []queue.Request{{VM: "vm", Disks: []queue.Disk{disk("A", 0)}}}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	from, to := queue.Queued, queue.Running
	for b.Loop() {
		if _, err := apply1(ctx, s, queue.Transition{ID: jobs[0].ID, From: from, To: to, At: time.Now()}); err != nil {
			b.Fatal(err)
		}
		from, to = to, from
	}
}
