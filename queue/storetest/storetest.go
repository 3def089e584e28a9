// Package storetest is the conformance suite every queue.Store passes: the
// merge rule, conditional transitions, exactly-once completion under
// concurrent writers, cancel, lost runs, list and datastore settings. A
// Store's own package runs it against a real database:
//
//	func TestStore(t *testing.T) {
//		storetest.Suite{New: func(t *testing.T) queue.Store { return openFresh(t) }}.Run(t)
//	}
//
// (restic's internal/backend/test is the model). The suite talks to the
// Store only through the interface, so a rule it checks holds for every
// implementation alike.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// Suite runs the conformance tests.
type Suite struct {
	// New returns an empty store on a database of its own, closed when the
	// test ends.
	New func(t *testing.T) queue.Store
}

// Run runs every test of the suite as a subtest of t.
func (s Suite) Run(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T, queue.Store)
	}{
		{"Merge", testMerge},
		{"EnqueueBatch", testEnqueueBatch},
		{"RoundTrip", testRoundTrip},
		{"Transitions", testTransitions},
		{"ApplyAtomic", testApplyAtomic},
		{"ExactlyOnce", testExactlyOnce},
		{"ConcurrentEnqueue", testConcurrentEnqueue},
		{"Cancel", testCancel},
		{"LostRuns", testLostRuns},
		{"List", testList},
		{"Datastores", testDatastores},
		{"Leases", testLeases},
		{"Reap", testReap},
		{"Slots", testSlots},
		{"Changes", testChanges},
		{"Shares", testShares},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s.New(t)
			if err := st.Heartbeat(context.Background(), holder, appliance, time.Hour); err != nil {
				t.Fatalf("Heartbeat: %v", err)
			}
			tc.f(t, st)
		})
	}
}

// The holder the tests run jobs under, unless they say otherwise.
const (
	holder    = "storetest/1"
	appliance = "storetest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// declared is d with a declared format and layers.
func declared(d queue.Disk, format string, layers ...string) queue.Disk {
	d.Format, d.Layers = format, layers
	return d
}

func disk(ds string, n int) queue.Disk {
	return queue.Disk{Path: fmt.Sprintf("/snap/%s/%c.qcow2", ds, 'a'+n), Datastore: ds}
}

func enqueue(t *testing.T, s queue.Store, now time.Time, reqs ...queue.Request) []queue.Job {
	t.Helper()
	jobs, err := s.Enqueue(context.Background(), reqs, now)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if len(jobs) != len(reqs) {
		t.Fatalf("Enqueue of %d requests returned %d jobs", len(reqs), len(jobs))
	}
	return jobs
}

// apply1 applies one transition. One that names no holder is made by the
// test's holder and fenced to the job's current run, so the tests of other
// rules need not carry leases around.
func apply1(s queue.Store, tr queue.Transition) (queue.Job, error) {
	if tr.To == queue.Running && tr.Slots == nil {
		tr.Slots = map[string]int{}
		if j, err := s.Get(context.Background(), tr.ID); err == nil {
			for _, ds := range j.Datastores() {
				tr.Slots[ds] = 100
			}
		}
	}
	if tr.Holder == "" {
		if tr.To == queue.Running {
			tr.Holder = holder
		}
		if tr.From == queue.Running {
			j, err := s.Get(context.Background(), tr.ID)
			if err != nil {
				return queue.Job{}, err
			}
			tr.Holder, tr.Epoch = j.Holder, j.Epoch
		}
	}
	return applyRaw(s, tr)
}

// applyRaw applies one transition as given.
func applyRaw(s queue.Store, tr queue.Transition) (queue.Job, error) {
	res, err := s.Apply(context.Background(), []queue.Transition{tr})
	if err != nil {
		return queue.Job{}, err
	}
	if len(res) != 1 {
		return queue.Job{}, fmt.Errorf("apply of 1 transition returned %d results", len(res))
	}
	return res[0].Job, res[0].Err
}

func mustApply(t *testing.T, s queue.Store, tr queue.Transition) queue.Job {
	t.Helper()
	j, err := apply1(s, tr)
	if err != nil {
		t.Fatalf("Apply(%+v): %v", tr, err)
	}
	return j
}

func get(t *testing.T, s queue.Store, id int64) queue.Job {
	t.Helper()
	j, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%d): %v", id, err)
	}
	return j
}

// sameJob compares every stored field.
func sameJob(a, b queue.Job) bool {
	return a.ID == b.ID && a.VM == b.VM && slices.EqualFunc(a.Disks, b.Disks, queue.Disk.Equal) && a.Class == b.Class &&
		a.Reason == b.Reason && a.SigVersion == b.SigVersion && a.Deadline.Equal(b.Deadline) &&
		a.State == b.State && a.Attempts == b.Attempts && a.Crashes == b.Crashes && a.Error == b.Error &&
		a.EnqueuedAt.Equal(b.EnqueuedAt) && a.NotBefore.Equal(b.NotBefore) && a.RetryAt.Equal(b.RetryAt) &&
		a.StartedAt.Equal(b.StartedAt) && a.FinishedAt.Equal(b.FinishedAt) && a.CancelRequested == b.CancelRequested
}

