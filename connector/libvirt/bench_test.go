package libvirt_test

import (
	"context"
	"io"
	"io/fs"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/libvirt/libvirttest"
	"github.com/snapscan/snapscan/snapshot"
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
