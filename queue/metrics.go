package queue

import (
	"cmp"
	"slices"
	"time"
)

// WaitBuckets are the upper bounds of the wait-time histogram buckets.
var WaitBuckets = []time.Duration{
	time.Second, 10 * time.Second, time.Minute, 5 * time.Minute, 15 * time.Minute,
	time.Hour, 4 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

// WaitHistogram counts job starts by how long the job waited.
type WaitHistogram struct {
	Count uint64
	Sum   time.Duration
	// Counts[i] counts waits <= WaitBuckets[i] and > WaitBuckets[i-1];
	// the last element counts waits above every bound.
	Counts []uint64
}

func (h *WaitHistogram) observe(d time.Duration) {
	h.Count++
	h.Sum += d
	i, _ := slices.BinarySearch(WaitBuckets, d)
	h.Counts[i]++
}

// Cumulative returns the histogram as Prometheus wants it: upper bound in
// seconds -> number of waits at or below it (the +Inf bucket is Count).
func (h WaitHistogram) Cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(WaitBuckets))
	var n uint64
	for i, b := range WaitBuckets {
		n += h.Counts[i]
		out[b.Seconds()] = n
	}
	return out
}

// RunningJob describes a running job in Metrics.
type RunningJob struct {
	ID         int64
	VM         string
	Class      Class
	Datastores []string
	StartedAt  time.Time
	Attempt    int
}

// DatastoreMetrics is one datastore's budget and what it delivered.
type DatastoreMetrics struct {
	Name    string
	Budget  Budget
	Paused  bool
	Running int // jobs holding a slot
	Queued  int // queued jobs with a disk on it
	// Totals since the process started, for Prometheus counters.
	BytesRead, ReadOps int64
	// Mean over the last few complete seconds, to compare with Budget.
	BytesPerSec, OpsPerSec float64
}

// Metrics is a snapshot of the queue.
type Metrics struct {
	At time.Time
	// Depth counts queued jobs by class (due or not yet).
	Depth map[Class]int
	// Wait holds, per class, how long started jobs had waited.
	Wait map[Class]WaitHistogram
	// Running lists the running jobs, by id.
	Running    []RunningJob
	Datastores []DatastoreMetrics // by name
	// Job outcomes since the process started. Retried counts transient
	// failures sent back to the queue.
	Started, Done, Failed, Cancelled, Retried uint64
	// StoreOK: the queue's last heartbeat reached the store (while not,
	// it starts no job). LeasesLost counts the times it lost its lease
	// and stopped its runs.
	StoreOK    bool
	LeasesLost uint64
}

// Metrics returns a snapshot of the queue's state and counters.
func (q *Queue) Metrics() Metrics {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	m := Metrics{
		At:    q.cfg.Now(),
		Depth: map[Class]int{}, Wait: map[Class]WaitHistogram{},
		Started: q.stats.started, Done: q.stats.done, Failed: q.stats.failed,
		Cancelled: q.stats.cancelled, Retried: q.stats.retried,
		StoreOK: q.dbOK, LeasesLost: q.stats.leasesLost,
	}
	queuedOn := map[string]int{}
	for c := Class(0); c < numClasses; c++ {
		m.Depth[c] = 0
		h := q.wait[c]
		h.Counts = slices.Clone(h.Counts)
		m.Wait[c] = h
	}
	for _, e := range q.queued {
		m.Depth[e.Class]++
		for _, d := range e.ds {
			queuedOn[d.name]++
		}
	}
	for _, rj := range q.running {
		m.Running = append(m.Running, RunningJob{ID: rj.job.ID, VM: rj.job.VM, Class: rj.job.Class,
			Datastores: rj.job.Datastores(), StartedAt: rj.job.StartedAt, Attempt: rj.job.Attempts})
	}
	slices.SortFunc(m.Running, func(a, b RunningJob) int { return cmp.Compare(a.ID, b.ID) })
	for _, name := range q.dsNames {
		d := q.ds[name]
		dm := DatastoreMetrics{Name: name, Budget: d.cfg.Budget, Paused: d.cfg.Paused,
			Running: d.running, Queued: queuedOn[name]}
		dm.BytesRead, dm.ReadOps, dm.BytesPerSec, dm.OpsPerSec = d.meter.read(now)
		m.Datastores = append(m.Datastores, dm)
	}
	return m
}
