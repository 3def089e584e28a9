package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

func TestEnqueueInvalid(t *testing.T) {
	h := newHarness(t, queue.Config{}, ok)
	many := make([]queue.Disk, queue.MaxDisks+1)
	for i := range many {
		many[i] = disk("A", i)
	}
	for _, r := range []queue.Request{
		{Disks: []queue.Disk{disk("A", 0)}},
		{VM: "vm"},
		{VM: "vm", Disks: []queue.Disk{{Path: "x"}}},
		{VM: "vm", Disks: []queue.Disk{disk("A", 0)}, Class: 7},
		{VM: "vm", Disks: many},
		{VM: strings.Repeat("x", queue.MaxStringLen+1), Disks: []queue.Disk{disk("A", 0)}},
	} {
		if _, err := h.q.Enqueue(context.Background(), r); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("Enqueue(%.60v) = %v, want ErrInvalid", r, err)
		}
	}
	if err := h.q.SetBudget(context.Background(), "A", queue.Budget{BytesPerSec: -1}); !errors.Is(err, queue.ErrInvalid) {
		t.Errorf("negative budget: %v", err)
	}
}

// TestStartOrder checks the priority and aging rule with one worker: the
// order jobs start in is recorded by the runner.
func TestStartOrder(t *testing.T) {
	const step = 10 * time.Minute
	type enq struct {
		vm    string
		class queue.Class
		after time.Duration // clock advance before this enqueue
	}
	tests := []struct {
		name string
		enqs []enq
		want []string
	}{
		{"classes", []enq{{"r", queue.Rescan, 0}, {"s", queue.Scheduled, time.Second}, {"o", queue.OnDemand, time.Second}}, []string{"o", "s", "r"}},
		{"fifo within class", []enq{{"a", queue.Scheduled, 0}, {"b", queue.Scheduled, time.Second}, {"c", queue.Scheduled, time.Second}}, []string{"a", "b", "c"}},
		{"rescan aged past two steps outranks on-demand", []enq{{"r", queue.Rescan, 0}, {"o", queue.OnDemand, 2*step + time.Minute}}, []string{"r", "o"}},
		{"rescan not aged enough", []enq{{"r", queue.Rescan, 0}, {"o", queue.OnDemand, 2*step - time.Minute}}, []string{"o", "r"}},
		{"scheduled aged one step outranks on-demand", []enq{{"s", queue.Scheduled, 0}, {"o", queue.OnDemand, step + time.Minute}, {"r", queue.Rescan, time.Second}}, []string{"s", "o", "r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			var mu sync.Mutex
			var order []string
			run := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
				mu.Lock()
				order = append(order, j.VM)
				mu.Unlock()
				return nil
			}
			h := newHarness(t, queue.Config{Now: clock.Now, MaxScans: 1, AgingStep: step}, run)
			var ids []int64
			for i, e := range tt.enqs {
				clock.Advance(e.after)
				// Different datastores, so only the global limit orders them.
				ids = append(ids, h.enqueue(queue.Request{VM: e.vm, Disks: []queue.Disk{disk(fmt.Sprint("ds", i), 0)}, Class: e.class}).ID)
			}
			h.serve()
			h.waitFinished(ids...)
			if !slices.Equal(order, tt.want) {
				t.Errorf("start order %v, want %v", order, tt.want)
			}
		})
	}
}

