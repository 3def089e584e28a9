package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Environment of the crash child: the database and log files, and the
// round number (used to name the VMs it enqueues).
const (
	envCrashDir   = "SNAPSCAN_QUEUE_CRASH_DIR"
	envCrashRound = "SNAPSCAN_QUEUE_CRASH_ROUND"
	crashNewJobs  = 5 // jobs each child enqueues on start
)

// TestCrashChild is the process TestCrashRecovery kills. Run directly it
// does nothing. It enqueues a few jobs (logging each id once Enqueue has
// returned), then runs the queue until nothing is left, logging every
// runner completion and every reported finish.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		return // only run as TestCrashRecovery's child
	}
	round := os.Getenv(envCrashRound)
	openLog := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	// Appends are single write(2) calls: the page cache keeps them
	// through a SIGKILL, which is the crash being tested.
	runs, dones, acks := openLog("runs.log"), openLog("done.log"), openLog("acked.log")
	run := func(ctx context.Context, j Job, wrap Wrap) error {
		// Read the "disk" through the limiter, as a real runner would.
		r := wrap(j.Disks[0].Datastore, bytes.NewReader(make([]byte, 64<<10)))
		buf := make([]byte, 16<<10)
		for off := int64(0); off < 64<<10; off += int64(len(buf)) {
			if _, err := r.ReadAt(buf, off); err != nil {
				return err
			}
		}
		time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
		if j.ID%7 == 0 && j.Attempts == 1 {
			return errors.New("transient, first attempt")
		}
		_, err := fmt.Fprintf(runs, "%d\n", j.ID)
		return err
	}
	cfg := Config{
		MaxScans: 4, DefaultBudget: Budget{MaxScans: 2, BytesPerSec: 1 << 20, OpsPerSec: 2000},
		MaxAttempts: 1000, BackoffBase: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		OnFinish: func(j Job) { fmt.Fprintf(dones, "%d %s\n", j.ID, j.State) },
	}
	db, err := OpenSQLite(filepath.Join(dir, "queue.db"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := NewSQLiteStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := New(context.Background(), store, run, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- q.Serve(ctx) }()
	for i := range crashNewJobs {
		j, err := q.Enqueue(ctx, Request{VM: fmt.Sprintf("r%s-%d", round, i),
			Disks: []Disk{{Path: "/x", Datastore: fmt.Sprint("ds", i%3)}}, Class: Class(i % 3)})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(acks, "%d\n", j.ID)
	}
	for {
		m := q.Metrics()
		if m.Depth[Rescan]+m.Depth[Scheduled]+m.Depth[OnDemand] == 0 && len(m.Running) == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// TestCrashRecovery kills a child running the queue with SIGKILL at random
// points, many times, restarting it each time; at the end every job is done
// exactly once in the database, none is lost, none is reported twice.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process 21 times")
	}
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	// Jobs present before the first child starts.
	const initial = 300
	pdb, store := openStore(t, filepath.Join(dir, "queue.db"))
	var reqs []Request
	for i := range initial {
		r := Request{VM: fmt.Sprintf("vm%03d", i), Class: Class(i % 3), Disks: []Disk{{Path: "/a", Datastore: fmt.Sprint("ds", i%3)}}}
		if i%10 == 0 {
			r.Disks = append(r.Disks, Disk{Path: "/b", Datastore: fmt.Sprint("ds", (i+1)%3)})
		}
		reqs = append(reqs, r)
	}
	if _, err := store.Enqueue(context.Background(), reqs, time.Now()); err != nil {
		t.Fatal(err)
	}

	const rounds = 20
	killed, killedRunning, idleKills := 0, 0, 0
	for round := 0; round <= rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashRound+"="+strconv.Itoa(round))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if round == rounds {
			// Last round: let it drain the queue.
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("final child: %v\n%s", err, out.Bytes())
				}
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				<-done
				t.Fatalf("final child did not finish\n%s", out.Bytes())
			}
			break
		}
		time.Sleep(time.Duration(50+rng.IntN(450)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
			killed++
			var running, pending int
			if err := pdb.QueryRow(`SELECT count(*) FILTER (WHERE state = 'running'),
				count(*) FILTER (WHERE state != 'done') FROM queue_jobs`).Scan(&running, &pending); err != nil {
				t.Fatal(err)
			}
			killedRunning += running
			if pending == 0 {
				idleKills++
			}
		} else if err != nil {
			t.Fatalf("round %d: child: %v\n%s", round, err, out.Bytes())
		}
	}
	if killed-idleKills < rounds/2 {
		t.Errorf("only %d of %d children were killed with work left; the test proves little", killed-idleKills, rounds)
	}

	readIDs := func(name string) map[int64]int {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ids := map[int64]int{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var id int64
			if _, err := fmt.Sscan(sc.Text(), &id); err != nil {
				t.Fatalf("%s: %q: %v", name, sc.Text(), err)
			}
			ids[id]++
		}
		return ids
	}
	runs, dones, acked := readIDs("runs.log"), readIDs("done.log"), readIDs("acked.log")

	// The database: every job done, exactly the initial ones plus every
	// acknowledged enqueue.
	db, _ := openStore(t, filepath.Join(dir, "queue.db"))
	rows, err := db.Query("SELECT id, state, attempts FROM queue_jobs")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	inDB := map[int64]bool{}
	reruns := 0
	for rows.Next() {
		var id int64
		var state string
		var attempts int
		if err := rows.Scan(&id, &state, &attempts); err != nil {
			t.Fatal(err)
		}
		inDB[id] = true
		if state != string(Done) {
			t.Errorf("job %d is %s after the last child drained the queue", id, state)
		}
		if runs[id] == 0 {
			t.Errorf("job %d is done but its runner never completed", id)
		}
		reruns += runs[id] - 1
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id := range acked {
		if !inDB[id] {
			t.Errorf("acknowledged job %d is missing", id)
		}
	}
	if want := initial + (rounds+1)*crashNewJobs; len(inDB) > want || len(inDB) < initial+len(acked) {
		t.Errorf("%d jobs in the database, want between %d and %d", len(inDB), initial+len(acked), want)
	}
	for id, n := range dones {
		if n > 1 {
			t.Errorf("job %d reported finished %d times", id, n)
		}
	}
	t.Logf("%d children killed (%d with an empty queue), %d jobs left running by them", killed, idleKills, killedRunning)
	t.Logf("%d children killed, %d jobs, %d acknowledged enqueues, %d runner re-runs after crashes, %d finishes reported",
		killed, len(inDB), len(acked), reruns, len(dones))
}
