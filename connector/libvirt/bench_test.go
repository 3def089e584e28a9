package libvirt_test

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/libvirt/libvirttest"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// BenchmarkFreezeScanRelease freezes the running TCG guest, reads its
// whole frozen disk and every file on it through the snapshot package,
// and releases it, while the guest writes a file every 100 ms and
// measures its own timer gaps. Each iteration first records a window of
// the same length with no freeze, the reference. Reported:
//
//	freeze-api-ms, release-api-ms     the libvirt calls (snapshot, delete)
//	freeze-to-released-ms             from the freeze call to the disks released
//	guest-gap-freeze-ms, -release-ms  the guest's largest timer gap around each
//	guest-gap-idle-ms                 the same with no freeze (reference)
//	write-p50-ratio, write-p99-ratio  the guest's write+fsync latency during
//	                                  the scan / with no scan
//
// bench/connector.sh runs it.
func BenchmarkFreezeScanRelease(b *testing.B) {
	e := setup(b)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(b, e)
	ctx := context.Background()
	vm := vmByName(b, c, "guest1")
	var apiF, apiR, total, gapF, gapR, gapIdle time.Duration
	var p50s, p99s, p50i, p99i time.Duration
	for i := 0; i < b.N; i++ {
		// Reference: the same guest, no freeze, for as long as a scan takes.
		mark := e.g.Log(b).Size
		time.Sleep(3 * time.Second)
		idle := e.g.Since(b, mark)

		mark = e.g.Log(b).Size
		t0 := time.Now()
		f, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // the gap window holding the freeze is printed
		afterFreeze := e.g.Since(b, mark)
		if err := readAll(f.Disks[0].Top().Path); err != nil {
			c.Release(ctx, f)
			b.Fatal(err)
		}
		markR := e.g.Log(b).Size
		r, err := c.Release(ctx, f)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		time.Sleep(300 * time.Millisecond)
		afterRelease := e.g.Since(b, markR)
		during := e.g.Since(b, mark)
		if len(idle.Writes) < 10 || len(during.Writes) < 5 {
			b.Fatalf("too few guest writes: %d idle, %d during", len(idle.Writes), len(during.Writes))
		}
		apiF += f.Stun
		apiR += r.Stun
		gapF = max(gapF, libvirttest.Max(afterFreeze.Gaps))
		gapR = max(gapR, libvirttest.Max(afterRelease.Gaps))
		gapIdle = max(gapIdle, libvirttest.Max(idle.Gaps))
		p50s += libvirttest.Percentile(during.Writes, 50)
		p99s += libvirttest.Percentile(during.Writes, 99)
		p50i += libvirttest.Percentile(idle.Writes, 50)
		p99i += libvirttest.Percentile(idle.Writes, 99)
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(apiF)/n, "freeze-api-ms")
	b.ReportMetric(ms(apiR)/n, "release-api-ms")
	b.ReportMetric(ms(total)/n, "freeze-to-released-ms")
	b.ReportMetric(ms(gapF), "guest-gap-freeze-ms")
	b.ReportMetric(ms(gapR), "guest-gap-release-ms")
	b.ReportMetric(ms(gapIdle), "guest-gap-idle-ms")
	b.ReportMetric(float64(p50s)/float64(p50i), "write-p50-ratio")
	b.ReportMetric(float64(p99s)/float64(p99i), "write-p99-ratio")
	b.ReportMetric(ms(p50i)/n, "write-p50-idle-ms")
	b.ReportMetric(ms(p99i)/n, "write-p99-idle-ms")
}

// readAll reads every byte of the frozen disk and every file on it, as a
// scan does.
func readAll(path string) error {
	disk, err := snapshot.Open(path, nil)
	if err != nil {
		return err
	}
	defer disk.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < disk.Size; off += int64(len(buf)) {
		if _, err := disk.Image().ReadAt(buf, off); err != nil && err != io.EOF {
			return err
		}
	}
	v, err := disk.Volume("disk")
	if err != nil {
		return err
	}
	return fs.WalkDir(v.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		_, err = fs.ReadFile(v.FS, p)
		return err
	})
}

