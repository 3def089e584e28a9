package scanner

import (
	"cmp"
	"container/heap"
	"context"
	"strings"
	"sync"
)

// maxQueued bounds the listed files waiting for a worker (about 100 bytes
// each): the listing runs ahead of the scanning by at most this much.
const maxQueued = 1 << 16

// jobQueue hands listed files to the workers largest first, so that a
// long file is started early and never runs alone at the end while the
// other workers idle. A file of the same size as one being scanned waits
// (while others of other sizes are queued) until that scan is done: the
// two may be copies, and the second then takes the first's verdict from
// the cache instead of being scanned beside it. The lister pushes (waiting while maxQueued files
// wait), the workers pop until the queue is closed and empty. After
// abort, push refuses and pop still drains what is queued, so that every
// listed file is accounted for (scanned or skipped as canceled).
type jobQueue struct {
	mu      sync.Mutex
	cond    sync.Cond
	h       jobHeap
	busy    map[int64]int // sizes being scanned
	closed  bool
	aborted bool
}

func newJobQueue() *jobQueue {
	q := &jobQueue{busy: map[int64]int{}}
	q.cond.L = &q.mu
	return q
}

// push queues j; it returns ctx's error once the queue is aborted.
func (q *jobQueue) push(ctx context.Context, j job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.h) >= maxQueued && !q.aborted {
		q.cond.Wait()
	}
	if q.aborted {
		return cmp.Or(ctx.Err(), context.Canceled)
	}
	heap.Push(&q.h, j)
	q.cond.Broadcast()
	return nil
}

// maxPassed bounds how many files of sizes being scanned pop passes
// over to find one of another size.
const maxPassed = 64

// pop returns the largest queued file whose size is not being scanned
// (the largest queued file if there is none among the first maxPassed),
// waiting for one; ok is false once the queue is closed and empty. The
// caller calls done when it has scanned the file.
func (q *jobQueue) pop() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.h) == 0 && !q.closed {
		q.cond.Wait()
	}
	if len(q.h) == 0 {
		return job{}, false
	}
	var passed []job
	j := heap.Pop(&q.h).(job)
	for q.busy[j.size] > 0 && len(q.h) > 0 && len(passed) < maxPassed {
		passed = append(passed, j)
		j = heap.Pop(&q.h).(job)
	}
	if q.busy[j.size] > 0 && len(passed) > 0 { // all of sizes being scanned: the largest
		passed = append(passed, j)
		j, passed = passed[0], passed[1:]
	}
	for _, k := range passed {
		heap.Push(&q.h, k)
	}
	q.busy[j.size]++
	q.cond.Broadcast()
	return j, true
}

// done says that a popped file has been scanned.
func (q *jobQueue) done(j job) {
	q.mu.Lock()
	if q.busy[j.size]--; q.busy[j.size] <= 0 {
		delete(q.busy, j.size)
	}
	q.mu.Unlock()
}

// close says that nothing more will be pushed.
func (q *jobQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// abort makes push refuse, so that a lister waiting on a full queue whose
// workers are gone returns.
func (q *jobQueue) abort() {
	q.mu.Lock()
	q.aborted = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// jobHeap is a max-heap by size (then volume and name, for a repeatable
// order).
type jobHeap []job

func (h jobHeap) Len() int { return len(h) }
func (h jobHeap) Less(i, k int) bool {
	if h[i].size != h[k].size {
		return h[i].size > h[k].size
	}
	if h[i].vol != h[k].vol {
		return h[i].vol < h[k].vol
	}
	return strings.Compare(h[i].name, h[k].name) < 0
}
func (h jobHeap) Swap(i, k int) { h[i], h[k] = h[k], h[i] }
func (h *jobHeap) Push(x any)   { *h = append(*h, x.(job)) }
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = job{}
	*h = old[:len(old)-1]
	return j
}