// testMerge: a request for a VM with a queued job merges into it by
// queue.Job.Merge, and what Enqueue returns is what is stored.
func testMerge(t *testing.T, s queue.Store) {
	tests := []struct {
		name string
		reqs []queue.Request
		want queue.Job // Disks, Class, Reason, SigVersion, Deadline, NotBefore
	}{
		{
			name: "single",
			reqs: []queue.Request{{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Scheduled, Reason: "policy", SigVersion: "v1"}},
			want: queue.Job{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Scheduled, Reason: "policy", SigVersion: "v1"},
		},
		{
			name: "union of disks, class raised with its reason",
			reqs: []queue.Request{
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Reason: "sigs", SigVersion: "v1"},
				{Disks: []queue.Disk{disk("A", 0), disk("B", 1)}, Class: queue.OnDemand, Reason: "user"},
			},
			want: queue.Job{Disks: []queue.Disk{disk("A", 0), disk("B", 1)}, Class: queue.OnDemand, Reason: "user", SigVersion: "v1"},
		},
		{
			name: "lower class keeps class and reason, newer version wins",
			reqs: []queue.Request{
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand, Reason: "user", SigVersion: "v1"},
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Reason: "sigs", SigVersion: "v2"},
			},
			want: queue.Job{Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand, Reason: "user", SigVersion: "v2"},
		},
		{
			name: "the same disk declared again: the newer format and layers win",
			reqs: []queue.Request{
				{Disks: []queue.Disk{disk("A", 0), disk("B", 1)}, Class: queue.OnDemand},
				{Disks: []queue.Disk{declared(disk("A", 0), "qcow2", "base.qcow2")}, Class: queue.OnDemand},
			},
			want: queue.Job{Disks: []queue.Disk{declared(disk("A", 0), "qcow2", "base.qcow2"), disk("B", 1)}, Class: queue.OnDemand},
		},
		{
			name: "reason filled in when empty",
			reqs: []queue.Request{
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand},
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Reason: "sigs"},
			},
			want: queue.Job{Disks: []queue.Disk{disk("A", 0)}, Class: queue.OnDemand, Reason: "sigs"},
		},
		{
			name: "earlier deadline and not-before win",
			reqs: []queue.Request{
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Deadline: t0.Add(2 * time.Hour), NotBefore: t0.Add(time.Hour)},
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Deadline: t0.Add(time.Hour)},
				{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Deadline: t0.Add(3 * time.Hour)},
			},
			want: queue.Job{Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan, Deadline: t0.Add(time.Hour)},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := fmt.Sprint("vm", i)
			var first, mem queue.Job
			for k, r := range tt.reqs {
				r.VM = vm
				j := enqueue(t, s, t0.Add(time.Duration(k)*time.Minute), r)[0]
				if k == 0 {
					first, mem = j, j
					continue
				}
				if j.ID != first.ID {
					t.Fatalf("request %d made job %d, want a merge into %d", k, j.ID, first.ID)
				}
				mem.Merge(&r)
				if !sameJob(j, mem) {
					t.Errorf("request %d: Enqueue returned %+v\nqueue.Job.Merge gives %+v", k, j, mem)
				}
			}
			got := get(t, s, first.ID)
			if !sameJob(got, mem) {
				t.Errorf("stored %+v\nreturned %+v", got, mem)
			}
			w := tt.want
			if !slices.EqualFunc(got.Disks, w.Disks, queue.Disk.Equal) || got.Class != w.Class || got.Reason != w.Reason ||
				got.SigVersion != w.SigVersion || !got.Deadline.Equal(w.Deadline) || !got.NotBefore.Equal(w.NotBefore) {
				t.Errorf("merged job = %+v\nwant %+v", got, w)
			}
			if !got.EnqueuedAt.Equal(t0) || got.State != queue.Queued || got.Attempts != 0 {
				t.Errorf("merged job enqueued %v, %s, %d attempts: want the first enqueue time, queued, 0", got.EnqueuedAt, got.State, got.Attempts)
			}
		})
	}
}

