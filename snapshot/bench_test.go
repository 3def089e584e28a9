package snapshot_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// benchImages are the images bench/image-read.sh makes from one raw disk
// (an ext4 of real files from /usr), with the format each is declared as.
var benchImages = []struct{ file, format string }{
	{"disk.raw", "raw"}, {"disk.qcow2", "qcow2"}, {"disk-zlib.qcow2", "qcow2"}, {"disk-zstd.qcow2", "qcow2"},
	{"monolithicSparse.vmdk", "vmdk"}, {"streamOptimized.vmdk", "vmdk"}, {"monolithicFlat.vmdk", "vmdk"},
	{"twoGbMaxExtentSparse.vmdk", "vmdk"}, {"twoGbMaxExtentFlat.vmdk", "vmdk"},
	{"dynamic.vhd", "vhd"}, {"fixed.vhd", "vhd"}, {"dynamic.vhdx", "vhdx"}, {"fixed.vhdx", "vhdx"},
}

// BenchmarkDiskRead reads each disk bench/image-read.sh makes, start to
// end in 4 MiB chunks, through snapshot.Open with its declared format.
// Before the timed loop it checks that the bytes read hash to the raw
// disk's SHA-256 (disk.raw.sha256, written by the script), so a fast
// wrong read cannot score. Besides MB/s of virtual disk it reports
// alloc-MB/s (the raw disk's allocated bytes, disk.raw.alloc, per second:
// the formats skip unallocated ranges) and the share of the data that is
// stored compressed, from Map. It skips unless SNAPSCAN_BENCH_DIR names
// the script's folder.
func BenchmarkDiskRead(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("SNAPSCAN_BENCH_DIR is not set; bench/image-read.sh sets it")
	}
	want, err := os.ReadFile(filepath.Join(dir, "disk.raw.sha256"))
	if err != nil {
		b.Fatal(err)
	}
	var alloc float64
	if s, err := os.ReadFile(filepath.Join(dir, "disk.raw.alloc")); err == nil {
		for _, c := range strings.TrimSpace(string(s)) {
			alloc = alloc*10 + float64(c-'0')
		}
	}
	for _, bi := range benchImages {
		path := filepath.Join(dir, bi.file)
		b.Run(bi.file, func(b *testing.B) {
			d, err := snapshot.Open(path, &snapshot.Options{Format: bi.format})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			img := d.Image()
			buf := make([]byte, 4<<20)
			h := sha256.New()
			readAll(b, img, buf, h)
			if got := hex.EncodeToString(h.Sum(nil)); !bytes.HasPrefix(want, []byte(got)) {
				b.Fatalf("bytes read hash to %s, disk.raw to %s", got, want)
			}
			var data, comp int64
			m, err := img.Map(0, img.Size())
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range m {
				if !e.Zero && e.Layer >= 0 {
					data += e.Length
					if e.Compressed {
						comp += e.Length
					}
				}
			}
			b.SetBytes(img.Size())
			b.ResetTimer()
			for b.Loop() {
				readAll(b, img, buf, nil)
			}
			per := b.Elapsed().Seconds() / float64(b.N)
			if alloc > 0 {
				b.ReportMetric(alloc/1e6/per, "alloc-MB/s")
			}
			b.ReportMetric(100*float64(comp)/float64(max(data, 1)), "%compressed")
		})
	}
}

func readAll(b *testing.B, img image.Image, buf []byte, h io.Writer) {
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n, err := img.ReadAt(buf, off)
		if err != nil && (err != io.EOF || off+int64(n) < img.Size()) {
			b.Fatal(err)
		}
		if h != nil {
			h.Write(buf[:n])
		}
	}
}
