package queue_test

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
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
)

// Environment of the crash child: the database and log files, and the
// round number (used to name the VMs it enqueues).
const (
	envCrashDir   = "SNAPSCAN_QUEUE_CRASH_DIR"
	envCrashRound = "SNAPSCAN_QUEUE_CRASH_ROUND"
	crashNewJobs  = 5 // jobs each child enqueues on start
	// In the crash-loop child (round "loop"), the poison VM's runner kills
	// its own process, as an image that gets the scanner OOM-killed would.
	crashLoopRound = "loop"
	crashLoopMax   = 5
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
	starts := openLog("starts.log")
	loop := round == crashLoopRound
	run := func(ctx context.Context, j queue.Job, wrap queue.Wrap) error {
		if _, err := fmt.Fprintf(starts, "%d %d\n", j.ID, j.Attempts); err != nil {
			return err
		}
		if loop && j.VM == "poison" {
			return syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
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
	cfg := queue.Config{
		MaxScans: 4, DefaultBudget: queue.Budget{MaxScans: 2, BytesPerSec: 1 << 20, OpsPerSec: 2000},
		MaxAttempts: 1000, BackoffBase: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		OnFinish: func(j queue.Job) { fmt.Fprintf(dones, "%d %s\n", j.ID, j.State) },
	}
	if loop {
		// One scan at a time, so the poison job's kills hit only itself:
		// a job running beside it is lost too, and counted.
		cfg.MaxAttempts, cfg.MaxScans = crashLoopMax, 1
	}
	db, err := sqlitedb.Open(filepath.Join(dir, "queue.db"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlite.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(context.Background(), store, run, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- q.Serve(ctx) }()
	for i := range crashNewJobs * boolInt(!loop) {
		j, err := q.Enqueue(ctx, queue.Request{VM: fmt.Sprintf("r%s-%d", round, i),
			Disks: []queue.Disk{{Path: "/x", Datastore: fmt.Sprint("ds", i%3)}}, Class: queue.Class(i % 3)})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(acks, "%d\n", j.ID)
	}
	for {
		m := q.Metrics()
		if m.Depth[queue.Rescan]+m.Depth[queue.Scheduled]+m.Depth[queue.OnDemand] == 0 && len(m.Running) == 0 {
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
	var reqs []queue.Request
	for i := range initial {
		r := queue.Request{VM: fmt.Sprintf("vm%03d", i), Class: queue.Class(i % 3), Disks: []queue.Disk{{Path: "/a", Datastore: fmt.Sprint("ds", i%3)}}}
		if i%10 == 0 {
			r.Disks = append(r.Disks, queue.Disk{Path: "/b", Datastore: fmt.Sprint("ds", (i+1)%3)})
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
		if state != string(queue.Done) {
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

// TestCrashLoop: a job whose run kills the process every time (SIGKILL, as
// the OOM killer would) is started exactly MaxAttempts times across
// restarts, then failed permanently as having crashed the scanner that
// many times; the other jobs complete. Issue 10.4: before, Recover put it
// back forever.
func TestCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process several times")
	}
	dir := t.TempDir()
	_, store := openStore(t, filepath.Join(dir, "queue.db"))
	reqs := []queue.Request{{VM: "poison", Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand}}
	for i := range 4 {
		reqs = append(reqs, queue.Request{VM: fmt.Sprint("ok", i), Disks: []queue.Disk{disk("B", i)}})
	}
	jobs, err := store.Enqueue(context.Background(), reqs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	poison := jobs[0].ID
	children, killed := 0, 0
	for ; children < 2*crashLoopMax; children++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashRound+"="+crashLoopRound)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
			killed++
			continue
		}
		if err != nil {
			t.Fatalf("child %d: %v\n%s", children, err, out.Bytes())
		}
		break // drained: the poison job is finished
	}
	f, err := os.Open(filepath.Join(dir, "starts.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var attempts []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var id int64
		var n int
		if _, err := fmt.Sscan(sc.Text(), &id, &n); err != nil {
			t.Fatalf("starts.log: %q: %v", sc.Text(), err)
		}
		if id == poison {
			attempts = append(attempts, n)
		}
	}
	if want := []int{1, 2, 3, 4, 5}; !slices.Equal(attempts, want) {
		t.Errorf("poison job started with attempts %v, want %v", attempts, want)
	}
	if killed != crashLoopMax {
		t.Errorf("%d children killed by the poison job, want %d", killed, crashLoopMax)
	}
	for _, j := range jobs {
		got, err := store.Get(context.Background(), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case j.ID == poison:
			if got.State != queue.Failed || got.Attempts != crashLoopMax || got.Crashes != crashLoopMax ||
				got.Error != queue.CrashError(crashLoopMax, crashLoopMax) {
				t.Errorf("poison job: %s, %d attempts, %d crashes, %q; want failed after %d crashes",
					got.State, got.Attempts, got.Crashes, got.Error, crashLoopMax)
			}
		case got.State != queue.Done:
			t.Errorf("job %d (%s): %s %q", got.ID, got.VM, got.State, got.Error)
		}
	}
	t.Logf("poison job: %d starts, %d children killed, %d children in all; final error %q",
		len(attempts), killed, children+1, queue.CrashError(crashLoopMax, crashLoopMax))
}
