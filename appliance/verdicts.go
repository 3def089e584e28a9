package appliance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/scanner"
)

// verdictCache is the scanner's verdict cache over the results store, so
// that a file already scanned (in another VM, or before a restart) under
// the same rule set is not scanned again. Recent verdicts are also held in
// memory; new ones are written in batches (a lost batch only costs
// rescans). It implements scanner.Cache and is safe for concurrent use.
type verdictCache struct {
	store results.Verdicts
	mem   *lru.Cache[scanner.CacheKey, scanner.Verdict]

	mu      sync.Mutex
	pending []results.VerdictEntry
	flushMu sync.Mutex // one batch write at a time
}

// Batch sizes: a write transaction per cacheBatch verdicts; beyond
// maxPending unwritten verdicts new ones are only kept in memory.
const (
	cacheBatch = 512
	maxPending = 8192
)

// cacheTimeout bounds one lookup or batch write: the scanner's cache has no
// context, and a database that hangs must cost a rescan, not a stuck
// worker.
const cacheTimeout = 10 * time.Second

func newVerdictCache(store results.Verdicts, memEntries int) *verdictCache {
	return &verdictCache{store: store, mem: lru.New[scanner.CacheKey, scanner.Verdict](memEntries)}
}

func verdictKey(k scanner.CacheKey) results.VerdictKey {
	return results.VerdictKey{Content: k.Content, Rules: k.Rules, Context: k.Context}
}

// Get implements scanner.Cache: a miss, a database error and a verdict
// that cannot be decoded all mean "scan the file".
func (c *verdictCache) Get(k scanner.CacheKey) (scanner.Verdict, bool) {
	if v, ok := c.mem.Get(k); ok {
		return v, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), cacheTimeout)
	defer cancel()
	rv, err := c.store.Verdict(ctx, verdictKey(k))
	if err != nil {
		return scanner.Verdict{}, false
	}
	v := scanner.Verdict{Matches: make([]scanner.Match, 0, len(rv.Matches))}
	for _, m := range rv.Matches {
		v.Matches = append(v.Matches, scannerMatch(m))
	}
	if len(v.Matches) == 0 {
		v.Matches = nil
	}
	c.mem.Put(k, v)
	return v, true
}

// Put implements scanner.Cache.
func (c *verdictCache) Put(k scanner.CacheKey, v scanner.Verdict) {
	c.mem.Put(k, v)
	e := results.VerdictEntry{Key: verdictKey(k)}
	for _, m := range v.Matches {
		e.Verdict.Matches = append(e.Verdict.Matches, resultMatch(m))
	}
	c.mu.Lock()
	if len(c.pending) < maxPending {
		c.pending = append(c.pending, e)
	}
	full := len(c.pending) >= cacheBatch
	c.mu.Unlock()
	if full {
		ctx, cancel := context.WithTimeout(context.Background(), cacheTimeout)
		_ = c.Flush(ctx) // kept in memory; the next flush retries nothing lost but time
		cancel()
	}
}

// Flush writes the verdicts not yet in the database. On failure they are
// dropped (the files are scanned again next time), and the error says so.
func (c *verdictCache) Flush(ctx context.Context) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := c.store.PutVerdicts(ctx, batch); err != nil {
		return fmt.Errorf("%w: %w", errVerdictsLost, err)
	}
	return nil
}

var errVerdictsLost = errors.New("appliance: verdicts not saved (the files are scanned again next time)")

func resultMeta(ms []scanner.MetaEntry) []results.Meta {
	out := make([]results.Meta, len(ms))
	for i, m := range ms {
		out[i] = results.Meta{Key: m.Key, Value: m.Value}
	}
	return out
}

func resultMatch(m scanner.Match) results.Match {
	return results.Match{Rule: m.Rule, Namespace: m.Namespace, Tags: m.Tags, Meta: resultMeta(m.Meta)}
}

func scannerMatch(m results.Match) scanner.Match {
	meta := make([]scanner.MetaEntry, len(m.Meta))
	for i, e := range m.Meta {
		meta[i] = scanner.MetaEntry{Key: e.Key, Value: e.Value}
	}
	return scanner.Match{Rule: m.Rule, Namespace: m.Namespace, Tags: m.Tags, Meta: meta}
}