// TestCancel covers cancelling queued, running and finished jobs.
func TestCancel(t *testing.T) {
	started := make(chan int64, 10)
	run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
		started <- j.ID
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, queue.Config{MaxScans: 1}, run)
	a := h.enqueue(queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand})
	b := h.enqueue(queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}, Class: queue.Rescan})
	h.serve()
	if id := <-started; id != a.ID {
		t.Fatalf("started %d, want %d", id, a.ID)
	}
	ctx := context.Background()
	tests := []struct {
		name    string
		id      int64
		wantErr error
	}{
		{"queued", b.ID, nil},
		{"running", a.ID, nil},
		{"finished", a.ID, queue.ErrFinished},
		{"unknown", 999, queue.ErrNotFound},
	}
	for _, tt := range tests {
		err := h.q.Cancel(ctx, tt.id)
		if !errors.Is(err, tt.wantErr) {
			t.Fatalf("%s: Cancel = %v, want %v", tt.name, err, tt.wantErr)
		}
		if tt.wantErr == nil {
			h.waitFinished(tt.id)
			if j := h.job(tt.id); j.State != queue.Cancelled {
				t.Errorf("%s: state %s, want cancelled", tt.name, j.State)
			}
		}
	}
	select {
	case id := <-started:
		t.Errorf("job %d started after cancel", id)
	default:
	}
	if j := h.job(b.ID); j.Attempts != 0 {
		t.Errorf("cancelled queued job has %d attempts", j.Attempts)
	}
}

// TestPauseResume: a paused datastore starts nothing, others go on; the
// pause is saved and survives a restart.
func TestPauseResume(t *testing.T) {
	var mu sync.Mutex
	ran := map[string]bool{}
	run := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
		mu.Lock()
		ran[j.VM] = true
		mu.Unlock()
		return nil
	}
	path := filepath.Join(t.TempDir(), "q.db")
	h := newHarnessAt(t, path, queue.Config{}, run)
	ctx := context.Background()
	if err := h.q.Pause(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	a := h.enqueue(queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}})
	ab := h.enqueue(queue.Request{VM: "ab", Disks: []queue.Disk{disk("A", 0), disk("B", 0)}})
	b := h.enqueue(queue.Request{VM: "b", Disks: []queue.Disk{disk("B", 1)}})
	h.serve()
	h.waitFinished(b.ID)
	h.stop()
	mu.Lock()
	if ran["a"] || ran["ab"] {
		t.Errorf("jobs ran on a paused datastore: %v", ran)
	}
	mu.Unlock()

	// Restart: still paused.
	h2 := newHarnessAt(t, path, queue.Config{}, run)
	m := h2.q.Metrics()
	if i := slices.IndexFunc(m.Datastores, func(d queue.DatastoreMetrics) bool { return d.Name == "A" }); i < 0 || !m.Datastores[i].Paused {
		t.Fatalf("datastore A not paused after restart: %+v", m.Datastores)
	}
	if m.Depth[queue.Scheduled]+m.Depth[queue.Rescan] != 2 {
		t.Errorf("depth after restart = %v, want 2 queued", m.Depth)
	}
	h2.serve()
	if err := h2.q.Resume(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	h2.waitFinished(a.ID, ab.ID)
}

