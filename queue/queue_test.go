package queue

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
)

func TestEnqueueMerge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		reqs []Request
		want Job // fields compared: Disks, Class, Reason, SigVersion, Deadline, NotBefore
	}{
		{
			name: "single",
			reqs: []Request{{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Scheduled, Reason: "policy", SigVersion: "v1"}},
			want: Job{Disks: []Disk{disk("A", 0)}, Class: Scheduled, Reason: "policy", SigVersion: "v1"},
		},
		{
			name: "union of disks, class raised with its reason",
			reqs: []Request{
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Rescan, Reason: "sigs", SigVersion: "v1"},
				{VM: "vm", Disks: []Disk{disk("A", 0), disk("B", 1)}, Class: OnDemand, Reason: "user"},
			},
			want: Job{Disks: []Disk{disk("A", 0), disk("B", 1)}, Class: OnDemand, Reason: "user", SigVersion: "v1"},
		},
		{
			name: "lower class keeps class and reason, newer version wins",
			reqs: []Request{
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: OnDemand, Reason: "user", SigVersion: "v1"},
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Rescan, Reason: "sigs", SigVersion: "v2"},
			},
			want: Job{Disks: []Disk{disk("A", 0)}, Class: OnDemand, Reason: "user", SigVersion: "v2"},
		},
		{
			name: "earlier deadline and not-before win",
			reqs: []Request{
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Rescan, Deadline: t0.Add(2 * time.Hour), NotBefore: t0.Add(time.Hour)},
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Rescan, Deadline: t0.Add(time.Hour)},
				{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: Rescan, Deadline: t0.Add(3 * time.Hour)},
			},
			want: Job{Disks: []Disk{disk("A", 0)}, Class: Rescan, Deadline: t0.Add(time.Hour)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			h := newHarness(t, Config{Now: clock.Now}, ok)
			first := h.enqueue(tt.reqs[0])
			for _, r := range tt.reqs[1:] {
				clock.Advance(time.Minute)
				if j := h.enqueue(r); j.ID != first.ID {
					t.Fatalf("merge returned job %d, want %d", j.ID, first.ID)
				}
			}
			// Read back from a second store on the same file: what was
			// acknowledged is what was committed.
			_, s2 := openStore(t, h.path)
			got, err := s2.Get(context.Background(), first.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Disks, tt.want.Disks) || got.Class != tt.want.Class || got.Reason != tt.want.Reason ||
				got.SigVersion != tt.want.SigVersion || !got.Deadline.Equal(tt.want.Deadline) || !got.NotBefore.Equal(tt.want.NotBefore) {
				t.Errorf("merged job = %+v\nwant %+v", got, tt.want)
			}
			if !got.EnqueuedAt.Equal(first.EnqueuedAt) {
				t.Errorf("EnqueuedAt = %v, want the first enqueue %v", got.EnqueuedAt, first.EnqueuedAt)
			}
			if q, _ := s2.Queued(context.Background()); len(q) != 1 {
				t.Errorf("%d queued jobs, want 1", len(q))
			}
		})
	}
}

