//go:build !unix

package scanner

// newArena allocates from the Go heap where anonymous mappings are not
// available.
func newArena(size int) (*arena, error) { return &arena{buf: make([]byte, size)}, nil }

func (a *arena) free()                { a.buf = nil }
func (a *arena) release(from, to int) {}
