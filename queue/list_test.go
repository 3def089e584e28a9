package queue

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestList lists jobs of every state from a real store through the
// queue, by each filter, and pages through them both ways.
func TestList(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	t0 := clock.Now()
	h := newHarness(t, Config{Now: clock.Now}, ok)
	// Jobs 1..8, a minute apart: vm0..vm3 twice (the second enqueue of a
	// VM comes after its first job left the queue, so it is a new job).
	var ids []int64
	for i := range 8 {
		vm := []string{"vm0", "vm1", "vm2", "vm3"}[i%4]
		j := h.enqueue(Request{VM: vm, Disks: []Disk{disk("A", i)}})
		ids = append(ids, j.ID)
		if i < 4 {
			// Move the first four out of Queued, each to another state.
			to := []State{Done, Failed, Cancelled, Running}[i]
			if _, err := apply1(ctx, h.store, Transition{ID: j.ID, From: Queued, To: Running, At: clock.Now()}); err != nil {
				t.Fatal(err)
			}
			if to != Running {
				if _, err := apply1(ctx, h.store, Transition{ID: j.ID, From: Running, To: to, At: clock.Now()}); err != nil {
					t.Fatal(err)
				}
			}
		}
		clock.Advance(time.Minute)
	}
	rev := func(s []int64) []int64 { s = slices.Clone(s); slices.Reverse(s); return s }
	pick := func(idx ...int) []int64 {
		var out []int64
		for _, i := range idx {
			out = append(out, ids[i])
		}
		return out
	}
	tests := []struct {
		name string
		o    ListOptions
		want []int64
	}{
		{"all, newest first", ListOptions{}, rev(ids)},
		{"all, oldest first", ListOptions{Ascending: true}, ids},
		{"queued", ListOptions{State: Queued}, rev(pick(4, 5, 6, 7))},
		{"done", ListOptions{State: Done}, pick(0)},
		{"failed", ListOptions{State: Failed}, pick(1)},
		{"cancelled", ListOptions{State: Cancelled}, pick(2)},
		{"running", ListOptions{State: Running}, pick(3)},
		{"one VM", ListOptions{VM: "vm1"}, pick(5, 1)},
		{"VM and state", ListOptions{VM: "vm1", State: Failed}, pick(1)},
		{"unknown VM", ListOptions{VM: "nope"}, nil},
		{"limit", ListOptions{Limit: 3}, pick(7, 6, 5)},
		{"before id", ListOptions{BeforeID: ids[3], Limit: 2}, pick(2, 1)},
		{"after id ascending", ListOptions{AfterID: ids[5], Ascending: true}, pick(6, 7)},
		{"between ids", ListOptions{AfterID: ids[1], BeforeID: ids[4]}, pick(3, 2)},
		{"since", ListOptions{Since: t0.Add(6 * time.Minute)}, pick(7, 6)},
		{"until", ListOptions{Until: t0.Add(2 * time.Minute)}, pick(1, 0)},
		{"since and until", ListOptions{Since: t0.Add(3 * time.Minute), Until: t0.Add(5 * time.Minute), Ascending: true}, pick(3, 4)},
		{"state and time", ListOptions{State: Queued, Until: t0.Add(6 * time.Minute)}, pick(5, 4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jobs, err := h.q.List(ctx, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, j := range jobs {
				got = append(got, j.ID)
				if tt.o.State != "" && j.State != tt.o.State {
					t.Errorf("job %d is %s, listed for %s", j.ID, j.State, tt.o.State)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ids %v, want %v", got, tt.want)
			}
		})
	}

	// Whole jobs come back, as Get returns them.
	jobs, err := h.q.List(ctx, ListOptions{VM: "vm3", State: Running})
	if err != nil || len(jobs) != 1 {
		t.Fatalf("List running vm3: %v, %v", jobs, err)
	}
	if g := h.job(ids[3]); !jobEqual(jobs[0], g) {
		t.Errorf("listed %+v, Get %+v", jobs[0], g)
	}

	// Paging newest first with BeforeID visits every job once.
	var seen []int64
	for o := (ListOptions{Limit: 3}); ; {
		page, err := h.q.List(ctx, o)
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

	for _, o := range []ListOptions{{State: "sleeping"}, {Limit: MaxList + 1}, {Limit: -1}, {BeforeID: -1}} {
		if _, err := h.q.List(ctx, o); !errors.Is(err, ErrInvalid) {
			t.Errorf("List(%+v) = %v, want ErrInvalid", o, err)
		}
	}
}

func jobEqual(a, b Job) bool {
	return a.ID == b.ID && a.VM == b.VM && slices.Equal(a.Disks, b.Disks) && a.State == b.State &&
		a.Attempts == b.Attempts && a.EnqueuedAt.Equal(b.EnqueuedAt) && a.StartedAt.Equal(b.StartedAt)
}