// testEnqueueBatch: results in request order, a VM twice in one batch is
// one job, and a VM whose job runs gets a second, queued job.
func testEnqueueBatch(t *testing.T, s queue.Store) {
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("B", 0)}},
		queue.Request{VM: "a", Disks: []queue.Disk{disk("B", 1)}, Class: queue.OnDemand},
	)
	if jobs[0].VM != "a" || jobs[1].VM != "b" || jobs[2].ID != jobs[0].ID || jobs[0].ID == jobs[1].ID {
		t.Fatalf("batch returned %+v", jobs)
	}
	if a := get(t, s, jobs[0].ID); len(a.Disks) != 2 || a.Class != queue.OnDemand {
		t.Errorf("VM twice in a batch: %+v", a)
	}
	mustApply(t, s, queue.Transition{ID: jobs[0].ID, From: queue.Queued, To: queue.Running, At: t0})
	again := enqueue(t, s, t0.Add(time.Second), queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}})[0]
	if again.ID == jobs[0].ID || again.State != queue.Queued {
		t.Errorf("enqueue while running merged into the running job: %+v", again)
	}
	q, err := s.Queued(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != 2 || q[0].ID != jobs[1].ID || q[1].ID != again.ID {
		t.Errorf("Queued = %+v, want jobs %d and %d", q, jobs[1].ID, again.ID)
	}
	r, err := s.Running(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(r) != 1 || r[0].ID != jobs[0].ID {
		t.Errorf("Running = %+v, want job %d", r, jobs[0].ID)
	}
}

// testRoundTrip: every field comes back as stored, times to the
// nanosecond, names with any valid UTF-8.
func testRoundTrip(t *testing.T, s queue.Store) {
	r := queue.Request{VM: "wëb-01 \"quoted\" 'x'", Disks: []queue.Disk{
		{Path: "/vmfs/volumes/ds 1/wëb-01.vmdk", Datastore: "ds 1"}, {Path: "nbd://host/x?y=1", Datastore: "ds;2"}},
		Class: queue.OnDemand, Reason: "operator\nnewline", SigVersion: "2026.11.21",
		Deadline: t0.Add(time.Hour + 123456789), NotBefore: t0.Add(987654321)}
	now := t0.Add(42)
	j := enqueue(t, s, now, r)[0]
	got := get(t, s, j.ID)
	want := queue.Job{ID: j.ID, VM: r.VM, Disks: r.Disks, Class: r.Class, Reason: r.Reason, SigVersion: r.SigVersion,
		Deadline: r.Deadline, State: queue.Queued, EnqueuedAt: now, NotBefore: r.NotBefore}
	if !sameJob(got, want) || !sameJob(j, want) {
		t.Errorf("stored %+v\nreturned %+v\nwant %+v", got, j, want)
	}
	if _, err := s.Get(context.Background(), j.ID+1000); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Get of a missing id: %v, want ErrNotFound", err)
	}
}

// testTransitions: what each transition writes, and that each is
// conditional on the From state.
func testTransitions(t *testing.T, s queue.Store) {
	j := enqueue(t, s, t0, queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})[0]
	at := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

	run := mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: at(1)})
	if run.State != queue.Running || run.Attempts != 1 || !run.StartedAt.Equal(at(1)) {
		t.Errorf("after start: %+v", run)
	}
	// A second start of the same job is refused, and says where it is.
	if got, err := apply1(s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: at(2)}); !errors.Is(err, queue.ErrConflict) || got.State != queue.Running {
		t.Errorf("second start: %v (job %s), want ErrConflict and running", err, got.State)
	}
	retry := mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Running, To: queue.Queued, Err: "transient", RetryAt: at(30), At: at(3)})
	if retry.State != queue.Queued || retry.Attempts != 1 || retry.Error != "transient" || !retry.RetryAt.Equal(at(30)) {
		t.Errorf("after retry: %+v", retry)
	}
	mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: at(31)})
	back := mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Running, To: queue.Queued, Err: "interrupted", Interrupted: true, At: at(32)})
	if back.Attempts != 1 || back.Error != "interrupted" || !back.RetryAt.IsZero() {
		t.Errorf("an interrupted run counted: %+v", back)
	}
	run = mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: at(40)})
	if run.Attempts != 2 || run.Error != "interrupted" {
		t.Errorf("start keeps the last error and counts: %+v", run)
	}
	done := mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Running, To: queue.Done, At: at(50)})
	if done.State != queue.Done || !done.FinishedAt.Equal(at(50)) || done.Attempts != 2 || done.Crashes != 0 {
		t.Errorf("after done: %+v", done)
	}
	for _, to := range []queue.State{queue.Done, queue.Failed, queue.Queued, queue.Cancelled} {
		if got, err := apply1(s, queue.Transition{ID: j.ID, From: queue.Running, To: to, At: at(60)}); !errors.Is(err, queue.ErrConflict) || got.State != queue.Done {
			t.Errorf("done job, Running -> %s: %v (job %s), want ErrConflict", to, err, got.State)
		}
	}
	if _, err := apply1(s, queue.Transition{ID: j.ID + 1000, From: queue.Queued, To: queue.Running, At: at(60)}); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("missing job: %v, want ErrNotFound", err)
	}
	// Interrupted never takes attempts below zero.
	k := enqueue(t, s, t0, queue.Request{VM: "other", Disks: []queue.Disk{disk("A", 1)}})[0]
	mustApply(t, s, queue.Transition{ID: k.ID, From: queue.Queued, To: queue.Running, At: at(1)})
	mustApply(t, s, queue.Transition{ID: k.ID, From: queue.Running, To: queue.Queued, Interrupted: true, At: at(2)})
	if g := get(t, s, k.ID); g.Attempts != 0 {
		t.Errorf("interrupted first run left %d attempts", g.Attempts)
	}
	failed := mustApply(t, s, queue.Transition{ID: k.ID, From: queue.Queued, To: queue.Failed, Err: "deadline", At: at(3)})
	if failed.State != queue.Failed || failed.Error != "deadline" || !failed.FinishedAt.Equal(at(3)) {
		t.Errorf("queued -> failed: %+v", failed)
	}
}