// TestRetries covers transient retries with backoff, the attempt limit,
// permanent errors and panics.
func TestRetries(t *testing.T) {
	const base = 20 * time.Millisecond
	tests := []struct {
		name         string
		failures     int   // transient failures before success
		fail         error // returned on every attempt instead, if set
		panics       bool
		wantState    queue.State
		wantAttempts int
		wantErr      string
	}{
		{"succeeds first time", 0, nil, false, queue.Done, 1, ""},
		{"two transient failures", 2, nil, false, queue.Done, 3, ""},
		{"too many", 10, nil, false, queue.Failed, 4, "too many attempts"},
		{"permanent", 0, queue.Permanent(errors.New("qcow2: bad magic")), false, queue.Failed, 1, "qcow2: bad magic"},
		{"wrapped permanent", 0, fmt.Errorf("disk 0: %w", queue.Permanent(errors.New("corrupt"))), false, queue.Failed, 1, "disk 0: corrupt"},
		{"panic", 0, nil, true, queue.Failed, 1, "runner panicked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var starts []time.Time
			run := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
				mu.Lock()
				starts = append(starts, time.Now())
				n := len(starts)
				mu.Unlock()
				switch {
				case tt.panics:
					panic("boom")
				case tt.fail != nil:
					return tt.fail
				case n <= tt.failures:
					return fmt.Errorf("transient %d", n)
				}
				return nil
			}
			h := newHarness(t, queue.Config{MaxAttempts: 4, BackoffBase: base, BackoffMax: 4 * base}, run)
			j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
			h.serve()
			h.waitFinished(j.ID)
			got := h.job(j.ID)
			if got.State != tt.wantState || got.Attempts != tt.wantAttempts || !strings.Contains(got.Error, tt.wantErr) {
				t.Errorf("job = %s after %d attempts, error %q; want %s, %d, %q",
					got.State, got.Attempts, got.Error, tt.wantState, tt.wantAttempts, tt.wantErr)
			}
			if tt.wantState == queue.Done && got.Error != "" && tt.failures == 0 {
				t.Errorf("error %q on a clean run", got.Error)
			}
			// Backoff lower bounds only (a busy machine is only slower):
			// retry n waits at least half of min(max, base×2^(n-1)).
			mu.Lock()
			defer mu.Unlock()
			for i := 1; i < len(starts); i++ {
				want := min(base<<(i-1), 4*base) / 2
				if gap := starts[i].Sub(starts[i-1]); gap < want {
					t.Errorf("retry %d after %v, want >= %v", i, gap, want)
				}
			}
		})
	}
}

// TestDeadline: a running job past its deadline is stopped and recorded; a
// queued one past its deadline fails without running.
func TestDeadline(t *testing.T) {
	ran := make(chan string, 4)
	run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
		ran <- j.VM
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, queue.Config{}, run)
	ctx := context.Background()
	if err := h.q.Pause(ctx, "P"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Generous deadline for the running one, so even a stalled machine
	// starts it before it expires.
	running := h.enqueue(queue.Request{VM: "running", Disks: []queue.Disk{disk("A", 0)}, Deadline: now.Add(2 * time.Second)})
	waiting := h.enqueue(queue.Request{VM: "waiting", Disks: []queue.Disk{disk("P", 0)}, Deadline: now.Add(200 * time.Millisecond)})
	h.serve()
	h.waitFinished(running.ID, waiting.ID)
	for _, tt := range []struct {
		id      int64
		wantErr string
	}{{running.ID, "deadline exceeded"}, {waiting.ID, "deadline exceeded while queued"}} {
		j := h.job(tt.id)
		if j.State != queue.Failed || !strings.Contains(j.Error, tt.wantErr) {
			t.Errorf("job %s: %s %q, want failed with %q", j.VM, j.State, j.Error, tt.wantErr)
		}
	}
	if len(ran) != 1 || <-ran != "running" {
		t.Errorf("runner calls wrong")
	}
}

// TestOneRunPerVM: a VM enqueued again while its job runs gets a second job,
// which starts only after the first ends.
func TestOneRunPerVM(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var events []string
	run := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
		mu.Lock()
		events = append(events, fmt.Sprint("start ", j.ID))
		mu.Unlock()
		if j.ID == 1 {
			<-release
		}
		mu.Lock()
		events = append(events, fmt.Sprint("end ", j.ID))
		mu.Unlock()
		return nil
	}
	h := newHarness(t, queue.Config{MaxScans: 4, DefaultBudget: queue.Budget{MaxScans: 4}}, run)
	a := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
	h.serve()
	waitFor(t, "first start", func() bool { mu.Lock(); defer mu.Unlock(); return len(events) == 1 })
	b := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
	if b.ID == a.ID {
		t.Fatal("enqueue merged into a running job")
	}
	time.Sleep(50 * time.Millisecond) // give a wrong scheduler the chance to start b
	close(release)
	h.waitFinished(a.ID, b.ID)
	want := []string{"start 1", "end 1", "start 2", "end 2"}
	if !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}
}

