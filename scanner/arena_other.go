//go:build !unix

package scanner

import (
	"errors"
	"os"
)

// newArena allocates from the Go heap where anonymous mappings are not
// available.
func newArena(size int) (*arena, error) { return &arena{buf: make([]byte, size)}, nil }

func (a *arena) free()                { a.buf = nil }
func (a *arena) release(from, to int) {}

// mapFile is not available without mmap: files above the memory window
// are then reported as spool_error, never as clean.
func mapFile(f *os.File, size int64) ([]byte, error) {
	return nil, errors.New("no memory mapping on this system")
}

func unmapFile(b []byte) {}

const oNonblock = 0