// testApplyAtomic: a batch applies in order with per-item conflicts, and an
// invalid item fails the whole batch with nothing committed.
func testApplyAtomic(t *testing.T, s queue.Store) {
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}})
	a, b := jobs[0].ID, jobs[1].ID
	res, err := s.Apply(context.Background(), []queue.Transition{
		{ID: a, From: queue.Queued, To: queue.Running, At: t0, Holder: holder},
		{ID: b, From: queue.Running, To: queue.Done, At: t0, Holder: holder, Epoch: 1}, // conflict
		{ID: a, From: queue.Running, To: queue.Done, At: t0, Holder: holder, Epoch: 1}, // sees the first
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Err != nil || !errors.Is(res[1].Err, queue.ErrConflict) || res[2].Err != nil ||
		res[2].Job.State != queue.Done || res[1].Job.State != queue.Queued {
		t.Errorf("results %+v", res)
	}
	_, err = s.Apply(context.Background(), []queue.Transition{
		{ID: b, From: queue.Queued, To: queue.Running, At: t0, Holder: holder},
		{ID: b, From: queue.Running, To: "sleeping", At: t0, Holder: holder, Epoch: 1},
	})
	if err == nil {
		t.Error("a transition to an unknown state was accepted")
	}
	if g := get(t, s, b); g.State != queue.Queued || g.Attempts != 0 {
		t.Errorf("a failed batch committed its first item: %+v", g)
	}
}

// testExactlyOnce: of many writers racing to start and to complete one job,
// exactly one wins each.
func testExactlyOnce(t *testing.T, s queue.Store) {
	const writers = 8
	j := enqueue(t, s, t0, queue.Request{VM: "vm", Disks: []queue.Disk{disk("A", 0)}})[0]
	race := func(tr queue.Transition) (wins int) {
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = apply1(s, tr)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, queue.ErrConflict):
				t.Errorf("racing %s -> %s: %v", tr.From, tr.To, err)
			}
		}
		return wins
	}
	if n := race(queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: t0}); n != 1 {
		t.Errorf("%d of %d starts won, want 1", n, writers)
	}
	if n := race(queue.Transition{ID: j.ID, From: queue.Running, To: queue.Done, At: t0, Holder: holder, Epoch: 1}); n != 1 {
		t.Errorf("%d of %d completions won, want 1", n, writers)
	}
	if g := get(t, s, j.ID); g.State != queue.Done || g.Attempts != 1 {
		t.Errorf("after the races: %s with %d attempts", g.State, g.Attempts)
	}
}

// testConcurrentEnqueue: many writers enqueueing the same VMs at once leave
// one queued job per VM holding every disk.
func testConcurrentEnqueue(t *testing.T, s queue.Store) {
	const writers, vms = 6, 4
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reqs []queue.Request
			for v := range vms {
				reqs = append(reqs, queue.Request{VM: fmt.Sprint("vm", v), Disks: []queue.Disk{disk("A", w)}})
			}
			if _, err := s.Enqueue(context.Background(), reqs, t0); err != nil {
				t.Errorf("writer %d: %v", w, err)
			}
		}()
	}
	wg.Wait()
	q, err := s.Queued(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != vms {
		t.Fatalf("%d queued jobs, want %d", len(q), vms)
	}
	for _, j := range q {
		if len(j.Disks) != writers {
			t.Errorf("job %d (%s) has %d disks, want %d", j.ID, j.VM, len(j.Disks), writers)
		}
	}
}

// testCancel: queued at once, running by request, finished refused.
func testCancel(t *testing.T, s queue.Store) {
	ctx := context.Background()
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "q", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "r", Disks: []queue.Disk{disk("A", 1)}})
	q, r := jobs[0].ID, jobs[1].ID
	mustApply(t, s, queue.Transition{ID: r, From: queue.Queued, To: queue.Running, At: t0})
	if st, err := s.Cancel(ctx, q, t0.Add(time.Second)); err != nil || st != queue.Cancelled {
		t.Errorf("cancel queued: %s, %v", st, err)
	}
	if g := get(t, s, q); g.State != queue.Cancelled || !g.FinishedAt.Equal(t0.Add(time.Second)) || g.Attempts != 0 {
		t.Errorf("cancelled queued job: %+v", g)
	}
	if st, err := s.Cancel(ctx, r, t0); err != nil || st != queue.Running {
		t.Errorf("cancel running: %s, %v", st, err)
	}
	if g := get(t, s, r); g.State != queue.Running || !g.CancelRequested {
		t.Errorf("running job after cancel: %+v", g)
	}
	mustApply(t, s, queue.Transition{ID: r, From: queue.Running, To: queue.Cancelled, Err: "cancelled", At: t0})
	for _, id := range []int64{q, r} {
		if st, err := s.Cancel(ctx, id, t0); !errors.Is(err, queue.ErrFinished) || st != queue.Cancelled {
			t.Errorf("cancel finished job %d: %s, %v; want cancelled, ErrFinished", id, st, err)
		}
	}
	if _, err := s.Cancel(ctx, r+1000, t0); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("cancel missing job: %v", err)
	}
}