// TestRecover: a queue starting on a store with runs a crash left running
// ends each as lost: back to the queue with its attempt and the crash
// counted; cancelled when a cancel was asked for; absorbed by its VM's
// newer queued job (one queued job per VM, holding both disk sets); failed
// once it used its last attempt.
func TestRecover(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	ctx := context.Background()
	_, s := openStore(t, path)
	now := time.Now()
	jobs, err := s.Enqueue(ctx, []queue.Request{
		{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		{VM: "b", Disks: []queue.Disk{disk("A", 1)}},
		{VM: "c", Disks: []queue.Disk{disk("A", 2)}, Class: queue.Rescan},
		{VM: "d", Disks: []queue.Disk{disk("A", 3)}},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if _, err := apply1(ctx, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: now}); err != nil {
			t.Fatal(err)
		}
	}
	// d has used its attempts: two transient failures, then this run.
	for range 2 {
		for _, to := range []queue.State{queue.Queued, queue.Running} {
			from := queue.Running
			if to == queue.Running {
				from = queue.Queued
			}
			if _, err := apply1(ctx, s, queue.Transition{ID: jobs[3].ID, From: from, To: to, At: now}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Cancel(ctx, jobs[1].ID, now); err != nil {
		t.Fatal(err)
	}
	c2, err := s.Enqueue(ctx, []queue.Request{{VM: "c", Disks: []queue.Disk{disk("B", 0)}, Class: queue.OnDemand}}, now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// A second process (the restarted appliance) opens the same file.
	h := newHarnessAt(t, path, queue.Config{MaxAttempts: 3, BackoffBase: time.Millisecond}, ok)
	for _, tt := range []struct {
		id                int64
		state             queue.State
		attempts, crashes int
		err               string
	}{
		{jobs[0].ID, queue.Queued, 1, 1, "lost to a crash"},
		{jobs[1].ID, queue.Cancelled, 1, 1, "cancelled"},
		{jobs[2].ID, queue.Cancelled, 1, 1, fmt.Sprintf("superseded by job %d", c2[0].ID)},
		{jobs[3].ID, queue.Failed, 3, 1, queue.CrashError(3, 1)},
		{c2[0].ID, queue.Queued, 0, 0, ""},
	} {
		if j := h.job(tt.id); j.State != tt.state || j.Attempts != tt.attempts || j.Crashes != tt.crashes || !strings.Contains(j.Error, tt.err) {
			t.Errorf("job %d (%s): %s/%d attempts/%d crashes %q, want %s/%d/%d %q", tt.id, j.VM, j.State, j.Attempts, j.Crashes, j.Error,
				tt.state, tt.attempts, tt.crashes, tt.err)
		}
	}
	if j := h.job(c2[0].ID); len(j.Disks) != 2 || j.Class != queue.OnDemand || !j.EnqueuedAt.Equal(jobs[2].EnqueuedAt) {
		t.Errorf("merged job %+v", j)
	}
	h.serve()
	h.waitFinished(jobs[0].ID, c2[0].ID)
	if j := h.job(jobs[0].ID); j.State != queue.Done || j.Attempts != 2 {
		t.Errorf("recovered job: %s after %d attempts", j.State, j.Attempts)
	}
	// Done is recorded once: a second completion is refused.
	_, err = apply1(ctx, s, queue.Transition{ID: jobs[0].ID, From: queue.Running, To: queue.Done, At: now})
	if !errors.Is(err, queue.ErrConflict) {
		t.Errorf("second done transition: %v, want ErrConflict", err)
	}
}

// TestShutdownRequeues: ending Serve puts running jobs back in the queue,
// and the interrupted run does not count as an attempt.
func TestShutdownRequeues(t *testing.T) {
	started := make(chan struct{})
	run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, queue.Config{}, run)
	j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
	h.serve()
	<-started
	h.stop()
	if got := h.job(j.ID); got.State != queue.Queued || got.Attempts != 0 || got.Error != "queue: interrupted by shutdown" {
		t.Errorf("after shutdown: %s with %d attempts (%q), want queued with 0", got.State, got.Attempts, got.Error)
	}
}

// TestLimitedReader reads real bytes through a datastore budget and checks
// the split, the accounting, the content and a lower bound on the time.
func TestLimitedReader(t *testing.T) {
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	tests := []struct {
		name    string
		budget  queue.Budget
		readLen int
	}{
		{"bytes bound, split reads", queue.Budget{BytesPerSec: 1 << 20}, 64 << 10},
		{"ops bound", queue.Budget{OpsPerSec: 200}, 4 << 10},
		{"unlimited", queue.Budget{}, 128 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingReader{r: bytes.NewReader(data)}
			got := make(chan []byte, 1)
			run := func(ctx context.Context, j queue.Job, wrap queue.Wrap) error {
				r := wrap(j.Disks[0].Datastore, rec)
				out := make([]byte, len(data))
				for off := 0; off < len(data); off += tt.readLen {
					if _, err := r.ReadAt(out[off:min(off+tt.readLen, len(data))], int64(off)); err != nil {
						return err
					}
				}
				got <- out
				return nil
			}
			h := newHarness(t, queue.Config{}, run)
			if err := h.q.SetBudget(context.Background(), "A", tt.budget); err != nil {
				t.Fatal(err)
			}
			j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
			start := time.Now()
			h.serve()
			h.waitFinished(j.ID)
			elapsed := time.Since(start)
			if !bytes.Equal(<-got, data) {
				t.Fatal("bytes read through the limiter differ")
			}
			burstBytes, burstOps := tt.budget.Burst()
			ops := len(rec.sizes)
			for _, n := range rec.sizes {
				if burstBytes > 0 && n > burstBytes {
					t.Errorf("read of %d bytes exceeds burst %d", n, burstBytes)
				}
			}
			var minTime time.Duration
			if tt.budget.BytesPerSec > 0 {
				minTime = max(minTime, time.Duration(float64(len(data)-burstBytes)/tt.budget.BytesPerSec*float64(time.Second)))
			}
			if tt.budget.OpsPerSec > 0 {
				minTime = max(minTime, time.Duration(float64(ops-burstOps)/tt.budget.OpsPerSec*float64(time.Second)))
			}
			if elapsed < minTime {
				t.Errorf("read %d bytes in %d ops in %v, faster than the budget allows (%v)", len(data), ops, elapsed, minTime)
			}
			m := h.q.Metrics()
			if d := m.Datastores[0]; d.BytesRead != int64(len(data)) || d.ReadOps != int64(ops) {
				t.Errorf("metrics: %d bytes %d ops, want %d and %d", d.BytesRead, d.ReadOps, len(data), ops)
			}
		})
	}
}

type recordingReader struct {
	mu    sync.Mutex
	r     io.ReaderAt
	sizes []int
}

func (r *recordingReader) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.sizes = append(r.sizes, len(p))
	r.mu.Unlock()
	return r.r.ReadAt(p, off)
}

// TestEnqueueRescan: rescans are lowest class, spread over the window and
// interleaved by datastore; merging into a queued on-demand job keeps it
// on-demand and due now.
func TestEnqueueRescan(t *testing.T) {
	clock := newFakeClock()
	h := newHarness(t, queue.Config{Now: clock.Now}, ok)
	od := h.enqueue(queue.Request{VM: "vm-A-0", Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand})
	var vms []queue.VM
	for _, ds := range []string{"A", "B"} {
		for i := range 5 {
			vms = append(vms, queue.VM{Name: fmt.Sprintf("vm-%s-%d", ds, i), Disks: []queue.Disk{disk(ds, i)}})
		}
	}
	const spread = time.Hour
	jobs, err := h.q.EnqueueRescan(context.Background(), vms, "v42", spread)
	if err != nil {
		t.Fatal(err)
	}
	now := clock.Now()
	for i, j := range jobs {
		if j.VM == od.VM {
			if j.ID != od.ID || j.Class != queue.OnDemand || !j.NotBefore.IsZero() || j.SigVersion != "v42" {
				t.Errorf("merged on-demand job: %+v", j)
			}
			continue
		}
		wantNB := now.Add(spread * time.Duration(i) / time.Duration(len(jobs)))
		if j.Class != queue.Rescan || !j.NotBefore.Equal(wantNB) || j.SigVersion != "v42" {
			t.Errorf("job %d %s: class %s not-before %v version %q; want rescan, %v, v42", i, j.VM, j.Class, j.NotBefore, j.SigVersion, wantNB)
		}
		if i > 0 && j.Disks[0].Datastore == jobs[i-1].Disks[0].Datastore {
			t.Errorf("jobs %d and %d both on %s: not interleaved", i-1, i, j.Disks[0].Datastore)
		}
	}
	if m := h.q.Metrics(); m.Depth[queue.Rescan] != 9 || m.Depth[queue.OnDemand] != 1 {
		t.Errorf("depth %v", m.Depth)
	}
}

// TestMetricsWait: every start is observed once in its class.
func TestMetricsWait(t *testing.T) {
	var mu sync.Mutex
	observed := map[queue.Class]int{}
	h := newHarness(t, queue.Config{ObserveWait: func(c queue.Class, d time.Duration) {
		mu.Lock()
		observed[c]++
		mu.Unlock()
	}}, ok)
	var ids []int64
	for i, c := range []queue.Class{queue.Rescan, queue.Rescan, queue.OnDemand} {
		ids = append(ids, h.enqueue(queue.Request{VM: fmt.Sprint("vm", i), Disks: []queue.Disk{disk("A", i)}, Class: c}).ID)
	}
	h.serve()
	h.waitFinished(ids...)
	m := h.q.Metrics()
	if m.Wait[queue.Rescan].Count != 2 || m.Wait[queue.OnDemand].Count != 1 || m.Wait[queue.Scheduled].Count != 0 || m.Done != 3 || m.Started != 3 {
		t.Errorf("metrics %+v", m)
	}
	if c := m.Wait[queue.Rescan].Cumulative(); c[queue.WaitBuckets[len(queue.WaitBuckets)-1].Seconds()] != 2 {
		t.Errorf("cumulative buckets %v", c)
	}
	mu.Lock()
	defer mu.Unlock()
	if observed[queue.Rescan] != 2 || observed[queue.OnDemand] != 1 {
		t.Errorf("ObserveWait calls %v", observed)
	}
}

// TestHold: a job spanning two busy datastores is bypassed by later
// single-datastore jobs until it has waited ReserveAfter; from then on a
// datastore that frees is held for it.
func TestHold(t *testing.T) {
	tests := []struct {
		name         string
		reserveAfter time.Duration
		hold         bool
	}{
		{"waited long enough: holds", time.Nanosecond, true},
		{"not yet: bypassed", time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			release := map[string]chan struct{}{"A0": make(chan struct{}), "B0": make(chan struct{})}
			var mu sync.Mutex
			var order []string
			run := func(_ context.Context, j queue.Job, _ queue.Wrap) error {
				mu.Lock()
				order = append(order, j.VM)
				mu.Unlock()
				if c := release[j.VM]; c != nil {
					<-c
				}
				return nil
			}
			h := newHarness(t, queue.Config{Now: clock.Now, MaxScans: 10, ReserveAfter: tt.reserveAfter}, run)
			ids := map[string]int64{}
			for _, vm := range []string{"A0", "B0", "J", "A1", "A2", "A3", "B1"} {
				disks := []queue.Disk{disk(vm[:1], 0)}
				if vm == "J" {
					disks = []queue.Disk{disk("A", 1), disk("B", 1)}
				}
				ids[vm] = h.enqueue(queue.Request{VM: vm, Disks: disks}).ID
				clock.Advance(time.Second)
			}
			h.serve()
			waitFor(t, "A0 and B0 to start", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 2 })
			close(release["A0"])
			if tt.hold {
				// Datastore A is held for J: nothing may start on it. The
				// pause only gives a wrong scheduler time to show itself.
				time.Sleep(150 * time.Millisecond)
			} else {
				h.waitFinished(ids["A3"])
			}
			close(release["B0"])
			var all []int64
			for _, id := range ids {
				all = append(all, id)
			}
			h.waitFinished(all...)
			j := slices.Index(order, "J")
			if tt.hold && j != 2 || !tt.hold && j < slices.Index(order, "A3") {
				t.Errorf("start order %v", order)
			}
		})
	}
}

