package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/google/btree"
	"golang.org/x/time/rate"
)

// Budget is what one datastore may be asked for.
type Budget struct {
	// MaxScans is how many jobs may read the datastore at once; 0 means 1
	// (serial), the default for storage nobody has measured.
	MaxScans int
	// BytesPerSec and OpsPerSec cap the reads issued to the datastore;
	// 0 means unlimited.
	BytesPerSec float64
	OpsPerSec   float64
}

func (b Budget) validate() error {
	if b.MaxScans < 0 || b.BytesPerSec < 0 || b.OpsPerSec < 0 ||
		math.IsNaN(b.BytesPerSec) || math.IsNaN(b.OpsPerSec) || math.IsInf(b.BytesPerSec, 0) || math.IsInf(b.OpsPerSec, 0) {
		return fmt.Errorf("%w: budget %+v: values must be finite and not negative", ErrInvalid, b)
	}
	return nil
}

// rated reports whether b limits bytes or operations: such a budget is
// shared out between the appliances that read the datastore.
func (b Budget) rated() bool { return b.BytesPerSec > 0 || b.OpsPerSec > 0 }

func (b Budget) maxScans() int {
	if b.MaxScans <= 0 {
		return 1
	}
	return b.MaxScans
}

// Token-bucket sizing. The burst is what a datastore may receive at once
// after being idle; BurstWindow of its rate keeps a 1-second window within
// rate + 10%, while a floor keeps tiny budgets from splitting reads into
// absurdly small pieces.
const (
	BurstWindow   = 100 * time.Millisecond
	minBurstBytes = 4096
)

// Burst returns the token-bucket sizes used for b: bytes, ops. A read larger
// than the byte burst is split into pieces of at most that size, each
// counted as one operation. Zero means unlimited.
func (b Budget) Burst() (bytes, ops int) {
	if b.BytesPerSec > 0 {
		bytes = max(int(b.BytesPerSec*BurstWindow.Seconds()), minBurstBytes)
	}
	if b.OpsPerSec > 0 {
		ops = max(int(b.OpsPerSec*BurstWindow.Seconds()), 1)
	}
	return bytes, ops
}

// datastore is the run-time state of one datastore. The scheduler fields
// are guarded by Queue.mu; the limiters are safe on their own and the
// meter has its own lock, so reads never touch Queue.mu.
type datastore struct {
	name    string
	cfg     DatastoreConfig // guarded by Queue.mu
	running int             // guarded by Queue.mu: this queue's scans
	remote  int             // guarded by Queue.mu: other appliances' scans
	// share is this queue's part of the rate budget, as the store last
	// granted it (see ShareRequest); held says the store may still record
	// a share for it. Guarded by Queue.mu.
	share Share
	held  bool
	// due holds the datastore's due queued jobs in key order (sched.go).
	// Guarded by Queue.mu.
	due *btree.BTreeG[*entry]
	// idleAt is when this queue's last scan on it ended: a share is kept
	// for a few syncs after that, so back-to-back jobs do not wait for
	// a grant each. Guarded by Queue.mu.
	idleAt time.Time
	// askedAt is when a quick sync last asked for a share of it;
	// recorded is what the store wrote for this queue then. Guarded by
	// Queue.mu.
	askedAt  time.Time
	recorded Share

	bytes *rate.Limiter
	ops   *rate.Limiter
	turn  chan struct{} // one reader waits for tokens at a time
	meter meter
}

func newDatastore(name string, cfg DatastoreConfig) *datastore {
	d := &datastore{name: name, bytes: rate.NewLimiter(rate.Inf, 0), ops: rate.NewLimiter(rate.Inf, 0),
		turn: make(chan struct{}, 1), due: newDueTree()}
	d.configure(cfg)
	return d
}

func (d *datastore) configure(cfg DatastoreConfig) {
	d.cfg = cfg
	d.apply()
}

// setShare sets the rate this queue may read the datastore at.
func (d *datastore) setShare(s Share) {
	d.share = s
	d.apply()
}

// shareOff reports whether this queue's share of the datastore's rates is
// off by more than 1% from its part of the budget by the scans it knows of
// (its own and the other appliances' it mirrors), or the store records
// more for it than its limiter allows. Queue.mu must be held.
func (d *datastore) shareOff() bool {
	if d.recorded.BytesPerSec > d.share.BytesPerSec*1.01 || d.recorded.OpsPerSec > d.share.OpsPerSec*1.01 {
		return true
	}
	if d.running == 0 {
		return false
	}
	f := float64(d.running) / float64(d.running+d.remote)
	off := func(budget, share float64) bool {
		want := budget * f
		return budget > 0 && (share < want*0.99 || share > want*1.01)
	}
	return off(d.cfg.Budget.BytesPerSec, d.share.BytesPerSec) || off(d.cfg.Budget.OpsPerSec, d.share.OpsPerSec)
}

// needsShare reports whether reads wait for a share to be granted.
// Queue.mu must be held.
func (d *datastore) needsShare() bool {
	b := d.cfg.Budget
	return b.BytesPerSec > 0 && d.share.BytesPerSec == 0 || b.OpsPerSec > 0 && d.share.OpsPerSec == 0
}