// BenchmarkChangesIncremental measures issue 16.4 on the running TCG
// guest: it holds 16 MiB of files (32 of 512 KiB) besides its own; each
// iteration scans the disk at a checkpoint, has the guest rewrite 64 KiB
// in two of the files and add a 1 MiB file (its writer adds its own small
// files meanwhile), freezes again and scans the frozen view twice: planned
// with Changes since the checkpoint, and in full. The verdicts must be
// equal. Reported (bytes read from the disk's files, image metadata
// included):
//
//	changed-KiB          what Changes reported written since the checkpoint
//	inc-read-KiB         the second scan, planned with the changes
//	full-read-KiB        the same frozen view read in full
//	inc/changed, inc/full  their ratios
//
// bench/cbt.sh runs it.
func BenchmarkChangesIncremental(b *testing.B) {
	e := setup(b)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(b, e)
	ctx := context.Background()
	vm := vmByName(b, c, "guest1")
	rulesFile := filepath.Join(b.TempDir(), "cbt.yar")
	os.WriteFile(rulesFile, []byte(`rule eicar { strings: $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $a }`+"\n"), 0o644)
	rules, err := scanner.Compile(rulesFile)
	if err != nil {
		b.Fatal(err)
	}
	sc := scanner.New(rules, scanner.Options{Workers: 2})
	disk := "bench/" + vm.ID + "/vda"
	e.g.Run(b, "mkdir -p /mnt/bench && for i in $(seq 10 41); do dd if=/dev/urandom of=/mnt/bench/f$i bs=512k count=1; done")
	b.Cleanup(func() { e.g.Run(b, "rm -rf /mnt/bench") })
	var changed, incRead, fullRead int64
	for i := 0; i < b.N; i++ {
		store := incremental.NewMemoryStore(4)
		sess := func() *incremental.Session { return incremental.NewSession(store, sc.ReuseKey(), nil) }
		f1, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
		if err != nil {
			b.Fatal(err)
		}
		countedScan(b, sc, sess(), f1.Disks[0], &incremental.Changes{Disk: disk, At: f1.Disks[0].Checkpoint})
		if _, err := c.Release(ctx, f1); err != nil {
			b.Fatal(err)
		}
		e.g.Run(b, fmt.Sprintf("dd if=/dev/urandom of=/mnt/bench/f12 bs=64k count=1 seek=3 conv=notrunc && dd if=/dev/urandom of=/mnt/bench/f30 bs=64k count=1 seek=5 conv=notrunc && dd if=/dev/urandom of=/mnt/bench/new%d bs=1M count=1", i))
		f2, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
		if err != nil {
			b.Fatal(err)
		}
		ext, err := c.Changes(ctx, f2, "vda", f1.Disks[0].Checkpoint)
		if err != nil {
			c.Release(ctx, f2)
			b.Fatal(err)
		}
		ch := incremental.Changes{Disk: disk, At: f2.Disks[0].Checkpoint, Since: f1.Disks[0].Checkpoint}
		for _, x := range ext {
			ch.Extents = append(ch.Extents, vfs.Range{Off: x.Offset, Len: x.Length})
			changed += x.Length
		}
		inc, hits, ni := countedScan(b, sc, sess(), f2.Disks[0], &ch)
		full, _, nf := countedScan(b, sc, nil, f2.Disks[0], nil)
		if _, err := c.Release(ctx, f2); err != nil {
			b.Fatal(err)
		}
		if verdictsOf(inc) != verdictsOf(full) {
			b.Fatalf("verdicts differ:\n%s\nfull:\n%s", verdictsOf(inc), verdictsOf(full))
		}
		if slices.Contains(hits, "/bench/f12") || slices.Contains(hits, "/bench/f30") || !slices.Contains(hits, "/bench/f20") {
			b.Fatalf("reused %v", hits)
		}
		incRead += ni
		fullRead += nf
		e.g.Run(b, fmt.Sprintf("rm /mnt/bench/new%d", i))
	}
	n := float64(b.N)
	b.ReportMetric(float64(changed)/n/1024, "changed-KiB")
	b.ReportMetric(float64(incRead)/n/1024, "inc-read-KiB")
	b.ReportMetric(float64(fullRead)/n/1024, "full-read-KiB")
	b.ReportMetric(float64(incRead)/float64(changed), "inc/changed")
	b.ReportMetric(float64(incRead)/float64(fullRead), "inc/full")
}
