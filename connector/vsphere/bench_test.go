package vsphere_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
	"github.com/snapscan/snapscan/snapshot"
)

// BenchmarkFreezeScanRelease freezes a vcsim VM (extended with real delta
// disks, see sim_test.go), reads every byte of its frozen 32 MiB VMDK,
// and releases it (consolidating a guest write), once with the datastore
// mounted and once over HTTP range reads, alternating in one run.
// Reported: freeze-to-released-ms for each, and their ratio.
// bench/connector.sh runs it.
func BenchmarkFreezeScanRelease(b *testing.B) {
	s := vspheretest.New(b)
	ctx := context.Background()
	var took [2]time.Duration
	for i := 0; i < b.N; i++ {
		for j, mounted := range []bool{true, false} {
			c := dialTB(b, s, mounted)
			vm := listed(b, c, vmName)
			start := time.Now()
			f, err := c.Freeze(ctx, vm.ID, connector.Options{})
			if err != nil {
				b.Fatal(err)
			}
			s.GuestWrite(b, vmName, 30<<20, 64<<10, byte(i))
			file, err := c.Files().Open(ctx, f.Disks[0].Top().Path)
			if err != nil {
				b.Fatal(err)
			}
			disk, err := snapshot.New(file, file.Size(), "", nil)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for off := int64(0); off < disk.Size; off += int64(len(buf)) {
				if _, err := disk.Image().ReadAt(buf, off); err != nil && err != io.EOF {
					b.Fatal(err)
				}
			}
			disk.Close()
			file.Close()
			if _, err := c.Release(ctx, f); err != nil {
				b.Fatal(err)
			}
			took[j] += time.Since(start)
			c.Close()
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(took[0].Milliseconds())/n, "mounted-freeze-to-released-ms")
	b.ReportMetric(float64(took[1].Milliseconds())/n, "http-freeze-to-released-ms")
	b.ReportMetric(float64(took[1])/float64(took[0]), "http/mounted")
}
