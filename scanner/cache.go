package scanner

import (
	"crypto/sha256"

	"github.com/snapscan/snapscan/internal/lru"
)

// CacheKey identifies a verdict.
//
// A verdict depends on the content, on the rules, and — when the rules
// read the externals filename, filepath, extension or owner — on where the
// file is. Content is the BLAKE3-256 digest of the bytes scanned, keyed
// with a fixed key (the same on every machine, so that a persistent cache
// outlives the process; BLAKE3 is collision-resistant, so a guest cannot
// make a malicious file share a clean file's key); it is not the SHA-256
// that Finding reports, which is computed for findings only. Rules is Rules.ID();
// Context is the SHA-256 of those four externals when the rule set refers
// to any of them (detected in the sources; always for compiled rules files
// that declare them), else all zero. Identical files at the same path (the
// same package in many guests, clones of a VM) therefore share a verdict
// under any rule set, and identical files anywhere share one under rules
// that ignore paths. filetype is not part of Context: it follows from the
// content.
type CacheKey struct {
	Content [32]byte
	Rules   string
	Context [32]byte
}

// Verdict is the cached outcome of scanning some content: the rules that
// matched (none for a clean file). Only completed scans are cached, never
// timeouts or errors.
type Verdict struct {
	Matches []Match
}

// Cache keeps verdicts. Implementations must be safe for concurrent use:
// every scan worker calls Get and Put. Put may drop entries at will (the
// cost is a rescan); a Get must only return what a Put stored under the
// same key. Callers treat returned verdicts as read-only.
type Cache interface {
	Get(key CacheKey) (Verdict, bool)
	Put(key CacheKey, v Verdict)
}

// MemoryCache is a Cache held in memory, bounded by a number of entries,
// evicting the least recently used (internal/lru). It is safe for
// concurrent use.
type MemoryCache struct {
	c *lru.Cache[CacheKey, Verdict]
}

// NewMemoryCache returns a cache of at most maxEntries verdicts (at least
// one). An entry of a clean file costs about 200 bytes.
func NewMemoryCache(maxEntries int) *MemoryCache {
	return &MemoryCache{c: lru.New[CacheKey, Verdict](maxEntries)}
}

// Get returns the verdict stored under key.
func (c *MemoryCache) Get(key CacheKey) (Verdict, bool) { return c.c.Get(key) }

// Put stores a verdict, evicting the least recently used beyond the bound.
func (c *MemoryCache) Put(key CacheKey, v Verdict) { c.c.Put(key, v) }

// Len returns the number of verdicts held.
func (c *MemoryCache) Len() int { return c.c.Len() }

// contextKey hashes the path-like externals of one file.
func contextKey(ext *externals) [32]byte {
	h := sha256.New()
	for _, s := range []string{ext.filename, ext.filepath, ext.extension, ext.owner} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}
