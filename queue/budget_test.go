package queue

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestReadShareLoweredBelowIt: a read waiting for its datastore's tokens
// when the share is lowered below the read's size (the bucket can no
// longer hold it) is split to the new size and goes on at the new rate.
// It used to wait until the share grew back, which with three appliances
// on a datastore could take the whole run (issue 13's 3-appliance
// makespan).
func TestReadShareLoweredBelowIt(t *testing.T) {
	const full = 256 << 10
	d := newDatastore("A", DatastoreConfig{Budget: Budget{BytesPerSec: full}})
	d.setShare(Share{Datastore: "A", BytesPerSec: full})
	n := d.bytes.Burst()
	if tok := d.bytes.TokensAt(time.Now()); tok > float64(n)/2 {
		t.Fatalf("a new bucket holds %.0f tokens: the read would not wait", tok) // it starts empty
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lr := &limitedReader{ctx: ctx, ds: d, r: bytes.NewReader(make([]byte, n))}
	done := make(chan error, 1)
	go func() {
		_, err := lr.ReadAt(make([]byte, n), 0)
		done <- err
	}()
	// The read is sized (one whole burst) before it takes its turn.
	for deadline := time.Now().Add(5 * time.Second); len(d.turn) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the read never waited for tokens")
		}
	}
	const quarter = full / 4
	d.setShare(Share{Datastore: "A", BytesPerSec: quarter})
	t0 := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("a read of %d bytes still waits 10 s after its share was lowered to %d bytes/s (burst %d)", n, quarter, d.bytes.Burst())
	}
	// At a quarter of the rate the bucket refills one new burst in
	// BurstWindow; the read needs four of them, less the one it holds.
	if floor := 3 * BurstWindow * 9 / 10; time.Since(t0) < floor {
		t.Errorf("read done %v after the share was lowered, the new share allows no less than %v", time.Since(t0), floor)
	}
	if got := d.meter.bytes; got != int64(n) {
		t.Errorf("meter counted %d bytes, want %d", got, n)
	}
}
