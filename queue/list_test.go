package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/queue"
)

// TestList: the queue validates the options and fills in the default
// limit before the store sees them (the store's side, every filter and
// paging, is storetest's List).
func TestList(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, queue.Config{}, ok)
	var ids []int64
	for i := range 3 {
		ids = append(ids, h.enqueue(queue.Request{VM: fmt.Sprint("vm", i), Disks: []queue.Disk{disk("A", i)}}).ID)
	}
	jobs, err := h.q.List(ctx, queue.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, j := range jobs {
		got = append(got, j.ID)
	}
	if slices.Reverse(ids); !slices.Equal(got, ids) {
		t.Errorf("List() = %v, want %v", got, ids)
	}
	for _, o := range []queue.ListOptions{{State: "sleeping"}, {Limit: queue.MaxList + 1}, {Limit: -1}, {BeforeID: -1},
		{VM: strings.Repeat("x", queue.MaxStringLen+1)}} {
		if _, err := h.q.List(ctx, o); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("List(%.80v) = %v, want ErrInvalid", o, err)
		}
	}
}
