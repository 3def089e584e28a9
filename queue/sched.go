package queue

import (
	"cmp"
	"container/heap"
	"math"
	"slices"
	"time"

	"github.com/google/btree"
)

// The scheduler's indexes, so that the work of a pass grows with what
// starts and ends in it and with the number of datastores, not with the
// number of jobs waiting:
//
//   - each datastore keeps its due queued jobs in key order (a B-tree), so
//     a pass looks at the head of each open datastore and skips a full or
//     paused one whole;
//   - jobs not yet due wait in a heap by the time they become due;
//   - jobs with a deadline sit in a heap by deadline.
//
// Entries leave the heaps lazily: one that was forgotten is dropped when
// it reaches the top.

func entryCmp(a, b *entry) int {
	if c := a.key.Compare(b.key); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func entryLess(a, b *entry) bool { return entryCmp(a, b) < 0 }

func newDueTree() *btree.BTreeG[*entry] { return btree.NewG(16, entryLess) }

// entryHeap is a min-heap of entries by at(e).
type entryHeap struct {
	es []*entry
	at func(*entry) time.Time
}

func (h *entryHeap) Len() int           { return len(h.es) }
func (h *entryHeap) Less(i, j int) bool { return h.at(h.es[i]).Before(h.at(h.es[j])) }
func (h *entryHeap) Swap(i, j int)      { h.es[i], h.es[j] = h.es[j], h.es[i] }
func (h *entryHeap) Push(x any)         { h.es = append(h.es, x.(*entry)) }
func (h *entryHeap) Pop() any {
	e := h.es[len(h.es)-1]
	h.es[len(h.es)-1] = nil
	h.es = h.es[:len(h.es)-1]
	return e
}

// top returns the first live entry, dropping forgotten ones.
func (h *entryHeap) top() *entry {
	for len(h.es) > 0 {
		if e := h.es[0]; !e.gone {
			return e
		}
		heap.Pop(h)
	}
	return nil
}

type schedIndex struct {
	waiting   entryHeap // not yet due, by readyAt
	deadlines entryHeap // by Deadline
}

func (s *schedIndex) init() {
	s.waiting.at = (*entry).readyAt
	s.deadlines.at = func(e *entry) time.Time { return e.Deadline }
}

// index files a new entry. q.mu must be held.
func (q *Queue) index(e *entry, now time.Time) {
	if !e.Deadline.IsZero() {
		heap.Push(&q.sched.deadlines, e)
	}
	if e.readyAt().After(now) {
		heap.Push(&q.sched.waiting, e)
		return
	}
	q.makeDue(e)
}

// makeDue puts e in its datastores' queues. q.mu must be held.
func (q *Queue) makeDue(e *entry) {
	if e.due || e.gone {
		return
	}
	e.due = true
	for _, d := range e.ds {
		d.due.ReplaceOrInsert(e)
	}
}

// unDue takes e out of its datastores' queues. q.mu must be held.
func (q *Queue) unDue(e *entry) {
	if !e.due {
		return
	}
	e.due = false
	for _, d := range e.ds {
		d.due.Delete(e)
	}
}

// advance moves jobs that became due into their datastores' queues and
// returns the entries past their deadline (taken out of the queues), and
// when to look again.
func (q *Queue) advance(now time.Time) (expired []*entry, next time.Time) {
	for e := q.sched.waiting.top(); e != nil; e = q.sched.waiting.top() {
		if r := e.readyAt(); r.After(now) {
			next = r
			break
		}
		heap.Pop(&q.sched.waiting)
		q.makeDue(e)
	}
	for e := q.sched.deadlines.top(); e != nil; e = q.sched.deadlines.top() {
		if e.Deadline.After(now) {
			if next.IsZero() || e.Deadline.Before(next) {
				next = e.Deadline
			}
			break
		}
		heap.Pop(&q.sched.deadlines)
		q.unDue(e)
		expired = append(expired, e)
	}
	return expired, next
}

// pick returns the job to start next, or nil if none fits: see the
// package documentation for the rule. It looks at the head of each
// datastore's queue, not at every job.
func (q *Queue) pick(now time.Time) *entry {
	full := func(d *datastore) bool { return d.running+d.remote >= d.cfg.Budget.maxScans() }
	eligible := func(e *entry) bool {
		return q.runningVM[e.VM]+q.remoteVM[e.VM] == 0 && !q.paused(e) && !e.noSlotUntil.After(now)
	}
	heads := map[*datastore]*entry{}
	head := func(d *datastore) *entry {
		if h, ok := heads[d]; ok {
			return h
		}
		var h *entry
		d.due.Ascend(func(e *entry) bool {
			if eligible(e) {
				h = e
				return false
			}
			return true
		})
		heads[d] = h
		return h
	}
	// Holds: the first job in line on every full datastore it needs,
	// waited long enough, holds its free datastores, in key order; a job
	// blocked by an earlier hold holds nothing.
	var holders []*entry
	for _, name := range q.dsNames {
		d := q.ds[name]
		if d.cfg.Paused || !full(d) {
			continue
		}
		h := head(d)
		if h == nil || len(h.ds) < 2 || now.Sub(h.ageBase()) < q.cfg.ReserveAfter || slices.Contains(holders, h) {
			continue
		}
		first, free := true, false
		for _, g := range h.ds {
			if full(g) {
				first = first && head(g) == h
			} else {
				free = true
			}
		}
		if first && free {
			holders = append(holders, h)
		}
	}
	slices.SortFunc(holders, entryCmp)
	heldBy := map[*datastore]*entry{}
	for _, h := range holders {
		if slices.ContainsFunc(h.ds, func(d *datastore) bool { return heldBy[d] != nil }) {
			continue
		}
		for _, d := range h.ds {
			if !full(d) {
				heldBy[d] = h
			}
		}
	}
	fits := func(e *entry) bool {
		for _, d := range e.ds {
			if full(d) {
				return false
			}
			if h := heldBy[d]; h != nil && h != e && entryCmp(h, e) < 0 {
				return false
			}
		}
		return true
	}
	// The free worker goes first to a job whose datastores run the fewest
	// scans: a scan on an idle datastore uses budget nobody else can,
	// while another scan on a busy one mostly shares its rate. Then the
	// best level, then round-robin from the cursor.
	var best *entry
	bestLoad, bestLevel, bestDist, bestWait := 0, int64(0), 0, false
	for _, name := range q.dsNames {
		d := q.ds[name]
		if d.cfg.Paused || full(d) {
			continue
		}
		var c *entry
		d.due.Ascend(func(e *entry) bool {
			if eligible(e) && fits(e) {
				c = e
				return false
			}
			return true
		})
		if c == nil || c == best {
			continue
		}
		// A job's load is that of its least busy datastore: a job that
		// would make an idle datastore busy goes first even if its
		// other datastores are busy (the last jobs of a datastore that
		// also need a busy one would otherwise start only when the busy
		// one drains, leaving this one idle meanwhile).
		load, dist := math.MaxInt, len(q.dsNames)
		for _, d := range c.ds {
			load = min(load, d.running+d.remote)
			pos, _ := slices.BinarySearch(q.dsNames, d.name)
			dist = min(dist, (pos-q.rr+len(q.dsNames))%len(q.dsNames))
		}
		level := q.level(c, now)
		// Among equally loaded datastores, one whose rate share this
		// queue holds first: a scan there reads at once, where another
		// waits for a share to move from another appliance.
		wait := slices.ContainsFunc(c.ds, (*datastore).needsShare)
		switch {
		case best == nil, load < bestLoad,
			load == bestLoad && !wait && bestWait,
			load == bestLoad && wait == bestWait && level > bestLevel,
			load == bestLoad && wait == bestWait && level == bestLevel && dist < bestDist,
			load == bestLoad && wait == bestWait && level == bestLevel && dist == bestDist && entryCmp(c, best) < 0:
			best, bestLoad, bestLevel, bestDist, bestWait = c, load, level, dist, wait
		}
	}
	if best != nil {
		q.rr = (q.rr + bestDist + 1) % len(q.dsNames)
	}
	return best
}
