package connector_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
)

func TestSelection(t *testing.T) {
	vms := []connector.VM{
		{ID: "1", Name: "web1", Folder: "/dc/vm/prod/web"},
		{ID: "2", Name: "db1", Folder: "/dc/vm/prod", Tags: []string{"pci"}},
		{ID: "3", Name: "test-web", Folder: "/dc/vm/test"},
		{ID: "4", Name: "prodx", Folder: "/dc/vm/production"},
	}
	for _, c := range []struct {
		sel  connector.Selection
		want string
	}{
		{connector.Selection{All: true}, "1234"},
		{connector.Selection{All: true, Exclude: []string{"test-*"}}, "124"},
		{connector.Selection{Folders: []string{"/dc/vm/prod/"}}, "12"}, // not /dc/vm/production
		{connector.Selection{Tags: []string{"pci"}}, "2"},
		{connector.Selection{Names: []string{"*web*"}}, "13"},
	} {
		if err := c.sel.Validate(); err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, vm := range vms {
			if c.sel.Match(vm) {
				got += vm.ID
			}
		}
		if got != c.want {
			t.Errorf("%+v selects %s, want %s", c.sel, got, c.want)
		}
	}
	if err := (connector.Selection{}).Validate(); err == nil {
		t.Error("an empty selection is valid")
	}
	if err := (connector.Selection{Names: []string{"["}}).Validate(); err == nil {
		t.Error("a bad glob is valid")
	}
}

func TestGate(t *testing.T) {
	now := time.Date(2026, 1, 1, 23, 30, 0, 0, time.Local)
	night, err := connector.ParseWindow("22:00-06:00")
	if err != nil {
		t.Fatal(err)
	}
	g, err := connector.NewGate([]connector.Group{{Name: "pacemaker", Names: []string{"node*"}}}, []connector.Window{night}, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	n1, n2, other := connector.VM{ID: "a", Name: "node1"}, connector.VM{ID: "b", Name: "node2"}, connector.VM{ID: "c", Name: "web"}
	rel1, err := g.TryAcquire(n1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.TryAcquire(n2); !errors.Is(err, connector.ErrGroupBusy) {
		t.Fatalf("second node: %v", err)
	}
	relOther, err := g.TryAcquire(other)
	if err != nil {
		t.Fatalf("a VM in no group: %v", err)
	}
	relOther()
	// Acquire waits for the first node's release.
	done := make(chan error, 1)
	go func() {
		rel, err := g.Acquire(context.Background(), n2, time.Hour)
		if err == nil {
			rel()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("acquired while node1 is frozen: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	rel1()
	rel1() // twice is harmless
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	now = time.Date(2026, 1, 2, 12, 0, 0, 0, time.Local)
	if _, err := g.TryAcquire(other); !errors.Is(err, connector.ErrOutsideWindow) {
		t.Fatalf("at noon: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := g.Acquire(ctx, other, 10*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting outside the window: %v", err)
	}
	// At noon the window next opens at 22:00 the same day; at 23:30 it
	// is open; after 06:00 it opens again that evening.
	if got, want := g.Opens(), time.Date(2026, 1, 2, 22, 0, 0, 0, time.Local); !got.Equal(want) {
		t.Errorf("Opens at noon = %v, want %v", got, want)
	}
	now = time.Date(2026, 1, 2, 23, 30, 0, 0, time.Local)
	if got := g.Opens(); !got.Equal(now) {
		t.Errorf("Opens inside the window = %v", got)
	}
	morning, _ := connector.ParseWindow("01:00-05:00")
	for _, tc := range []struct{ at, want time.Time }{
		{time.Date(2026, 1, 2, 0, 30, 0, 0, time.UTC), time.Date(2026, 1, 2, 1, 0, 0, 0, time.UTC)},
		{time.Date(2026, 1, 2, 5, 0, 0, 0, time.UTC), time.Date(2026, 1, 3, 1, 0, 0, 0, time.UTC)},
		{time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC), time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)},
	} {
		if got := morning.Next(tc.at); !got.Equal(tc.want) {
			t.Errorf("Next(%v) = %v, want %v", tc.at, got, tc.want)
		}
	}
}
