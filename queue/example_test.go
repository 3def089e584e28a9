package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
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

	db, err := sqlitedb.Open(filepath.Join(dir, "snapscan.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := sqlite.New(ctx, db)
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

// A request for a VM that already has a queued job merges into it: the
// disks are the union, the higher class wins with its reason, and the job
// keeps its first enqueue time. Every Store applies this rule.
func ExampleJob_Merge() {
	j := queue.Job{VM: "db-07", Class: queue.Rescan, Reason: "signature update",
		Disks: []queue.Disk{{Path: "/vmfs/nl-02/db-07.vmdk", Datastore: "nl-02"}}}
	j.Merge(&queue.Request{VM: "db-07", Class: queue.OnDemand, Reason: "requested by an operator",
		Disks: []queue.Disk{{Path: "/vmfs/ssd-01/db-07_1.vmdk", Datastore: "ssd-01"}}})
	fmt.Println(j.Class, "-", j.Reason, "-", j.Datastores())
	// Output: on-demand - requested by an operator - [nl-02 ssd-01]
}

// A runner marks failures a retry cannot fix; anything else is retried
// with backoff.
func ExamplePermanent() {
	err := fmt.Errorf("disk 0: %w", queue.Permanent(errors.New("qcow2: bad magic")))
	fmt.Println(queue.IsPermanent(err), err)
	fmt.Println(queue.IsPermanent(errors.New("connection reset")))
	// Output:
	// true disk 0: qcow2: bad magic
	// false
}
