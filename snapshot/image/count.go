package image

import (
	"io"
	"sync"
	"sync/atomic"
)

// ReadCounter counts the bytes read from each file of an image chain:
// what a scan costs the datastore. Its Wrap is an Options.WrapReader
// (snapshot.Options.WrapReader). It is safe for concurrent use.
type ReadCounter struct {
	mu    sync.Mutex
	order []string
	files map[string]*atomic.Int64
}

// FileRead is the bytes read from one file.
type FileRead struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

// Wrap returns r counting its reads under path.
func (c *ReadCounter) Wrap(path string, r io.ReaderAt) io.ReaderAt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.files == nil {
		c.files = map[string]*atomic.Int64{}
	}
	n, ok := c.files[path]
	if !ok {
		n = new(atomic.Int64)
		c.files[path] = n
		c.order = append(c.order, path)
	}
	return &countedReader{r: r, n: n}
}

// Files returns the bytes read per file, in the order the files were
// first opened.
func (c *ReadCounter) Files() []FileRead {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]FileRead, 0, len(c.order))
	for _, p := range c.order {
		out = append(out, FileRead{Path: p, Bytes: c.files[p].Load()})
	}
	return out
}

// Total returns the bytes read from all files.
func (c *ReadCounter) Total() (n int64) {
	for _, f := range c.Files() {
		n += f.Bytes
	}
	return n
}

type countedReader struct {
	r io.ReaderAt
	n *atomic.Int64
}

func (c *countedReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}
