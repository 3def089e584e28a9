package qcow2

import (
	"bufio"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"
	qlog "github.com/lima-vm/go-qcow2reader/log"
)

func init() {
	qcow2.SetDecompressor(qcow2.CompressionTypeZlib, newDeflate)
	qcow2.SetDecompressor(qcow2.CompressionTypeZstd, newZstd)
	// The library prints warnings (dirty bit, odd extensions) with the
	// standard logger; snapscan checks those conditions itself and logs
	// only through loggers it is given.
	qlog.SetWarnFunc(nil)
}

// go-qcow2reader calls Read once per cluster and, on a short read, starts
// decompressing the same cluster again from its beginning: the readers
// below fill the buffer completely, and are pooled because a decoder is
// much bigger than one cluster's work.

type deflateReader struct {
	br *bufio.Reader
	fr io.ReadCloser
}

var deflatePool sync.Pool

func newDeflate(r io.Reader) (io.ReadCloser, error) {
	d, _ := deflatePool.Get().(*deflateReader)
	if d == nil {
		// A 64 KiB buffer reads a compressed 64 KiB cluster in one call.
		d = &deflateReader{br: bufio.NewReaderSize(r, 64<<10)}
		d.fr = flate.NewReader(d.br)
		return d, nil
	}
	d.br.Reset(r)
	if err := d.fr.(flate.Resetter).Reset(d.br, nil); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *deflateReader) Read(p []byte) (int, error) { return readFull(d.fr, p) }

func (d *deflateReader) Close() error {
	d.br.Reset(nil)
	deflatePool.Put(d)
	return nil
}

type zstdReader struct{ d *zstd.Decoder }

var zstdPool sync.Pool

func newZstd(r io.Reader) (io.ReadCloser, error) {
	z, _ := zstdPool.Get().(*zstdReader)
	if z == nil {
		// One goroutine-free decoder; the window cap bounds what a
		// hostile frame header can make it allocate (clusters are at
		// most 2 MiB).
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(8<<20), zstd.WithDecoderMaxMemory(64<<20))
		if err != nil {
			return nil, err
		}
		return &zstdReader{d: d}, nil
	}
	if err := z.d.Reset(r); err != nil {
		return nil, err
	}
	return z, nil
}

func (z *zstdReader) Read(p []byte) (int, error) { return readFull(z.d, p) }

func (z *zstdReader) Close() error {
	if z.d.Reset(nil) == nil {
		zstdPool.Put(z)
	}
	return nil
}

// readFull reads len(p) bytes unless the stream ends first, which it
// reports as io.EOF with the bytes it got.
func readFull(r io.Reader, p []byte) (int, error) {
	n, err := io.ReadFull(r, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}
