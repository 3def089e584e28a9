package queue_test

import (
	"context"
	"sync"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// timedStore times a simulation's store writes and change reads, for the
// benchmark's log (-v): what a scheduling pass waits for.
type timedStore struct {
	queue.Store
	mu    sync.Mutex
	n     int
	total time.Duration
	max   time.Duration
	ts    int
	ch    int
	chT   time.Duration
}

func (s *timedStore) Apply(ctx context.Context, ts []queue.Transition) ([]queue.Result, error) {
	t0 := time.Now()
	r, err := s.Store.Apply(ctx, ts)
	d := time.Since(t0)
	s.mu.Lock()
	s.n++
	s.ts += len(ts)
	s.total += d
	s.max = max(s.max, d)
	s.mu.Unlock()
	return r, err
}

func (s *timedStore) Changes(ctx context.Context, after int64, limit int) ([]queue.Job, int64, error) {
	t0 := time.Now()
	a, b, err := s.Store.Changes(ctx, after, limit)
	s.mu.Lock()
	s.ch++
	s.chT += time.Since(t0)
	s.mu.Unlock()
	return a, b, err
}

// timed are the stores of the simulation running.
var timed []*timedStore