// apply sets the limiters to the smaller of the budget and the share.
func (d *datastore) apply() {
	b := d.cfg.Budget
	eff := Budget{BytesPerSec: min(b.BytesPerSec, d.share.BytesPerSec), OpsPerSec: min(b.OpsPerSec, d.share.OpsPerSec)}
	bb, ob := eff.Burst()
	if b.BytesPerSec > 0 && eff.BytesPerSec == 0 {
		bb = minBurstBytes // shut until a share comes: reads still split to a size the bucket holds
	}
	if b.OpsPerSec > 0 && eff.OpsPerSec == 0 {
		ob = 1
	}
	// Burst before limit: a lowered limit with the old, larger burst would
	// briefly allow more than the new budget.
	d.bytes.SetBurst(bb)
	d.bytes.SetLimit(shareLimit(b.BytesPerSec, eff.BytesPerSec))
	d.ops.SetBurst(ob)
	d.ops.SetLimit(shareLimit(b.OpsPerSec, eff.OpsPerSec))
}

// shareLimit is the limiter rate for a budget and its share: unlimited
// without a budget, shut (0) without a share.
func shareLimit(budget, share float64) rate.Limit {
	if budget <= 0 {
		return rate.Inf
	}
	return rate.Limit(share)
}

// errBurst: a read asked for more than a bucket holds; the reader splits
// again with the current burst.
var errBurst = errors.New("read larger than the burst")

// take waits until both buckets hold tokens for one read of n bytes and
// takes them, at the time the read is issued. Readers of one datastore wait
// in turn (a channel is FIFO), so a large read is not starved by small ones.
//
// It does not use rate.Limiter.WaitN: WaitN books the tokens for a future
// instant and sleeps, so a goroutine that wakes late on a loaded machine
// reads late, and the tokens that built up meanwhile let the next reads
// follow at once, bunching more than the budget into one second. Checking
// the buckets with the current time after every sleep makes the issued
// reads themselves conform to the bucket.
func (d *datastore) take(ctx context.Context, n int) error {
	select {
	case d.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-d.turn }()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		now := time.Now()
		// A share lowered while the read waited can leave it larger than
		// the bucket: the reader splits it again. (Taking the larger of
		// the two waits once hid this -1 behind the ops bucket's 0, and
		// the read waited, a millisecond at a time, until the share grew
		// back: with three appliances on a datastore it seldom did.)
		ow, bw := deficit(d.ops, now, 1), deficit(d.bytes, now, n)
		if ow < 0 || bw < 0 {
			return fmt.Errorf("queue: datastore %s: read of %d: %w", d.name, n, errBurst)
		}
		wait := max(ow, bw)
		if wait == 0 && d.ops.AllowN(now, 1) {
			if d.bytes.AllowN(now, n) {
				return nil
			}
			wait = time.Millisecond // reconfigured meanwhile: look again
		}
		if dl, ok := ctx.Deadline(); ok && now.Add(wait).After(dl) {
			return fmt.Errorf("queue: datastore %s: budget cannot deliver the read before the job deadline: %w",
				d.name, context.DeadlineExceeded)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deficit is how long until lim holds n tokens: 0 if it does now, -1 if it
// never can (n above the burst).
func deficit(lim *rate.Limiter, now time.Time, n int) time.Duration {
	r := lim.Limit()
	if r == rate.Inf {
		return 0
	}
	if r == 0 {
		return 10 * time.Millisecond // no share yet: look again
	}
	if n > lim.Burst() {
		return -1
	}
	missing := float64(n) - lim.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	// Round up, so the next look finds the tokens rather than spinning.
	return time.Duration(missing/float64(r)*float64(time.Second)) + time.Microsecond
}

// limitedReader is the io.ReaderAt a runner reads a disk through.
type limitedReader struct {
	ctx context.Context
	ds  *datastore
	r   io.ReaderAt
}

// ReadAt takes the datastore's tokens, then reads. Reads larger than the
// byte burst are split, so no single read exceeds what the bucket can ever
// hold; each piece is one operation, since that is what the datastore sees.
// It returns the context's error if the job is cancelled while waiting.
func (l *limitedReader) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n := len(p) - done
		if b := l.ds.bytes.Burst(); l.ds.bytes.Limit() != rate.Inf && n > b {
			n = b
		}
		if err := l.ds.take(l.ctx, n); err != nil {
			if l.ctx.Err() == nil && errors.Is(err, errBurst) {
				continue // the budget was lowered meanwhile: split again
			}
			return done, err
		}
		m, err := l.r.ReadAt(p[done:done+n], off+int64(done))
		l.ds.meter.add(time.Now(), int64(m), 1)
		done += m
		if err != nil {
			return done, err
		}
		if m < n {
			return done, io.ErrUnexpectedEOF
		}
	}
	return done, nil
}

// meter counts delivered bytes and operations: totals, and per-second
// buckets over the last meterSeconds seconds for a recent rate.
type meter struct {
	mu         sync.Mutex
	bytes, ops int64
	sec        [meterSeconds]struct{ at, bytes, ops int64 }
}

const meterSeconds = 6

func (m *meter) add(now time.Time, bytes, ops int64) {
	s := now.Unix()
	m.mu.Lock()
	m.bytes += bytes
	m.ops += ops
	b := &m.sec[s%meterSeconds]
	if b.at != s {
		*b = struct{ at, bytes, ops int64 }{at: s}
	}
	b.bytes += bytes
	b.ops += ops
	m.mu.Unlock()
}

// read returns the totals and the mean rate over the last complete seconds.
func (m *meter) read(now time.Time) (bytes, ops int64, bytesPerSec, opsPerSec float64) {
	s := now.Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	var rb, ro int64
	for _, b := range m.sec {
		if b.at < s && b.at >= s-(meterSeconds-1) {
			rb += b.bytes
			ro += b.ops
		}
	}
	const n = meterSeconds - 1
	return m.bytes, m.ops, float64(rb) / n, float64(ro) / n
}
