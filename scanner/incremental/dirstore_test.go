package incremental_test

import (
	"bytes"
	"encoding/gob"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/scanner/incremental/incrementaltest"
)

// TestMemoryStore runs MemoryStore through the Store contract.
func TestMemoryStore(t *testing.T) {
	incrementaltest.Suite{New: func(t *testing.T, keep int) incremental.Store {
		return incremental.NewMemoryStore(keep)
	}}.Run(t)
}

// TestDirStore runs DirStore through the Store contract, reopened over
// its folder (another process, later) before each check.
func TestDirStore(t *testing.T) {
	type opened struct {
		dir  string
		keep int
	}
	var mu sync.Mutex
	dirs := map[incremental.Store]opened{}
	open := func(t *testing.T, o opened) incremental.Store {
		st, err := incremental.NewDirStore(o.dir, o.keep)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		dirs[st] = o
		mu.Unlock()
		return st
	}
	find := func(st incremental.Store) opened {
		mu.Lock()
		defer mu.Unlock()
		return dirs[st]
	}
	incrementaltest.Suite{
		New:    func(t *testing.T, keep int) incremental.Store { return open(t, opened{t.TempDir(), keep}) },
		Reopen: func(t *testing.T, st incremental.Store) incremental.Store { return open(t, find(st)) },
		Garble: func(t *testing.T, st incremental.Store, mangle func([]byte) []byte) {
			dir := filepath.Join(find(st).dir, "records")
			ents, err := os.ReadDir(dir)
			if err != nil || len(ents) != 1 {
				t.Fatalf("records folder: %v %v", ents, err)
			}
			p := filepath.Join(dir, ents[0].Name())
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, mangle(b), 0o600); err != nil {
				t.Fatal(err)
			}
		},
	}.Run(t)
}

// TestEncodedSize: a record costs about 100–140 bytes a file encoded
// (digests do not compress), well within MaxEncoded for any disk.
func TestEncodedSize(t *testing.T) {
	const files = 20000
	b, err := incremental.EncodeRecord(incrementaltest.Sample("id", "rules", files))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d files: %d bytes encoded, %.1f a file", files, len(b), float64(len(b))/files)
	if len(b) > 150*files {
		t.Errorf("%d files take %d bytes encoded: more than 150 a file", files, len(b))
	}
}

// BenchmarkRecordCodec encodes and decodes the record of a 20,000-file
// disk with EncodeRecord and, for reference, with encoding/gob (what
// DirStore wrote before), checking the decoded record's file count; it
// reports the encoded bytes per file.
func BenchmarkRecordCodec(b *testing.B) {
	r := incrementaltest.Sample("id", "rules", 20000)
	for _, c := range []struct {
		name string
		enc  func(*incremental.Record) ([]byte, error)
		dec  func([]byte) (*incremental.Record, error)
	}{
		{"zstd", incremental.EncodeRecord, incremental.DecodeRecord},
		{"gob", func(r *incremental.Record) ([]byte, error) {
			var buf bytes.Buffer
			err := gob.NewEncoder(&buf).Encode(r)
			return buf.Bytes(), err
		}, func(b []byte) (*incremental.Record, error) {
			var r incremental.Record
			err := gob.NewDecoder(bytes.NewReader(b)).Decode(&r)
			return &r, err
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var size int
			for b.Loop() {
				enc, err := c.enc(r)
				if err != nil {
					b.Fatal(err)
				}
				got, err := c.dec(enc)
				if err != nil || got.Files() != r.Files() {
					b.Fatalf("%d files decoded, want %d: %v", got.Files(), r.Files(), err)
				}
				size = len(enc)
			}
			b.ReportMetric(float64(size)/float64(r.Files()), "bytes/file")
		})
	}
}