func TestEnqueueInvalid(t *testing.T) {
	h := newHarness(t, Config{}, ok)
	many := make([]Disk, MaxDisks+1)
	for i := range many {
		many[i] = disk("A", i)
	}
	for _, r := range []Request{
		{Disks: []Disk{disk("A", 0)}},
		{VM: "vm"},
		{VM: "vm", Disks: []Disk{{Path: "x"}}},
		{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: 7},
		{VM: "vm", Disks: many},
		{VM: strings.Repeat("x", maxStringLen+1), Disks: []Disk{disk("A", 0)}},
	} {
		if _, err := h.q.Enqueue(context.Background(), r); !errors.Is(err, ErrInvalid) {
			t.Errorf("Enqueue(%.60v) = %v, want ErrInvalid", r, err)
		}
	}
	if err := h.q.SetBudget(context.Background(), "A", Budget{BytesPerSec: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative budget: %v", err)
	}
}

// TestStartOrder checks the priority and aging rule with one worker: the
// order jobs start in is recorded by the runner.
func TestStartOrder(t *testing.T) {
	const step = 10 * time.Minute
	type enq struct {
		vm    string
		class Class
		after time.Duration // clock advance before this enqueue
	}
	tests := []struct {
		name string
		enqs []enq
		want []string
	}{
		{"classes", []enq{{"r", Rescan, 0}, {"s", Scheduled, time.Second}, {"o", OnDemand, time.Second}}, []string{"o", "s", "r"}},
		{"fifo within class", []enq{{"a", Scheduled, 0}, {"b", Scheduled, time.Second}, {"c", Scheduled, time.Second}}, []string{"a", "b", "c"}},
		{"rescan aged past two steps outranks on-demand", []enq{{"r", Rescan, 0}, {"o", OnDemand, 2*step + time.Minute}}, []string{"r", "o"}},
		{"rescan not aged enough", []enq{{"r", Rescan, 0}, {"o", OnDemand, 2*step - time.Minute}}, []string{"o", "r"}},
		{"scheduled aged one step outranks on-demand", []enq{{"s", Scheduled, 0}, {"o", OnDemand, step + time.Minute}, {"r", Rescan, time.Second}}, []string{"s", "o", "r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			var mu sync.Mutex
			var order []string
			run := func(_ context.Context, j Job, _ Wrap) error {
				mu.Lock()
				order = append(order, j.VM)
				mu.Unlock()
				return nil
			}
			h := newHarness(t, Config{Now: clock.Now, MaxScans: 1, AgingStep: step}, run)
			var ids []int64
			for i, e := range tt.enqs {
				clock.Advance(e.after)
				// Different datastores, so only the global limit orders them.
				ids = append(ids, h.enqueue(Request{VM: e.vm, Disks: []Disk{disk(fmt.Sprint("ds", i), 0)}, Class: e.class}).ID)
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
	run := func(ctx context.Context, j Job, _ Wrap) error {
		started <- j.ID
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, Config{MaxScans: 1}, run)
	a := h.enqueue(Request{VM: "a", Disks: []Disk{disk("A", 0)}, Class: OnDemand})
	b := h.enqueue(Request{VM: "b", Disks: []Disk{disk("A", 1)}, Class: Rescan})
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
		{"finished", a.ID, ErrFinished},
		{"unknown", 999, ErrNotFound},
	}
	for _, tt := range tests {
		err := h.q.Cancel(ctx, tt.id)
		if !errors.Is(err, tt.wantErr) {
			t.Fatalf("%s: Cancel = %v, want %v", tt.name, err, tt.wantErr)
		}
		if tt.wantErr == nil {
			h.waitFinished(tt.id)
			if j := h.job(tt.id); j.State != Cancelled {
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
	run := func(_ context.Context, j Job, _ Wrap) error {
		mu.Lock()
		ran[j.VM] = true
		mu.Unlock()
		return nil
	}
	path := filepath.Join(t.TempDir(), "q.db")
	h := newHarnessAt(t, path, Config{}, run)
	ctx := context.Background()
	if err := h.q.Pause(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	a := h.enqueue(Request{VM: "a", Disks: []Disk{disk("A", 0)}})
	ab := h.enqueue(Request{VM: "ab", Disks: []Disk{disk("A", 0), disk("B", 0)}})
	b := h.enqueue(Request{VM: "b", Disks: []Disk{disk("B", 1)}})
	h.serve()
	h.waitFinished(b.ID)
	h.stop()
	mu.Lock()
	if ran["a"] || ran["ab"] {
		t.Errorf("jobs ran on a paused datastore: %v", ran)
	}
	mu.Unlock()

	// Restart: still paused.
	h2 := newHarnessAt(t, path, Config{}, run)
	m := h2.q.Metrics()
	if i := slices.IndexFunc(m.Datastores, func(d DatastoreMetrics) bool { return d.Name == "A" }); i < 0 || !m.Datastores[i].Paused {
		t.Fatalf("datastore A not paused after restart: %+v", m.Datastores)
	}
	if m.Depth[Scheduled]+m.Depth[Rescan] != 2 {
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
		wantState    State
		wantAttempts int
		wantErr      string
	}{
		{"succeeds first time", 0, nil, false, Done, 1, ""},
		{"two transient failures", 2, nil, false, Done, 3, ""},
		{"too many", 10, nil, false, Failed, 4, "too many attempts"},
		{"permanent", 0, Permanent(errors.New("qcow2: bad magic")), false, Failed, 1, "qcow2: bad magic"},
		{"wrapped permanent", 0, fmt.Errorf("disk 0: %w", Permanent(errors.New("corrupt"))), false, Failed, 1, "disk 0: corrupt"},
		{"panic", 0, nil, true, Failed, 1, "runner panicked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var starts []time.Time
			run := func(_ context.Context, j Job, _ Wrap) error {
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
			h := newHarness(t, Config{MaxAttempts: 4, BackoffBase: base, BackoffMax: 4 * base}, run)
			j := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
			h.serve()
			h.waitFinished(j.ID)
			got := h.job(j.ID)
			if got.State != tt.wantState || got.Attempts != tt.wantAttempts || !strings.Contains(got.Error, tt.wantErr) {
				t.Errorf("job = %s after %d attempts, error %q; want %s, %d, %q",
					got.State, got.Attempts, got.Error, tt.wantState, tt.wantAttempts, tt.wantErr)
			}
			if tt.wantState == Done && got.Error != "" && tt.failures == 0 {
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
	run := func(ctx context.Context, j Job, _ Wrap) error {
		ran <- j.VM
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, Config{}, run)
	ctx := context.Background()
	if err := h.q.Pause(ctx, "P"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Generous deadline for the running one, so even a stalled machine
	// starts it before it expires.
	running := h.enqueue(Request{VM: "running", Disks: []Disk{disk("A", 0)}, Deadline: now.Add(2 * time.Second)})
	waiting := h.enqueue(Request{VM: "waiting", Disks: []Disk{disk("P", 0)}, Deadline: now.Add(200 * time.Millisecond)})
	h.serve()
	h.waitFinished(running.ID, waiting.ID)
	for _, tt := range []struct {
		id      int64
		wantErr string
	}{{running.ID, "deadline exceeded"}, {waiting.ID, "deadline exceeded while queued"}} {
		j := h.job(tt.id)
		if j.State != Failed || !strings.Contains(j.Error, tt.wantErr) {
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
	run := func(_ context.Context, j Job, _ Wrap) error {
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
	h := newHarness(t, Config{MaxScans: 4, DefaultBudget: Budget{MaxScans: 4}}, run)
	a := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
	h.serve()
	waitFor(t, "first start", func() bool { mu.Lock(); defer mu.Unlock(); return len(events) == 1 })
	b := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
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

// TestRecover: a job left running by a crash goes back to the queue with its
// attempts; one with a cancel request is cancelled; a VM with both a running
// and a queued job ends up with one queued job holding both disk sets.
func TestRecover(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	ctx := context.Background()
	_, s := openStore(t, path)
	now := time.Now()
	jobs, err := s.Enqueue(ctx, []Request{
		{VM: "a", Disks: []Disk{disk("A", 0)}},
		{VM: "b", Disks: []Disk{disk("A", 1)}},
		{VM: "c", Disks: []Disk{disk("A", 2)}, Class: Rescan},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if _, err := apply1(ctx, s, Transition{ID: j.ID, From: Queued, To: Running, At: now}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Cancel(ctx, jobs[1].ID, now); err != nil {
		t.Fatal(err)
	}
	c2, err := s.Enqueue(ctx, []Request{{VM: "c", Disks: []Disk{disk("B", 0)}, Class: OnDemand}}, now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// A second process (the restarted appliance) opens the same file.
	h := newHarnessAt(t, path, Config{}, ok)
	for _, tt := range []struct {
		id       int64
		state    State
		attempts int
	}{{jobs[0].ID, Queued, 1}, {jobs[1].ID, Cancelled, 1}, {jobs[2].ID, Cancelled, 1}, {c2[0].ID, Queued, 0}} {
		if j := h.job(tt.id); j.State != tt.state || j.Attempts != tt.attempts {
			t.Errorf("job %d (%s): %s/%d attempts, want %s/%d", tt.id, j.VM, j.State, j.Attempts, tt.state, tt.attempts)
		}
	}
	if j := h.job(c2[0].ID); len(j.Disks) != 2 || j.Class != OnDemand || !j.EnqueuedAt.Equal(jobs[2].EnqueuedAt) {
		t.Errorf("merged job %+v", j)
	}
	h.serve()
	h.waitFinished(jobs[0].ID, c2[0].ID)
	if j := h.job(jobs[0].ID); j.State != Done || j.Attempts != 2 {
		t.Errorf("recovered job: %s after %d attempts", j.State, j.Attempts)
	}
	// Done is recorded once: a second completion is refused.
	_, err = apply1(ctx, s, Transition{ID: jobs[0].ID, From: Running, To: Done, At: now})
	if !errors.Is(err, ErrConflict) {
		t.Errorf("second done transition: %v, want ErrConflict", err)
	}
}

// TestShutdownRequeues: ending Serve puts running jobs back in the queue,
// and the interrupted run does not count as an attempt.
func TestShutdownRequeues(t *testing.T) {
	started := make(chan struct{})
	run := func(ctx context.Context, j Job, _ Wrap) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	h := newHarness(t, Config{}, run)
	j := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
	h.serve()
	<-started
	h.stop()
	if got := h.job(j.ID); got.State != Queued || got.Attempts != 0 || got.Error != "queue: interrupted by shutdown" {
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
		budget  Budget
		readLen int
	}{
		{"bytes bound, split reads", Budget{BytesPerSec: 1 << 20}, 64 << 10},
		{"ops bound", Budget{OpsPerSec: 200}, 4 << 10},
		{"unlimited", Budget{}, 128 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingReader{r: bytes.NewReader(data)}
			got := make(chan []byte, 1)
			run := func(ctx context.Context, j Job, wrap Wrap) error {
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
			h := newHarness(t, Config{}, run)
			if err := h.q.SetBudget(context.Background(), "A", tt.budget); err != nil {
				t.Fatal(err)
			}
			j := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
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
	h := newHarness(t, Config{Now: clock.Now}, ok)
	od := h.enqueue(Request{VM: "vm-A-0", Disks: []Disk{disk("A", 0)}, Class: OnDemand})
	var vms []VM
	for _, ds := range []string{"A", "B"} {
		for i := range 5 {
			vms = append(vms, VM{Name: fmt.Sprintf("vm-%s-%d", ds, i), Disks: []Disk{disk(ds, i)}})
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
			if j.ID != od.ID || j.Class != OnDemand || !j.NotBefore.IsZero() || j.SigVersion != "v42" {
				t.Errorf("merged on-demand job: %+v", j)
			}
			continue
		}
		wantNB := now.Add(spread * time.Duration(i) / time.Duration(len(jobs)))
		if j.Class != Rescan || !j.NotBefore.Equal(wantNB) || j.SigVersion != "v42" {
			t.Errorf("job %d %s: class %s not-before %v version %q; want rescan, %v, v42", i, j.VM, j.Class, j.NotBefore, j.SigVersion, wantNB)
		}
		if i > 0 && j.Disks[0].Datastore == jobs[i-1].Disks[0].Datastore {
			t.Errorf("jobs %d and %d both on %s: not interleaved", i-1, i, j.Disks[0].Datastore)
		}
	}
	if m := h.q.Metrics(); m.Depth[Rescan] != 9 || m.Depth[OnDemand] != 1 {
		t.Errorf("depth %v", m.Depth)
	}
}

// TestMetricsWait: every start is observed once in its class.
func TestMetricsWait(t *testing.T) {
	var mu sync.Mutex
	observed := map[Class]int{}
	h := newHarness(t, Config{ObserveWait: func(c Class, d time.Duration) {
		mu.Lock()
		observed[c]++
		mu.Unlock()
	}}, ok)
	var ids []int64
	for i, c := range []Class{Rescan, Rescan, OnDemand} {
		ids = append(ids, h.enqueue(Request{VM: fmt.Sprint("vm", i), Disks: []Disk{disk("A", i)}, Class: c}).ID)
	}
	h.serve()
	h.waitFinished(ids...)
	m := h.q.Metrics()
	if m.Wait[Rescan].Count != 2 || m.Wait[OnDemand].Count != 1 || m.Wait[Scheduled].Count != 0 || m.Done != 3 || m.Started != 3 {
		t.Errorf("metrics %+v", m)
	}
	if c := m.Wait[Rescan].Cumulative(); c[WaitBuckets[len(WaitBuckets)-1].Seconds()] != 2 {
		t.Errorf("cumulative buckets %v", c)
	}
	mu.Lock()
	defer mu.Unlock()
	if observed[Rescan] != 2 || observed[OnDemand] != 1 {
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
			run := func(_ context.Context, j Job, _ Wrap) error {
				mu.Lock()
				order = append(order, j.VM)
				mu.Unlock()
				if c := release[j.VM]; c != nil {
					<-c
				}
				return nil
			}
			h := newHarness(t, Config{Now: clock.Now, MaxScans: 10, ReserveAfter: tt.reserveAfter}, run)
			ids := map[string]int64{}
			for _, vm := range []string{"A0", "B0", "J", "A1", "A2", "A3", "B1"} {
				disks := []Disk{disk(vm[:1], 0)}
				if vm == "J" {
					disks = []Disk{disk("A", 1), disk("B", 1)}
				}
				ids[vm] = h.enqueue(Request{VM: vm, Disks: disks}).ID
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
	run := func(ctx context.Context, j Job, wrap Wrap) error {
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
	h := newHarness(t, Config{}, run)
	j := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
	h.serve()
	<-halfway
	if err := h.q.SetBudget(context.Background(), "A", Budget{BytesPerSec: rate}); err != nil {
		t.Fatal(err)
	}
	close(resume)
	h.waitFinished(j.ID)
	if got := h.job(j.ID); got.State != Done {
		t.Fatalf("job %s: %s", got.State, got.Error)
	}
	burst, _ := Budget{BytesPerSec: rate}.Burst()
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
			run := func(ctx context.Context, j Job, _ Wrap) error {
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
			h := newHarness(t, Config{BackoffBase: time.Millisecond}, run)
			x := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}})
			h.serve()
			<-started
			y := h.enqueue(Request{VM: "vm", Disks: []Disk{disk("A", 0)}, Class: OnDemand})
			if shutdown {
				h.stop()
			} else {
				close(proceed)
				h.waitFinished(x.ID, y.ID)
			}
			if got := h.job(x.ID); got.State != Cancelled || !strings.Contains(got.Error, "superseded by job") {
				t.Errorf("first job: %s %q", got.State, got.Error)
			}
			want := Done
			if shutdown {
				want = Queued
			}
			if got := h.job(y.ID); got.State != want {
				t.Errorf("second job: %s %q, want %s", got.State, got.Error, want)
			}
		})
	}
}
