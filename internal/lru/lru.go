// Package lru holds the one bounded cache snapscan's readers share: a
// least-recently-used map with a fixed number of entries, safe for
// concurrent use. Format and file-system readers cache metadata blocks,
// allocation tables and bitmaps with it; the scanner caches verdicts.
package lru

import (
	"container/list"
	"sync"
)

// Cache maps keys to values, holding at most its capacity of entries (or,
// made with NewWeighted, of weight) and evicting the least recently used
// ones when full. The zero value is not usable; make one with New or
// NewWeighted. Values are shared with callers: a caller must not modify a
// value it got from or put into the cache.
type Cache[K comparable, V any] struct {
	mu     sync.Mutex
	max    int
	total  int            // sum of the entries' weights
	weight func(K, V) int // nil: every entry weighs 1
	ll     *list.List     // front: most recently used
	items  map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key K
	val V
	w   int
}

// New returns a cache of at most n entries (at least 1).
func New[K comparable, V any](n int) *Cache[K, V] {
	return &Cache[K, V]{max: max(n, 1), ll: list.New(), items: make(map[K]*list.Element)}
}

// NewWeighted returns a cache whose entries' weights (as weight reports
// them, for example bytes) sum to at most maxWeight. An entry heavier than
// maxWeight on its own is still kept, alone: the cache then holds only
// that entry, so that the most recent value is always cached and memory
// stays within the larger of maxWeight and the heaviest value, which the
// caller holds anyway.
func NewWeighted[K comparable, V any](maxWeight int, weight func(K, V) int) *Cache[K, V] {
	c := New[K, V](maxWeight)
	c.weight = weight
	return c
}

// Get returns the value for key and marks it recently used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Put stores val under key, evicting the least recently used entry when
// the cache is full.
func (c *Cache[K, V]) Put(key K, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := 1
	if c.weight != nil {
		w = max(c.weight(key, val), 0)
	}
	if e, ok := c.items[key]; ok {
		ent := e.Value.(*entry[K, V])
		c.total += w - ent.w
		ent.val, ent.w = val, w
		c.ll.MoveToFront(e)
	} else {
		c.items[key] = c.ll.PushFront(&entry[K, V]{key, val, w})
		c.total += w
	}
	for c.total > c.max && c.ll.Len() > 1 {
		last := c.ll.Back()
		ent := last.Value.(*entry[K, V])
		c.ll.Remove(last)
		delete(c.items, ent.key)
		c.total -= ent.w
	}
}

// Weight returns the sum of the entries' weights (their number for a cache
// made with New).
func (c *Cache[K, V]) Weight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Len returns the number of entries held.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
