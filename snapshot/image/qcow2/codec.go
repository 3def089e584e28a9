package qcow2

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Compressed clusters are raw deflate streams (compression_type 0, qemu
// writes them with a 4 KiB window) or zstd frames (compression_type 1).
// A cluster must inflate to exactly one cluster: reading stops there, so a
// hostile stream cannot make the reader produce or allocate more. Decoders
// are pooled: one is much bigger than a cluster's work.

var (
	inflaters sync.Pool // io.ReadCloser from flate.NewReader
	zstds     sync.Pool // *zstd.Decoder
)

// decompress fills dst, one cluster, from the compressed bytes src.
func decompress(kind uint8, dst, src []byte) error {
	r := bytes.NewReader(src)
	var dec io.Reader
	switch kind {
	case 0:
		zr, _ := inflaters.Get().(io.ReadCloser)
		if zr == nil {
			zr = flate.NewReader(r)
		} else if err := zr.(flate.Resetter).Reset(r, nil); err != nil {
			return err
		}
		defer inflaters.Put(zr)
		dec = zr
	case 1:
		d, _ := zstds.Get().(*zstd.Decoder)
		if d == nil {
			// No goroutines; the window cap bounds what a hostile frame
			// header can make it allocate (clusters are at most 2 MiB).
			var err error
			if d, err = zstd.NewReader(r, zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxWindow(8<<20), zstd.WithDecoderMaxMemory(64<<20)); err != nil {
				return err
			}
		} else if err := d.Reset(r); err != nil {
			return err
		}
		defer func() {
			if d.Reset(nil) == nil {
				zstds.Put(d)
			}
		}()
		dec = d
	default:
		return fmt.Errorf("compression type %d", kind)
	}
	if _, err := io.ReadFull(dec, dst); err != nil {
		return fmt.Errorf("does not decompress to %d bytes: %w", len(dst), err)
	}
	return nil
}
