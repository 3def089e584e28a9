package vfs

import (
	"fmt"
	"runtime"
	"strings"
)

// PanicError is what a panic in a file-system reader becomes: the value it
// panicked with and where. It wraps ErrCorrupt.
type PanicError struct {
	Value any    // what the reader panicked with
	Where string // the reader's function and line that panicked, if found
}

// Error says that the reader failed and where, without the whole stack.
func (e *PanicError) Error() string {
	if e.Where == "" {
		return fmt.Sprintf("%v: panic: %v", ErrCorrupt, e.Value)
	}
	return fmt.Sprintf("%v: panic: %v (in %s)", ErrCorrupt, e.Value, e.Where)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *PanicError) Unwrap() error { return ErrCorrupt }

// recoverTo, deferred by every method that calls into the reader, turns a
// panic into an error of op on name, naming the volume, in *err. A
// goroutine of the caller's survives whatever the reader does with hostile
// bytes; the reader's own state is not touched, so a reader must not leave
// a lock held across a panic (they release locks with defer).
func (f *FS) recoverTo(op, name string, err *error) {
	if p := recover(); p != nil {
		*err = f.wrap(op, name, &PanicError{Value: p, Where: panicSite()})
	}
}

// Recover is recoverTo for code outside an FS that calls into a reader,
// such as a constructor: deferred, it turns a panic into an error wrapping
// ErrCorrupt that starts with what (for example "ext4").
func Recover(what string, err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%s: %w", what, &PanicError{Value: p, Where: panicSite()})
	}
}

// panicSite returns the function and line where the panic being recovered
// started: the first frame below the runtime's panic machinery.
func panicSite() string {
	pc := make([]uintptr, 32)
	n := runtime.Callers(3, pc)
	frames := runtime.CallersFrames(pc[:n])
	inPanic := false
	for {
		fr, more := frames.Next()
		switch {
		case strings.HasPrefix(fr.Function, "runtime."):
			inPanic = true
		case inPanic:
			return fmt.Sprintf("%s %s:%d", fr.Function, shortFile(fr.File), fr.Line)
		}
		if !more {
			return ""
		}
	}
}

// shortFile keeps the last two elements of a source path.
func shortFile(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		if j := strings.LastIndexByte(p[:i], '/'); j >= 0 {
			return p[j+1:]
		}
	}
	return p
}