// testLostRuns: a transition marked Lost counts a crash; MergeInto folds a
// lost run into the VM's queued job (Job.Absorb) or is refused whole.
func testLostRuns(t *testing.T, s queue.Store) {
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}, Class: queue.Rescan},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}})
	a, b := jobs[0].ID, jobs[1].ID
	for _, id := range []int64{a, b} {
		mustApply(t, s, queue.Transition{ID: id, From: queue.Queued, To: queue.Running, At: t0})
	}
	g := mustApply(t, s, queue.Transition{ID: b, From: queue.Running, To: queue.Queued, Lost: true, Err: "lost", At: t0})
	if g.Crashes != 1 || g.Attempts != 1 {
		t.Errorf("lost run: %d crashes, %d attempts; want 1, 1", g.Crashes, g.Attempts)
	}
	mustApply(t, s, queue.Transition{ID: b, From: queue.Queued, To: queue.Running, At: t0})
	g = mustApply(t, s, queue.Transition{ID: b, From: queue.Running, To: queue.Failed, Lost: true, Err: queue.CrashError(2, 2), At: t0})
	if g.Crashes != 2 || g.State != queue.Failed || g.Error != queue.CrashError(2, 2) {
		t.Errorf("second lost run: %+v", g)
	}

	// a runs; a newer queued job of its VM absorbs it.
	newer := enqueue(t, s, t0.Add(time.Hour), queue.Request{VM: "a", Disks: []queue.Disk{disk("B", 0)}, Class: queue.OnDemand, Reason: "user"})[0]
	if _, err := apply1(s, queue.Transition{ID: a, From: queue.Running, To: queue.Cancelled, MergeInto: b, Lost: true, At: t0}); !errors.Is(err, queue.ErrConflict) {
		t.Errorf("merge into a finished job of another VM: %v, want ErrConflict", err)
	}
	if g := get(t, s, a); g.State != queue.Running || g.Crashes != 0 {
		t.Errorf("a refused merge changed the job: %+v", g)
	}
	c := mustApply(t, s, queue.Transition{ID: a, From: queue.Running, To: queue.Cancelled, MergeInto: newer.ID, Lost: true,
		Err: "superseded", At: t0.Add(2 * time.Hour)})
	if c.State != queue.Cancelled || c.Crashes != 1 || c.Error != "superseded" {
		t.Errorf("absorbed run: %+v", c)
	}
	want := newer
	want.Absorb(&jobs[0])
	if g := get(t, s, newer.ID); !sameJob(g, want) || !g.EnqueuedAt.Equal(t0) || len(g.Disks) != 2 {
		t.Errorf("absorbing job %+v\nwant %+v", g, want)
	}
}

