package scanner

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hillu/go-yara/v4"

	"github.com/snapscan/snapscan/internal/testenv"
)

// BenchmarkScan scans the fixture tree (archives included) with the
// parity rules; bytes/s counts the files' bytes.
func BenchmarkScan(b *testing.B) {
	testenv.NeedTools(b, "zip", "tar", "gzip", "zstd", "bzip2", "xz", "perl", "go")
	tree := testenv.Fixture(b, "scanner.sh") + "/tree"
	rules, err := Compile("testdata/rules/parity")
	if err != nil {
		b.Fatal(err)
	}
	s := New(rules, Options{})
	t := Target{Name: "bench", Volumes: []Volume{{ID: "v", FS: os.DirFS(tree)}}}
	var bytes int64
	for b.Loop() {
		rep, err := s.Scan(context.Background(), t)
		if err != nil {
			b.Fatal(err)
		}
		bytes = rep.Bytes()
	}
	b.SetBytes(bytes)
}

// TestBenchDriver is the snapscan side of bench/scan-vs-yara.sh, run from
// a compiled test binary: it scans SNAPSCAN_BENCH_TARGET (a folder) with
// the rules at SNAPSCAN_BENCH_RULES and prints one line of numbers.
// SNAPSCAN_BENCH_MODE=ceiling instead loads every file into memory first
// and times only YARA over those bytes (the in-memory ceiling).
func TestBenchDriver(t *testing.T) {
	target := os.Getenv("SNAPSCAN_BENCH_TARGET")
	if target == "" {
		t.Skip("driver for bench/scan-vs-yara.sh")
	}
	rules, err := Compile(os.Getenv("SNAPSCAN_BENCH_RULES"))
	if err != nil {
		t.Fatal(err)
	}
	workers, _ := strconv.Atoi(os.Getenv("SNAPSCAN_BENCH_WORKERS"))
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if os.Getenv("SNAPSCAN_BENCH_MODE") == "ceiling" {
		ceiling(t, rules, target, workers)
		return
	}
	s := New(rules, Options{Workers: workers})
	start := time.Now()
	rep, err := s.Scan(context.Background(), Target{Name: target, Volumes: []Volume{{ID: "dir", FS: os.DirFS(target)}}})
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	v := rep.Volumes[0]
	fmt.Printf("snapscan files=%d bytes=%d seconds=%.2f MBps=%.1f findings=%d skipped=%v\n",
		v.Files, v.Bytes, d.Seconds(), float64(v.Bytes)/d.Seconds()/1e6, len(rep.Findings), v.Skipped)
}

// ceiling times YARA alone over files already in memory, with the same
// number of workers, one yara scanner each, and no externals changes.
func ceiling(t *testing.T, rules *Rules, dir string, workers int) {
	var bufs [][]byte
	var total int64
	fs.WalkDir(os.DirFS(dir), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(dir + "/" + p)
		if err == nil && len(b) > 0 && len(b) <= DefaultSpoolAbove {
			bufs = append(bufs, b)
			total += int64(len(b))
		}
		return nil
	})
	next := make(chan []byte)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ys, err := yara.NewScanner(rules.y)
			if err != nil {
				t.Error(err)
				return
			}
			defer ys.Destroy()
			ys.SetFlags(scanFlagNoTryCatch)
			var cb collector
			ys.SetCallback(&cb)
			for b := range next {
				cb.matches = nil
				ys.ScanMem(b)
			}
		}()
	}
	for _, b := range bufs {
		next <- b
	}
	close(next)
	wg.Wait()
	d := time.Since(start)
	fmt.Printf("ceiling files=%d bytes=%d seconds=%.2f MBps=%.1f\n", len(bufs), total, d.Seconds(), float64(total)/d.Seconds()/1e6)
}
