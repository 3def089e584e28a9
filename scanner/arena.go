package scanner

import (
	"errors"
	"io"
)

// arena is a worker's scan memory: one region, reserved once, from which
// the file being scanned and then the archive members expanded from it are
// taken as a stack. On Unix it is an anonymous mapping outside the Go
// heap, so that its pages cost memory only when touched and are returned
// to the system (trim) after unusually large files: peak RSS follows the
// memory budget, not the garbage collector's pacing.
type arena struct {
	buf    []byte
	off    int // first free byte
	hw     int // high-water mark since the last trim
	mapped bool
}

// errArenaFull is returned when content does not fit in what is left.
var errArenaFull = errors.New("scanner: content larger than the scan buffer")

// mark returns the current top, for reset.
func (a *arena) mark() int { return a.off }

// reset frees everything taken since mark m.
func (a *arena) reset(m int) { a.off = m }

// readFull reads all of r into the arena, up to limit bytes. It returns
// the content and exceeded=true when r holds more than limit bytes (then
// the content is not valid and the arena is left as before).
func (a *arena) readFull(r io.Reader, limit int64) (b []byte, exceeded bool, err error) {
	room := int64(len(a.buf) - a.off)
	if limit > room {
		limit = room
	}
	dst := a.buf[a.off : a.off+int(limit)]
	n, empty := 0, 0
	for n < len(dst) {
		m, err := r.Read(dst[n:])
		n += m
		// A decoder that returns nothing, again and again, on hostile
		// input must not hold the worker forever.
		if empty = empty + 1; m > 0 {
			empty = 0
		} else if empty > 100 {
			return nil, false, io.ErrNoProgress
		}
		a.hw = max(a.hw, a.off+n)
		if err == io.EOF {
			return a.take(n), false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
	// Full: one more byte means the content is over the limit.
	var one [1]byte
	for range 100 {
		m, err := r.Read(one[:])
		if m > 0 {
			return nil, true, nil
		}
		if err == io.EOF {
			return a.take(n), false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
	return nil, false, io.ErrNoProgress
}

// take claims n bytes at the top.
func (a *arena) take(n int) []byte {
	b := a.buf[a.off : a.off+n : a.off+n]
	a.off += n
	return b
}

// alloc claims n bytes for the caller to fill.
func (a *arena) alloc(n int64) ([]byte, error) {
	if n > int64(len(a.buf)-a.off) {
		return nil, errArenaFull
	}
	a.hw = max(a.hw, a.off+int(n))
	return a.take(int(n)), nil
}

// maxKeep bounds how much of an arena stays resident between files, so
// that the files below it cost no page faults. The kept pages are part of
// the memory budget (see worker.keep).
const maxKeep = 64 << 20

// trim gives back to the system the pages above keep touched since the
// last trim (after a file larger than keep).
func (a *arena) trim(keep int) {
	if a.hw > keep {
		a.release(keep, a.hw)
	}
	a.hw = min(a.hw, keep)
}