// testList: every filter, both orders, paging.
func testList(t *testing.T, s queue.Store) {
	ctx := context.Background()
	var ids []int64
	for i := range 8 {
		vm := []string{"vm0", "vm1", "vm2", "vm3"}[i%4]
		now := t0.Add(time.Duration(i) * time.Minute)
		j := enqueue(t, s, now, queue.Request{VM: vm, Disks: []queue.Disk{disk("A", i)}})[0]
		ids = append(ids, j.ID)
		if i < 4 {
			mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: now})
			if to := []queue.State{queue.Done, queue.Failed, queue.Cancelled, queue.Running}[i]; to != queue.Running {
				mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Running, To: to, At: now})
			}
		}
	}
	rev := func(s []int64) []int64 { s = slices.Clone(s); slices.Reverse(s); return s }
	pick := func(idx ...int) []int64 {
		var out []int64
		for _, i := range idx {
			out = append(out, ids[i])
		}
		return out
	}
	min := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	tests := []struct {
		name string
		o    queue.ListOptions
		want []int64
	}{
		{"all, newest first", queue.ListOptions{}, rev(ids)},
		{"all, oldest first", queue.ListOptions{Ascending: true}, ids},
		{"queued", queue.ListOptions{State: queue.Queued}, rev(pick(4, 5, 6, 7))},
		{"done", queue.ListOptions{State: queue.Done}, pick(0)},
		{"failed", queue.ListOptions{State: queue.Failed}, pick(1)},
		{"cancelled", queue.ListOptions{State: queue.Cancelled}, pick(2)},
		{"running", queue.ListOptions{State: queue.Running}, pick(3)},
		{"one VM", queue.ListOptions{VM: "vm1"}, pick(5, 1)},
		{"VM and state", queue.ListOptions{VM: "vm1", State: queue.Failed}, pick(1)},
		{"unknown VM", queue.ListOptions{VM: "nope"}, nil},
		{"limit", queue.ListOptions{Limit: 3}, pick(7, 6, 5)},
		{"before id", queue.ListOptions{BeforeID: ids[3], Limit: 2}, pick(2, 1)},
		{"after id ascending", queue.ListOptions{AfterID: ids[5], Ascending: true}, pick(6, 7)},
		{"between ids", queue.ListOptions{AfterID: ids[1], BeforeID: ids[4]}, pick(3, 2)},
		{"since", queue.ListOptions{Since: min(6)}, pick(7, 6)},
		{"until", queue.ListOptions{Until: min(2)}, pick(1, 0)},
		{"since and until", queue.ListOptions{Since: min(3), Until: min(5), Ascending: true}, pick(3, 4)},
		{"state and time", queue.ListOptions{State: queue.Queued, Until: min(6)}, pick(5, 4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.o.Limit == 0 {
				tt.o.Limit = queue.MaxList // the queue fills it in before the call
			}
			jobs, err := s.List(ctx, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, j := range jobs {
				got = append(got, j.ID)
				if !sameJob(j, get(t, s, j.ID)) {
					t.Errorf("listed %+v, Get returns another", j)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ids %v, want %v", got, tt.want)
			}
		})
	}
	var seen []int64
	for o := (queue.ListOptions{Limit: 3}); ; {
		page, err := s.List(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page {
			seen = append(seen, j.ID)
		}
		if len(page) < o.Limit {
			break
		}
		o.BeforeID = page[len(page)-1].ID
	}
	if !slices.Equal(seen, rev(ids)) {
		t.Errorf("paged %v, want %v", seen, rev(ids))
	}
}

// testDatastores: settings saved, replaced, and read back exactly.
func testDatastores(t *testing.T, s queue.Store) {
	ctx := context.Background()
	if m, err := s.Datastores(ctx); err != nil || len(m) != 0 {
		t.Fatalf("empty store: %v, %v", m, err)
	}
	a := queue.DatastoreConfig{Budget: queue.Budget{MaxScans: 3, BytesPerSec: 200 << 20, OpsPerSec: 1500.5}}
	b := queue.DatastoreConfig{Paused: true}
	for name, c := range map[string]queue.DatastoreConfig{"ds-a": b, "ds b": b} {
		if err := s.SetDatastore(ctx, name, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetDatastore(ctx, "ds-a", a); err != nil {
		t.Fatal(err)
	}
	m, err := s.Datastores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["ds-a"] != a || m["ds b"] != b {
		t.Errorf("datastores %+v", m)
	}
}

// testLeases: a start needs a live lease and takes an epoch; a report
// about a run must carry that run's holder and epoch; an expired lease
// cannot be renewed, and its holder's late reports are refused.
func testLeases(t *testing.T, s queue.Store) {
	ctx := context.Background()
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}})
	a, b := jobs[0].ID, jobs[1].ID
	if _, err := applyRaw(s, queue.Transition{ID: a, From: queue.Queued, To: queue.Running, At: t0, Holder: "nobody/1"}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("start by an unregistered holder: %v, want ErrLeaseLost", err)
	}
	j := mustApply(t, s, queue.Transition{ID: a, From: queue.Queued, To: queue.Running, At: t0, Holder: holder})
	if j.Holder != holder || j.Epoch != 1 {
		t.Errorf("started job holder %q epoch %d, want %q 1", j.Holder, j.Epoch, holder)
	}
	for _, tr := range []queue.Transition{
		{Holder: holder, Epoch: 2}, {Holder: "other/1", Epoch: 1}, {Holder: "", Epoch: 0},
	} {
		tr.ID, tr.From, tr.To, tr.At = a, queue.Running, queue.Done, t0
		if _, err := applyRaw(s, tr); !errors.Is(err, queue.ErrConflict) {
			t.Errorf("done as %s epoch %d: %v, want ErrConflict", tr.Holder, tr.Epoch, err)
		}
	}
	// Back to the queue and again: the epoch grows, the old one is refused.
	mustApply(t, s, queue.Transition{ID: a, From: queue.Running, To: queue.Queued, At: t0, Holder: holder, Epoch: 1})
	j = mustApply(t, s, queue.Transition{ID: a, From: queue.Queued, To: queue.Running, At: t0, Holder: holder})
	if j.Epoch != 2 {
		t.Errorf("second start has epoch %d, want 2", j.Epoch)
	}
	if _, err := applyRaw(s, queue.Transition{ID: a, From: queue.Running, To: queue.Done, At: t0, Holder: holder, Epoch: 1}); !errors.Is(err, queue.ErrConflict) {
		t.Errorf("done for the first run: %v, want ErrConflict", err)
	}
	mustApply(t, s, queue.Transition{ID: a, From: queue.Running, To: queue.Done, At: t0, Holder: holder, Epoch: 2})

	// A short lease, renewed, then left to expire.
	const short = "short/1"
	// Leases here are long enough that a loaded machine (the race
	// detector, a busy CI) still renews and uses them in time.
	if err := s.Heartbeat(ctx, short, "short", 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := s.Heartbeat(ctx, short, "short", 1500*time.Millisecond); err != nil {
		t.Errorf("renewal of a live lease: %v", err)
	}
	mustApply(t, s, queue.Transition{ID: b, From: queue.Queued, To: queue.Running, At: t0, Holder: short})
	time.Sleep(1700 * time.Millisecond)
	if err := s.Heartbeat(ctx, short, "short", time.Hour); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("renewal of an expired lease: %v, want ErrLeaseLost", err)
	}
	if _, err := applyRaw(s, queue.Transition{ID: b, From: queue.Running, To: queue.Done, At: t0, Holder: short, Epoch: 1}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("late done from an expired holder: %v, want ErrLeaseLost", err)
	}
	if g := get(t, s, b); g.State != queue.Running {
		t.Errorf("a refused report changed the job: %s", g.State)
	}
}

// testReap: expired leases and the earlier holders of one's own appliance
// are ended at once, their running jobs returned; a lost run ended by two
// reapers is ended once; the job then runs again under a new epoch.
func testReap(t *testing.T, s queue.Store) {
	ctx := context.Background()
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}},
		queue.Request{VM: "c", Disks: []queue.Disk{disk("A", 2)}})
	for _, h := range []struct {
		name, appliance string
		ttl             time.Duration
	}{{"x/old", "x", time.Hour}, {"x/new", "x", time.Hour}, {"y/1", "y", 1500 * time.Millisecond}} {
		if err := s.Heartbeat(ctx, h.name, h.appliance, h.ttl); err != nil {
			t.Fatal(err)
		}
	}
	mustApply(t, s, queue.Transition{ID: jobs[0].ID, From: queue.Queued, To: queue.Running, At: t0, Holder: "x/old"})
	mustApply(t, s, queue.Transition{ID: jobs[1].ID, From: queue.Queued, To: queue.Running, At: t0, Holder: "y/1"})
	mustApply(t, s, queue.Transition{ID: jobs[2].ID, From: queue.Queued, To: queue.Running, At: t0, Holder: holder})
	lost, err := s.Reap(ctx, "x/new")
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) != 1 || lost[0].ID != jobs[0].ID || lost[0].Holder != "x/old" {
		t.Errorf("Reap by x's new process: %+v, want x/old's job %d only", lost, jobs[0].ID)
	}
	time.Sleep(1700 * time.Millisecond)
	lost, err = s.Reap(ctx, holder)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, j := range lost {
		ids = append(ids, j.ID)
	}
	if want := []int64{jobs[0].ID, jobs[1].ID}; !slices.Equal(ids, want) {
		t.Errorf("Reap after y's lease expired: jobs %v, want %v", ids, want)
	}
	for _, name := range []string{"x/old", "y/1"} {
		if err := s.Heartbeat(ctx, name, "", time.Hour); !errors.Is(err, queue.ErrLeaseLost) {
			t.Errorf("heartbeat of reaped %s: %v, want ErrLeaseLost", name, err)
		}
	}
	if err := s.Heartbeat(ctx, "x/new", "x", time.Hour); err != nil {
		t.Errorf("the reaper's own lease: %v", err)
	}
	// Two reapers end the same lost run: one wins.
	j := lost[1]
	tr := queue.Transition{ID: j.ID, From: queue.Running, To: queue.Queued, Lost: true, At: t0, Holder: j.Holder, Epoch: j.Epoch}
	res, err := s.Apply(ctx, []queue.Transition{tr, tr})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || !errors.Is(res[1].Err, queue.ErrConflict) || res[0].Job.Crashes != 1 {
		t.Errorf("lost run ended twice: %+v", res)
	}
	again := mustApply(t, s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: t0, Holder: holder})
	if again.Epoch != j.Epoch+1 || again.Holder != holder || again.Attempts != 2 {
		t.Errorf("rerun: %+v", again)
	}
	if _, err := applyRaw(s, queue.Transition{ID: j.ID, From: queue.Running, To: queue.Done, At: t0, Holder: "y/1", Epoch: j.Epoch}); !errors.Is(err, queue.ErrConflict) {
		t.Errorf("the dead holder's late result after a rerun: %v, want ErrConflict", err)
	}
	if lost, err := s.Reap(ctx, holder); err != nil || len(lost) != 1 || lost[0].ID != jobs[0].ID {
		t.Errorf("Reap again: %+v, %v; want only the job not yet ended", lost, err)
	}
}

