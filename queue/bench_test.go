package queue_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
)

// BenchmarkEnqueueToStart measures the scheduler overhead per job: from
// Enqueue being called to the runner being called, with free budget.
// With synchronous=FULL (what sqlitedb.Open sets) it includes two commits
// flushed to disk: the enqueue and the running transition. synchronous=OFF
// is the same SQLite without the flush, leaving the scheduler's and
// SQLite's own work. The backlog variants keep queued jobs on a paused
// datastore, which every dispatch pass still looks at.
func BenchmarkEnqueueToStart(b *testing.B) {
	for _, tc := range []struct {
		backlog int
		sync    string
	}{{0, "FULL"}, {10000, "FULL"}, {0, "OFF"}, {10000, "OFF"}} {
		b.Run(fmt.Sprintf("backlog=%d/synchronous=%s", tc.backlog, tc.sync), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			path := filepath.Join(b.TempDir(), "q.db")
			open := sqlitedb.Open
			if tc.sync == "OFF" {
				open = sqlitedb.OpenUnsynced
			}
			db, err := open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			store, err := sqlite.New(ctx, db)
			if err != nil {
				b.Fatal(err)
			}
			started := make(chan time.Time, 1)
			run := func(context.Context, queue.Job, queue.Wrap) error {
				started <- time.Now()
				return nil
			}
			q, err := queue.New(ctx, store, run, queue.Config{MaxScans: 64, DefaultBudget: queue.Budget{MaxScans: 64}})
			if err != nil {
				b.Fatal(err)
			}
			if tc.backlog > 0 {
				if err := q.Pause(ctx, "paused"); err != nil {
					b.Fatal(err)
				}
				reqs := make([]queue.Request, tc.backlog)
				for i := range reqs {
					reqs[i] = queue.Request{VM: fmt.Sprint("backlog", i), Disks: []queue.Disk{{Path: "/p", Datastore: "paused"}}}
				}
				if _, err := q.EnqueueBatch(ctx, reqs); err != nil {
					b.Fatal(err)
				}
			}
			served := make(chan error, 1)
			go func() { served <- q.Serve(ctx) }()
			defer func() { cancel(); <-served }()
			var total, enq time.Duration
			i := 0
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
			b.ReportMetric(float64(total.Microseconds())/float64(i), "µs-enqueue-to-start")
			b.ReportMetric(float64(enq.Microseconds())/float64(i), "µs-enqueue-commit")
		})
	}
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
