//go:build unix

package scanner

import "syscall"

// newArena reserves size bytes of address space (no memory until used).
func newArena(size int) (*arena, error) {
	b, err := syscall.Mmap(-1, 0, max(size, 1), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANON|mapNoReserve)
	if err != nil {
		return nil, err
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
