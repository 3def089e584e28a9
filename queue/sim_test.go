package queue_test

import (
	"context"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"

	"fmt"
	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/queue/postgres"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// simDatastore is one datastore of the simulation: its budget, the read
// size its runner uses, and how much of the bottleneck's time its work is.
type simDatastore struct {
	budget   queue.Budget
	readSize int
	load     float64 // fraction of the target makespan its work takes
}

// The datastores differ in budget, concurrency and read size; ds3 and ds7
// are bound by operations, the others by bytes. ds0 is the bottleneck.
var simDatastores = []simDatastore{
	{queue.Budget{MaxScans: 1, BytesPerSec: 4 << 20}, 1 << 20, 1.0},
	{queue.Budget{MaxScans: 1, BytesPerSec: 3 << 20, OpsPerSec: 100}, 256 << 10, 0.9},
	{queue.Budget{MaxScans: 2, BytesPerSec: 2 << 20, OpsPerSec: 40}, 64 << 10, 0.85},
	{queue.Budget{MaxScans: 1, BytesPerSec: 1 << 20, OpsPerSec: 30}, 16 << 10, 0.8},
	{queue.Budget{MaxScans: 3, BytesPerSec: 6 << 20}, 512 << 10, 0.9},
	{queue.Budget{MaxScans: 1, BytesPerSec: 512 << 10}, 128 << 10, 0.75},
	{queue.Budget{MaxScans: 2, BytesPerSec: 8 << 20, OpsPerSec: 200}, 1 << 20, 0.7},
	{queue.Budget{MaxScans: 1, BytesPerSec: 2 << 20, OpsPerSec: 60}, 8 << 10, 0.85},
	{queue.Budget{MaxScans: 1, BytesPerSec: 1536 << 10}, 256 << 10, 0.95},
	{queue.Budget{MaxScans: 2, BytesPerSec: 3 << 20, OpsPerSec: 500}, 32 << 10, 0.6},
}

// simShared is how many VMs of each datastore also have a disk on another.
const simShared = 2

// simDisk is a disk of real bytes: a window of a shared random pool.
type simDisk struct {
	ds          int
	shift, size int
	rec         *simRecorder
}

type simRead struct {
	at time.Time
	n  int
}

type simRecorder struct {
	mu    sync.Mutex
	reads [][]simRead // per datastore
}

func (d *simDisk) ReadAt(p []byte, off int64) (int, error) {
	at := time.Now()
	if off < 0 || off+int64(len(p)) > int64(d.size) {
		return 0, fmt.Errorf("sim: read %d at %d beyond disk size %d", len(p), off, d.size)
	}
	n := copy(p, simPool[d.shift+int(off):])
	d.rec.mu.Lock()
	d.rec.reads[d.ds] = append(d.rec.reads[d.ds], simRead{at, n})
	d.rec.mu.Unlock()
	return n, nil
}

var simPool = func() []byte {
	b := make([]byte, 16<<20)
	r := rand.NewChaCha8([32]byte{'s', 'n', 'a', 'p'})
	r.Read(b)
	return b
}()

type simResult struct {
	makespan, bound, bytesBound time.Duration
	cpuPerJob                   time.Duration // the process's CPU (scheduler, store, runners) per job
	worstRatio                  float64
	worst                       string // worst window, for the log
	perDS                       []string
}

// simScale is the size of a simulation and where it runs.
type simScale struct {
	vms    int // a multiple of 10 × copies
	copies int // of the ten datastore profiles: 10 × copies datastores
	queues int // queue instances (appliances) on the store
	// open returns a handle on the run's one store, called once per
	// queue; nil is SQLite in a temporary folder.
	open func(t testing.TB) queue.Store
}

// runSimulation enqueues sc.vms VMs on 10 × sc.copies datastores (the ten
// profiles of simDatastores, repeated) at once, runs sc.queues queues on
// one store until all are done, and checks the budgets on the recorded
// reads. target is the bottleneck datastore's makespan bound.
func runSimulation(t testing.TB, target time.Duration, sc simScale) simResult {
	vms := sc.vms
	profiles := simDatastores
	var simDatastores []simDatastore
	for range sc.copies {
		simDatastores = append(simDatastores, profiles...)
	}
	nds := len(simDatastores)
	rng := rand.New(rand.NewPCG(1, 2))
	rec := &simRecorder{reads: make([][]simRead, nds)}

	// Size each datastore's disks so its work takes load × target: bytes
	// at its byte budget or operations at its op budget, whichever binds.
	disks := make([][]*simDisk, vms)
	var extra []func()
	perDS := vms / nds
	for ds, sd := range simDatastores {
		chunk := sd.readSize
		if b, _ := sd.budget.Burst(); b > 0 {
			chunk = min(chunk, b)
		}
		rate := sd.budget.BytesPerSec
		if o := sd.budget.OpsPerSec; o > 0 {
			rate = min(rate, o*float64(chunk))
		}
		total := sd.load * target.Seconds() * rate
		// Two VMs of the next datastore also have a small disk here, a
		// quarter of this datastore's mean disk.
		mean := total / (float64(perDS) + simShared/4)
		weights := make([]float64, perDS)
		var sum float64
		for i := range weights {
			weights[i] = 0.5 + rng.Float64()
			sum += weights[i]
		}
		for i := range perDS {
			size := max(int(mean*float64(perDS)*weights[i]/sum)/512*512, 512)
			vm := ds*perDS + i
			disks[vm] = append(disks[vm], &simDisk{ds: ds, shift: rng.IntN(8 << 20), size: size, rec: rec})
		}
		for k := range simShared {
			vm := ((ds+1)%nds)*perDS + k*perDS/simShared
			size := int(mean/4) / 512 * 512
			extra = append(extra, func() {
				disks[vm] = append(disks[vm], &simDisk{ds: ds, shift: rng.IntN(8 << 20), size: size, rec: rec})
			})
		}
	}
	for _, f := range extra {
		f()
	}
	byPath := map[string]*simDisk{}
	reqs := make([]queue.Request, vms)
	for vm := range reqs {
		reqs[vm] = queue.Request{VM: fmt.Sprintf("vm%04d", vm), Class: queue.Class(vm % 3), Reason: "sim"}
		for k, d := range disks[vm] {
			p := fmt.Sprintf("/ds%d/vm%04d-%d.raw", d.ds, vm, k)
			byPath[p] = d
			reqs[vm].Disks = append(reqs[vm].Disks, queue.Disk{Path: p, Datastore: fmt.Sprint("ds", d.ds)})
		}
	}

	running := make([]atomic.Int32, nds)
	maxRunning := make([]atomic.Int32, nds)
	var runs atomic.Int64
	run := func(ctx context.Context, j queue.Job, wrap queue.Wrap) error {
		runs.Add(1)
		var wg sync.WaitGroup
		errs := make([]error, len(j.Disks))
		for k, jd := range j.Disks {
			d := byPath[jd.Path]
			n := running[d.ds].Add(1)
			for {
				m := maxRunning[d.ds].Load()
				if n <= m || maxRunning[d.ds].CompareAndSwap(m, n) {
					break
				}
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer running[d.ds].Add(-1)
				r := wrap(jd.Datastore, d)
				buf := make([]byte, simDatastores[d.ds].readSize)
				h := crc32.NewIEEE()
				for off := 0; off < d.size; off += len(buf) {
					n := min(len(buf), d.size-off)
					if _, err := r.ReadAt(buf[:n], int64(off)); err != nil {
						errs[k] = err
						return
					}
					h.Write(buf[:n])
				}
				if got, want := h.Sum32(), crc32.ChecksumIEEE(simPool[d.shift:d.shift+d.size]); got != want {
					errs[k] = queue.Permanent(fmt.Errorf("disk %s: checksum %08x, want %08x", jd.Path, got, want))
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}

	if sc.open == nil {
		path := filepath.Join(t.TempDir(), "sim.db")
		sc.open = func(t testing.TB) queue.Store { _, s := openStore(t, path); return s }
	}
	// Enough workers that the datastores, not the workers, bound the
	// makespan (12 for the ten profiles, as before).
	workers := 0
	for _, sd := range simDatastores {
		workers += sd.budget.MaxScansOrOne()
	}
	workers = (workers*12/15 + sc.queues - 1) / sc.queues
	var mu sync.Mutex
	finished := map[int64][]queue.Job{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var qs []*queue.Queue
	var stores []queue.Store
	for i := range sc.queues {
		st := sc.open(t)
		ts := &timedStore{Store: st}
		timed = append(timed, ts)
		st = ts
		stores = append(stores, st)
		q, err := queue.New(ctx, st, run, queue.Config{MaxScans: workers, MaxAttempts: 1, Appliance: fmt.Sprint("sim-", i),
			OnFinish: func(j queue.Job) { mu.Lock(); finished[j.ID] = append(finished[j.ID], j); mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		for ds, sd := range simDatastores {
			if err := q.SetBudget(ctx, fmt.Sprint("ds", ds), sd.budget); err != nil {
				t.Fatal(err)
			}
		}
		qs = append(qs, q)
	}
	// Enqueued through the queues in turn, as the fleet's API would.
	var ids []int64
	per := (len(reqs) + sc.queues - 1) / sc.queues
	for i, q := range qs {
		jobs, err := q.EnqueueBatch(ctx, reqs[i*per:min((i+1)*per, len(reqs))])
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			ids = append(ids, j.ID)
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	for _, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := q.Serve(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	deadline := time.Now().Add(10*target + time.Minute)
	for {
		mu.Lock()
		n := len(finished)
		mu.Unlock()
		if n == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			wg.Wait()
			t.Fatalf("%d of %d jobs finished in %v", n, len(ids), time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cpu := cpuTime() - cpu0
	cancel()
	wg.Wait()
	var end time.Time
	for id, fs := range finished {
		if len(fs) != 1 {
			t.Errorf("job %d reported finished %d times", id, len(fs))
		}
		j := fs[0]
		if j.FinishedAt.After(end) {
			end = j.FinishedAt
		}
		if j.State != queue.Done {
			t.Errorf("job %d (%s): %s: %s", j.ID, j.VM, j.State, j.Error)
		}
	}

	// Every job is done exactly once, in the store.
	var done, other int
	for o := (queue.ListOptions{Limit: queue.MaxList}); ; {
		page, err := stores[0].List(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page {
			if j.State == queue.Done && j.Attempts == 1 {
				done++
			} else {
				other++
			}
		}
		if len(page) < o.Limit {
			break
		}
		o.BeforeID = page[len(page)-1].ID
	}
	if done != vms || other != 0 || runs.Load() != int64(vms) {
		t.Errorf("%d jobs done once, %d otherwise, %d runs; want %d, 0, %d", done, other, runs.Load(), vms, vms)
	}

	res := simResult{makespan: end.Sub(start), cpuPerJob: cpu / time.Duration(vms)}
	var worstRatio float64
	for ds, sd := range simDatastores {
		if m := int(maxRunning[ds].Load()); m > sd.budget.MaxScansOrOne() {
			t.Errorf("ds%d: %d scans at once, budget %d", ds, m, sd.budget.MaxScansOrOne())
		}
		reads := rec.reads[ds]
		slices.SortFunc(reads, func(a, b simRead) int { return a.at.Compare(b.at) })
		var bytes, ops float64
		for _, r := range reads {
			bytes += float64(r.n)
		}
		ops = float64(len(reads))
		need := time.Duration(bytes / sd.budget.BytesPerSec * float64(time.Second))
		res.bytesBound = max(res.bytesBound, need)
		if sd.budget.OpsPerSec > 0 {
			need = max(need, time.Duration(ops/sd.budget.OpsPerSec*float64(time.Second)))
		}
		res.bound = max(res.bound, need)
		// Idle time: gaps between reads beyond what the budget imposes.
		var idle time.Duration
		var idles []string
		for i := 1; i < len(reads); i++ {
			pace := time.Duration(float64(reads[i-1].n) / sd.budget.BytesPerSec * float64(time.Second))
			if sd.budget.OpsPerSec > 0 {
				pace = max(pace, time.Duration(float64(time.Second)/sd.budget.OpsPerSec))
			}
			if g := reads[i].at.Sub(reads[i-1].at) - pace; g > 100*time.Millisecond {
				idle += g
				idles = append(idles, fmt.Sprintf("%v@%v", g.Round(time.Millisecond), reads[i-1].at.Sub(start).Round(10*time.Millisecond)))
				if g > 2*time.Second && testing.Verbose() {
					from, to := reads[i-1].at, reads[i].at
					for _, fs := range finished {
						j := fs[0]
						if !slices.Contains(j.Datastores(), fmt.Sprint("ds", ds)) || j.FinishedAt.Before(from) || j.StartedAt.After(to) {
							continue
						}
						t.Logf("ds%d gap %v..%v: job %d %s %v run %v..%v by %s", ds, from.Sub(start), to.Sub(start), j.ID, j.VM, j.Datastores(),
							j.StartedAt.Sub(start), j.FinishedAt.Sub(start), j.Holder)
					}
				}
			}
		}
		if len(reads) > 0 {
			res.perDS = append(res.perDS, fmt.Sprintf("ds%d: %.1f MiB %d ops need %v idle %v %v busy %v..%v",
				ds, bytes/(1<<20), len(reads), need.Round(time.Millisecond), idle.Round(time.Millisecond), idles,
				reads[0].at.Sub(start).Round(time.Millisecond), reads[len(reads)-1].at.Sub(start).Round(time.Millisecond)))
		}

		// Sliding 1-second windows starting at every read: what the
		// datastore received, less one burst, within budget + 5%.
		burstBytes, burstOps := sd.budget.Burst()
		var wb float64
		j := 0
		for i := range reads {
			for ; j < len(reads) && reads[j].at.Sub(reads[i].at) < time.Second; j++ {
				wb += float64(reads[j].n)
			}
			wo := float64(j - i)
			if r := (wb - float64(burstBytes)) / sd.budget.BytesPerSec; r > 1.05 {
				t.Errorf("ds%d: %.0f bytes in the second from %v: %.3f× budget after burst", ds, wb, reads[i].at.Sub(start), r)
			} else if r > worstRatio {
				worstRatio = r
				res.worst = fmt.Sprintf("ds%d bytes %.3f× budget after burst", ds, r)
			}
			if o := sd.budget.OpsPerSec; o > 0 {
				if r := (wo - float64(burstOps)) / o; r > 1.05 {
					t.Errorf("ds%d: %.0f ops in the second from %v: %.3f× budget after burst", ds, wo, reads[i].at.Sub(start), r)
				} else if r > worstRatio {
					worstRatio = r
					res.worst = fmt.Sprintf("ds%d ops %.3f× budget after burst", ds, r)
				}
			}
			wb -= float64(reads[i].n)
		}
	}
	res.worstRatio = worstRatio
	for _, ts := range timed {
		if !testing.Verbose() {
			break
		}
		t.Logf("apply: %d calls, %d transitions, mean %v max %v; changes %d mean %v", ts.n, ts.ts, ts.total/time.Duration(max(ts.n, 1)), ts.max, ts.ch, ts.chT/time.Duration(max(ts.ch, 1)))
	}
	timed = nil
	return res
}

// TestSimulation: 1,000 VMs on 10 datastores, all enqueued at once.
func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 20 seconds")
	}
	res := runSimulation(t, 15*time.Second, simScale{vms: 1000, copies: 1, queues: 1})
	t.Logf("makespan %v, lower bound %v (bytes only %v): %.3f×; worst window: %s",
		res.makespan.Round(time.Millisecond), res.bound.Round(time.Millisecond), res.bytesBound.Round(time.Millisecond),
		res.makespan.Seconds()/res.bound.Seconds(), res.worst)
	for _, l := range res.perDS {
		t.Log(l)
	}
	// The 10% target is measured by BenchmarkSimulation on a quiet
	// machine. Here the bound only catches a scheduler that idles
	// datastores wholesale (a cascade of holds once made it 4×), with room
	// for a loaded 2-core machine, where 1.5× has been seen.
	if !raceEnabled && res.makespan > res.bound*5/2 {
		t.Errorf("makespan %v is more than 2.5× the lower bound %v", res.makespan, res.bound)
	}
}

// BenchmarkSimulation reports the makespan of the simulation over its
// lower bound (max over datastores of bytes ÷ byte budget, or operations ÷
// op budget where that is larger), the worst 1-second window of any
// datastore over its budget (after one burst), and the process's CPU per
// job, at 1,000 VMs on 10 datastores and 10,000 on 50, with one queue on
// SQLite and three queues (appliances) on one PostgreSQL. Run with
// -benchtime=1x.
func BenchmarkSimulation(b *testing.B) {
	parent := b
	var srv *pgtest.Server
	pg := func(t testing.TB) queue.Store {
		pool, err := pgxpool.New(context.Background(), simDSN)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		s, err := postgres.New(context.Background(), pool)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, c := range []struct {
		name string
		sc   simScale
	}{
		{"vms=1000/ds=10/sqlite/queues=1", simScale{vms: 1000, copies: 1, queues: 1}},
		{"vms=1000/ds=10/postgres/queues=3", simScale{vms: 1000, copies: 1, queues: 3, open: pg}},
		{"vms=10000/ds=50/sqlite/queues=1", simScale{vms: 10000, copies: 5, queues: 1}},
		{"vms=10000/ds=50/postgres/queues=3", simScale{vms: 10000, copies: 5, queues: 3, open: pg}},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.sc.open != nil && srv == nil {
				// One server for every sub-benchmark: it stops with the parent.
				srv = pgtest.StartOptions(parent, pgtest.Options{Fsync: true})
			}
			for b.Loop() {
				if c.sc.open != nil {
					simDSN = srv.NewDatabase(b)
				}
				res := runSimulation(b, 15*time.Second, c.sc)
				b.ReportMetric(res.makespan.Seconds()/res.bound.Seconds(), "makespan/bound")
				b.ReportMetric(res.worstRatio, "worst-window/budget")
				b.ReportMetric(res.makespan.Seconds(), "makespan-s")
				b.ReportMetric(res.bound.Seconds(), "bound-s")
				b.ReportMetric(float64(res.cpuPerJob.Microseconds()), "cpu-µs/job")
				if testing.Verbose() {
					b.Logf("worst window: %s", res.worst)
					for _, l := range res.perDS {
						b.Log(l)
					}
				}
			}
		})
	}
}

// simDSN is the database of the PostgreSQL simulation being run.
var simDSN string