// TestSetBudgetWhileReading: a budget lowered while a job reads applies to
// its next reads.
func TestSetBudgetWhileReading(t *testing.T) {
	const half = 128 << 10
	const rate = 256 << 10 // bytes/s after the change
	data := make([]byte, 2*half)
	halfway := make(chan struct{})
	resume := make(chan struct{})
	var second time.Duration
	run := func(ctx context.Context, j queue.Job, wrap queue.Wrap) error {
		r := wrap("A", bytes.NewReader(data))
		buf := make([]byte, 16<<10)
		for off := 0; off < len(data); off += len(buf) {
			if off == half {
				close(halfway)
				<-resume
			}
			t0 := time.Now()
			if _, err := r.ReadAt(buf, int64(off)); err != nil {
				return err
			}
			if off >= half {
				second += time.Since(t0)
			}
		}
		return nil
	}
	h := newHarness(t, queue.Config{}, run)
	j := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
	h.serve()
	<-halfway
	if err := h.q.SetBudget(context.Background(), "A", queue.Budget{BytesPerSec: rate}); err != nil {
		t.Fatal(err)
	}
	close(resume)
	h.waitFinished(j.ID)
	if got := h.job(j.ID); got.State != queue.Done {
		t.Fatalf("job %s: %s", got.State, got.Error)
	}
	burst, _ := queue.Budget{BytesPerSec: rate}.Burst()
	if floor := time.Duration(float64(half-burst) / rate * float64(time.Second)); second < floor {
		t.Errorf("second half read in %v, the new budget allows no less than %v", second, floor)
	}
}

