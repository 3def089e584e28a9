package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/snapscan/snapscan/queue"
)

// The appliance opens the shared database, gives the queue a runner that
// reads every disk through wrap, sets the budgets, and serves.
func Example() {
	dir, err := os.MkdirTemp("", "queue-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	db, err := queue.OpenSQLite(filepath.Join(dir, "snapscan.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := queue.NewSQLiteStore(ctx, db)
	if err != nil {
		log.Fatal(err)
	}

	finished := make(chan queue.Job)
	run := func(ctx context.Context, job queue.Job, wrap queue.Wrap) error {
		for _, d := range job.Disks {
			// A real runner opens d.Path as an image and scans its file
			// systems; every read goes through the wrapped reader.
			disk := wrap(d.Datastore, bytes.NewReader(make([]byte, 1<<20)))
			if _, err := io.Copy(io.Discard, io.NewSectionReader(disk, 0, 1<<20)); err != nil {
				return err // transient: retried with backoff
			}
		}
		return nil
	}
	q, err := queue.New(ctx, store, run, queue.Config{
		MaxScans: 8,
		OnFinish: func(j queue.Job) { finished <- j },
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := q.SetBudget(ctx, "ds-ssd", queue.Budget{MaxScans: 2, BytesPerSec: 200 << 20, OpsPerSec: 2000}); err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- q.Serve(ctx) }()

	job, err := q.Enqueue(ctx, queue.Request{
		VM:     "web-01",
		Disks:  []queue.Disk{{Path: "/vmfs/ds-ssd/web-01/web-01.vmdk", Datastore: "ds-ssd"}},
		Class:  queue.OnDemand,
		Reason: "requested by an operator",
	})
	if err != nil {
		log.Fatal(err)
	}
	j := <-finished
	fmt.Println(j.ID == job.ID, j.VM, j.State, j.Attempts)
	cancel() // the appliance cancels its root context to stop
	if err := <-served; err != nil {
		log.Fatal(err)
	}
	// Output: true web-01 done 1
}
