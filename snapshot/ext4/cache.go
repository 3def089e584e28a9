package ext4

import "sync"

// cacheBytes bounds the memory the metadata block cache holds.
const cacheBytes = 4 << 20

// blockCache keeps recently read metadata blocks (group descriptors, inode
// tables, extent tree and indirect blocks, directory blocks of small
// directories). It is a two-generation cache: when the young generation is
// full it becomes the old one and the previous old one is dropped, so
// memory stays within 2*cacheBytes and blocks in use stay in the young one.
type blockCache struct {
	mu    sync.Mutex
	max   int
	young map[uint64][]byte
	old   map[uint64][]byte
}

func newBlockCache(blockSize int64) *blockCache {
	n := max(int(cacheBytes/blockSize), 16)
	return &blockCache{max: n, young: make(map[uint64][]byte, n)}
}

func (c *blockCache) get(n uint64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.young[n]; ok {
		return b
	}
	if b, ok := c.old[n]; ok {
		c.putLocked(n, b)
		return b
	}
	return nil
}

func (c *blockCache) put(n uint64, b []byte) {
	c.mu.Lock()
	c.putLocked(n, b)
	c.mu.Unlock()
}

func (c *blockCache) putLocked(n uint64, b []byte) {
	if len(c.young) >= c.max {
		c.old, c.young = c.young, make(map[uint64][]byte, c.max)
	}
	c.young[n] = b
}