// TestRetrySuperseded: a run that fails transiently while its VM was
// enqueued again is not requeued beside the new job (one queued job per
// VM); the new job takes over.
func TestRetrySuperseded(t *testing.T) {
	for _, shutdown := range []bool{false, true} {
		t.Run(fmt.Sprint("shutdown=", shutdown), func(t *testing.T) {
			started := make(chan int64, 4)
			proceed := make(chan struct{})
			run := func(ctx context.Context, j queue.Job, _ queue.Wrap) error {
				started <- j.ID
				if j.Attempts == 1 && j.ID == 1 {
					select {
					case <-proceed:
					case <-ctx.Done():
						return ctx.Err()
					}
					return errors.New("transient")
				}
				return nil
			}
			h := newHarness(t, queue.Config{BackoffBase: time.Millisecond}, run)
			x := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})
			h.serve()
			<-started
			y := h.enqueue(queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand})
			if shutdown {
				h.stop()
			} else {
				close(proceed)
				h.waitFinished(x.ID, y.ID)
			}
			if got := h.job(x.ID); got.State != queue.Cancelled || !strings.Contains(got.Error, "superseded by job") {
				t.Errorf("first job: %s %q", got.State, got.Error)
			}
			want := queue.Done
			if shutdown {
				want = queue.Queued
			}
			if got := h.job(y.ID); got.State != want {
				t.Errorf("second job: %s %q, want %s", got.State, got.Error, want)
			}
		})
	}
}
