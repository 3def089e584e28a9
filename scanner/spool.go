package scanner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// spoolChunk is the copy buffer of a spooled file, taken from the worker's
// arena (and so from the memory budget).
const spoolChunk = 4 << 20

// spooled is a file larger than the memory window, copied to a private
// temp file and mapped read-only for YARA.
type spooled struct {
	data []byte // the mapping (or empty)
	f    *os.File
	b    *Budget
	size int64 // spool space held
}

// spool copies the rest of src (hdr already read from it) to a spool
// file of the budget's folder and maps it. The file is unlinked as soon
// as it is made: only its descriptor names it, nobody else can truncate
// it (so the mapping can never fault, and YARA runs without its signal
// handlers), and it is gone when closed, even after a crash. On failure it
// returns the skip reason with the error.
func (w *worker) spool(ctx context.Context, src fs.File, hdr []byte, size int64) (*spooled, string, error) {
	b := w.r.s.budget
	if err := b.acquireSpool(ctx, size); err != nil {
		return nil, SkipCanceled, err
	}
	sp := &spooled{b: b, size: size}
	f, err := os.CreateTemp(b.spoolDir, "snapscan-spool-*")
	if err != nil {
		sp.close()
		return nil, SkipSpoolError, fmt.Errorf("spool: %w", err)
	}
	sp.f = f
	if err := os.Remove(f.Name()); err != nil {
		sp.close()
		return nil, SkipSpoolError, fmt.Errorf("spool: %w", err)
	}
	if _, err := f.Write(hdr); err != nil {
		sp.close()
		return nil, SkipSpoolError, fmt.Errorf("spool: %w", err)
	}
	mark := w.arena.mark()
	buf, err := w.arena.alloc(spoolChunk)
	if err != nil {
		sp.close()
		return nil, SkipSpoolError, fmt.Errorf("spool: copy buffer: %w", err)
	}
	defer w.arena.reset(mark)
	total := int64(len(hdr))
	for total < size {
		if err := ctx.Err(); err != nil {
			sp.close()
			return nil, SkipCanceled, err
		}
		n, rerr := io.ReadFull(src, buf[:min(int64(len(buf)), size-total)])
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				sp.close()
				return nil, SkipSpoolError, fmt.Errorf("spool: %w", err)
			}
			total += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break // shrank since listed: scanned as it is now
		}
		if rerr != nil {
			sp.close()
			return nil, SkipReadError, rerr
		}
	}
	if total > 0 {
		if sp.data, err = mapFile(f, total); err != nil {
			sp.close()
			return nil, SkipSpoolError, fmt.Errorf("spool: map: %w", err)
		}
	} else {
		sp.data = []byte{}
	}
	return sp, "", nil
}

// close unmaps and closes the spool file and returns its space.
func (sp *spooled) close() {
	if len(sp.data) > 0 {
		unmapFile(sp.data)
	}
	sp.data = nil
	if sp.f != nil {
		sp.f.Close()
		sp.f = nil
	}
	if sp.b != nil {
		sp.b.releaseSpool(sp.size)
		sp.b = nil
	}
}