// testSlots: a start takes a slot on every datastore of the job, refused
// with ErrNoSlot when one is full over the fleet; any end gives them back.
func testSlots(t *testing.T, s queue.Store) {
	ctx := context.Background()
	if err := s.Heartbeat(ctx, "other/1", "other", time.Hour); err != nil {
		t.Fatal(err)
	}
	jobs := enqueue(t, s, t0,
		queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}},
		queue.Request{VM: "ab", Disks: []queue.Disk{disk("A", 1), disk("B", 0)}},
		queue.Request{VM: "b", Disks: []queue.Disk{disk("B", 1)}},
		queue.Request{VM: "a2", Disks: []queue.Disk{disk("A", 2)}})
	slots := map[string]int{"A": 2, "B": 1}
	start := func(id int64, h string) (queue.Job, error) {
		return applyRaw(s, queue.Transition{ID: id, From: queue.Queued, To: queue.Running, At: t0, Holder: h, Slots: slots})
	}
	if _, err := start(jobs[0].ID, holder); err != nil {
		t.Fatal(err)
	}
	if _, err := start(jobs[1].ID, "other/1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{jobs[2].ID, jobs[3].ID} { // B full; A full (2 over two holders)
		if g, err := start(id, holder); !errors.Is(err, queue.ErrNoSlot) || g.State != queue.Queued || g.Attempts != 0 {
			t.Errorf("start of job %d: %v (%s, %d attempts), want ErrNoSlot and unchanged", id, err, g.State, g.Attempts)
		}
	}
	ab := get(t, s, jobs[1].ID)
	mustApply(t, s, queue.Transition{ID: ab.ID, From: queue.Running, To: queue.Failed, At: t0, Holder: "other/1", Epoch: ab.Epoch})
	for _, id := range []int64{jobs[2].ID, jobs[3].ID} {
		if _, err := start(id, holder); err != nil {
			t.Errorf("start of job %d after the slots were given back: %v", id, err)
		}
	}
	// Without Slots, a datastore has one.
	j := enqueue(t, s, t0, queue.Request{VM: "c", Disks: []queue.Disk{disk("B", 2)}})[0]
	if _, err := applyRaw(s, queue.Transition{ID: j.ID, From: queue.Queued, To: queue.Running, At: t0, Holder: holder}); !errors.Is(err, queue.ErrNoSlot) {
		t.Errorf("start on a busy datastore without Slots: %v, want ErrNoSlot", err)
	}
}

