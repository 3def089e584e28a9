//go:build unix

package scanner

import (
	"os"
	"syscall"
)

// hugeArena: see adviseHuge (SNAPSCAN_NO_HUGEPAGES=1 turns it off, to
// measure).
var hugeArena = os.Getenv("SNAPSCAN_NO_HUGEPAGES") == ""

// newArena reserves size bytes of address space (no memory until used).
func newArena(size int) (*arena, error) {
	b, err := syscall.Mmap(-1, 0, max(size, 1), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANON|mapNoReserve)
	if err != nil {
		return nil, err
	}
	if hugeArena {
		adviseHuge(b)
	}
	return &arena{buf: b, mapped: true}, nil
}

// free unmaps the arena; it must not be used afterwards.
func (a *arena) free() {
	if a.mapped && a.buf != nil {
		syscall.Munmap(a.buf)
	}
	a.buf = nil
}

// release returns the pages of [from, to) to the system; they read as
// zeros when touched again.
func (a *arena) release(from, to int) {
	const page = 1 << 12
	from = (from + page - 1) &^ (page - 1)
	if to > from {
		syscall.Madvise(a.buf[from:to], syscall.MADV_DONTNEED)
	}
}

// mapFile maps the first size bytes of f read-only.
func mapFile(f *os.File, size int64) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
}

func unmapFile(b []byte) { syscall.Munmap(b) }

// oNonblock opens a file without waiting (a fifo in a file's place).
const oNonblock = syscall.O_NONBLOCK
