package qcow2

import (
	"errors"
	"fmt"
	"os"

	"github.com/snapscan/snapscan/snapshot/image"
)

// checkChain follows the backing chain from header h of the image at
// name through the qcow2 headers alone, before anything is opened as an
// image: every name must resolve inside the allowed folders (and be
// admitted), no file may come twice and the chain may be at most
// image.MaxChainDepth deep.
func checkChain(h *header, name string, opts *image.Options) error {
	seen := map[string]bool{}
	if name != "" {
		seen[image.RealPath(name)] = true
	}
	cur := name
	for depth := 1; h.backingName != ""; depth++ {
		if depth > image.MaxChainDepth {
			return fmt.Errorf("%w: more than %d backing files", ErrChain, image.MaxChainDepth)
		}
		if cur == "" {
			return fmt.Errorf("%w: backing file %q cannot be opened for an image read without a path", ErrChain, h.backingName)
		}
		p, err := opts.Resolve(cur, h.backingName)
		if err != nil {
			if cur != name {
				err = fmt.Errorf("in %s: %w", cur, err)
			}
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: backing file missing: %w", ErrChain, err)
			}
			return err
		}
		if seen[p] {
			return fmt.Errorf("%w: backing chain loops: %s names %q, which is already in the chain", ErrChain, cur, h.backingName)
		}
		seen[p] = true
		if h.backingFormat != "" && h.backingFormat != "qcow2" {
			return nil // a raw (or other) base ends the qcow2 part of the chain
		}
		next, err := peekHeader(opts, p)
		if errors.Is(err, image.ErrWrongType) && h.backingFormat == "" {
			return nil // probed as raw, like qemu
		}
		if err != nil {
			return fmt.Errorf("backing file %q of %s: %w", h.backingName, cur, err)
		}
		cur, h = p, next
	}
	return nil
}

// peekHeader reads the qcow2 header of the file at path (opened as
// opts opens files).
func peekHeader(opts *image.Options, path string) (*header, error) {
	f, err := opts.Open(path)
	if err != nil {
		return nil, err
	}
	if f.Closer != nil {
		defer f.Closer.Close()
	}
	return readHeader(f.R, f.Size)
}