// testChanges: every write that changes a job shows in Changes, once, in
// commit order, paged by the clock value.
func testChanges(t *testing.T, s queue.Store) {
	ctx := context.Background()
	c0, err := s.Clock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := enqueue(t, s, t0, queue.Request{VM: "a", Disks: []queue.Disk{disk("A", 0)}})[0]
	b := enqueue(t, s, t0, queue.Request{VM: "b", Disks: []queue.Disk{disk("A", 1)}})[0]
	enqueue(t, s, t0, queue.Request{VM: "a", Disks: []queue.Disk{disk("B", 0)}}) // merge into a
	mustApply(t, s, queue.Transition{ID: b.ID, From: queue.Queued, To: queue.Running, At: t0})
	if _, err := s.Cancel(ctx, b.ID, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDatastore(ctx, "A", queue.DatastoreConfig{Paused: true}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	after := c0
	for {
		jobs, next, err := s.Changes(ctx, after, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) == 0 {
			if next != after {
				t.Errorf("no changes, but the cursor moved from %d to %d", after, next)
			}
			break
		}
		if next <= after {
			t.Fatalf("cursor went from %d to %d", after, next)
		}
		for _, j := range jobs {
			seen = append(seen, fmt.Sprintf("%s:%s:%d:%t", j.VM, j.State, len(j.Disks), j.CancelRequested))
		}
		after = next
	}
	// Each job shows once, as it is now, after its last change.
	want := []string{"a:queued:2:false", "b:running:1:true"}
	if !slices.Equal(seen, want) {
		t.Errorf("changes %v, want %v", seen, want)
	}
	if c, err := s.Clock(ctx); err != nil || c != after {
		t.Errorf("Clock = %d, %v; want %d", c, err, after)
	}
	if jobs, _, err := s.Changes(ctx, c0, 10); err != nil || len(jobs) != 2 || jobs[0].ID != a.ID {
		t.Errorf("Changes since the start: %+v, %v", jobs, err)
	}
}

// testShares: rate shares split by running scans, never add up to more
// than the budget, follow the holders' scans, and free up when a holder
// releases or its lease ends.
func testShares(t *testing.T, s queue.Store) {
	ctx := context.Background()
	b := queue.Budget{BytesPerSec: 900, OpsPerSec: 90}
	if err := s.Heartbeat(ctx, "two/1", "two", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	ask := func(h string, scans int, keep queue.Share) queue.Share {
		t.Helper()
		g, err := s.Shares(ctx, h, []queue.ShareRequest{{Datastore: "A", Budget: b, Scans: scans, Keep: keep}})
		if err != nil || len(g) != 1 || g[0].Datastore != "A" {
			t.Fatalf("Shares(%s, %d scans): %+v, %v", h, scans, g, err)
		}
		return g[0]
	}
	near := func(got queue.Share, bytes, ops float64) bool {
		return abs(got.BytesPerSec-bytes) < 1e-6 && abs(got.OpsPerSec-ops) < 1e-6
	}
	one := ask(holder, 1, queue.Share{})
	if !near(one, 900, 90) {
		t.Errorf("alone: %+v, want the whole budget", one)
	}
	// A second holder with two scans: its fair two thirds is held by the
	// first until the first lowers (one call later in the database).
	two := ask("two/1", 2, queue.Share{})
	if !near(two, 0, 0) {
		t.Errorf("second holder while the first holds everything: %+v, want nothing yet", two)
	}
	one = ask(holder, 1, one) // target a third; the database keeps 900 this once
	if !near(one, 300, 30) {
		t.Errorf("first holder's target: %+v, want a third", one)
	}
	if two = ask("two/1", 2, two); !near(two, 0, 0) {
		t.Errorf("second holder before the first wrote its lower share: %+v", two)
	}
	one = ask(holder, 1, one)
	if two = ask("two/1", 2, two); !near(two, 600, 60) {
		t.Errorf("second holder after the first lowered: %+v, want two thirds", two)
	}
	// The second's lease ends: its share stops counting.
	time.Sleep(2200 * time.Millisecond)
	if one = ask(holder, 1, one); !near(one, 900, 90) {
		t.Errorf("after the other lease expired: %+v, want everything", one)
	}
	// Releasing.
	if r := ask(holder, 0, queue.Share{}); !near(r, 0, 0) {
		t.Errorf("release: %+v", r)
	}
	if err := s.Heartbeat(ctx, "three/1", "three", time.Hour); err != nil {
		t.Fatal(err)
	}
	if g := ask("three/1", 1, queue.Share{}); !near(g, 900, 90) {
		t.Errorf("after a release: %+v, want everything", g)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
