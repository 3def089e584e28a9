package appliance

import (
	"context"
	"errors"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
)

// metrics is the appliance's Prometheus registry: its own, never the
// global one. Queue state is read from queue.Metrics at scrape time.
type metrics struct {
	a   *Appliance
	reg *prometheus.Registry

	scans      *prometheus.CounterVec // by result
	incomplete *prometheus.CounterVec // by reason
	findings   prometheus.Counter
	readBytes  prometheus.Counter
	readOps    prometheus.Counter
	// scanRead is what each stored scan read, as a distribution: per-VM
	// figures are the API's (GET /v1/vms, last_bytes_read), never a
	// label here, so that /metrics stays bounded whatever the fleet.
	scanRead prometheus.Histogram
	files    prometheus.Counter
	cached   prometheus.Counter
	bytes    prometheus.Counter
	// reused counts the files whose outcome came from an incremental
	// record (a base layer, or the VM disk's previous checkpoint), not
	// read; tracked the disks planned with changed-block tracking, by
	// outcome: changes (the changed areas were used), first (no earlier
	// record of the VM disk), unknown (the changes since it were not
	// known: read in full, the log says why).
	reused   prometheus.Counter
	tracked  *prometheus.CounterVec
	jobs     *prometheus.CounterVec // by final state
	requests *prometheus.CounterVec // by code
	// Result saves: retried (the database failed), fenced (refused: the
	// run was no longer this appliance's).
	saveRetries prometheus.Counter
	fenced      prometheus.Counter
}

func newMetrics(a *Appliance) *metrics {
	m := &metrics{a: a, reg: prometheus.NewRegistry()}
	f := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "snapscan", Name: name, Help: help})
	}
	m.scans = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "scans_total",
		Help: "Scan runs by result: clean, findings, incomplete (results stored), failed_permanent, failed_transient, interrupted (cancelled or shut down)."}, []string{"result"})
	m.incomplete = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "scans_incomplete_total",
		Help: "What stored scans could not scan, by reason (the scanner's skip reasons, volume_error, spool_error, time_limit): files, volumes or scans."}, []string{"reason"})
	m.readBytes = f("scan_read_bytes_total", "Bytes scans read from datastores (image metadata and backing files included).")
	m.readOps = f("scan_read_ops_total", "Read operations scans issued to datastores.")
	m.scanRead = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "snapscan", Name: "scan_read_bytes",
		Help:    "Bytes each stored scan read from its datastores (per VM: GET /v1/vms, last_bytes_read).",
		Buckets: prometheus.ExponentialBuckets(1<<20, 4, 10)})
	m.findings = f("findings_total", "Findings stored (one per rule matching a file).")
	m.files = f("files_scanned_total", "Files and archive members checked.")
	m.cached = f("files_cached_total", "Files whose verdict came from the verdict cache.")
	m.bytes = f("bytes_scanned_total", "Bytes of file content checked.")
	m.reused = f("files_reused_total", "Files whose outcome came from an incremental scan's record (a base layer, or the VM disk's previous checkpoint) without being read.")
	m.tracked = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "tracked_disks_total",
		Help: "VM disks scanned with changed-block tracking, by outcome: changes (only what changed since the last checkpoint was read), first (no earlier record of the disk), unknown (the changes since its last checkpoint were not known: read in full, the log says why)."}, []string{"outcome"})
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "jobs_finished_total",
		Help: "Jobs that reached a final state, by state."}, []string{"state"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "http_requests_total",
		Help: "API requests by status code."}, []string{"code"})
	m.saveRetries = f("result_save_retries_total", "Result saves that failed (the database unreachable or failing) and were retried.")
	m.fenced = f("results_fenced_total", "Results refused because their run was no longer this appliance's (its lease ended and another run took the job).")
	m.reg.MustRegister(m.saveRetries, m.fenced, m.scans, m.incomplete, m.readBytes, m.readOps, m.scanRead, m.findings, m.files, m.cached, m.bytes, m.reused, m.tracked, m.jobs, m.requests, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// scanDone counts a run whose result was stored.
func (m *metrics) scanDone(r *results.Scan) {
	m.scans.WithLabelValues(string(r.Status)).Inc()
	for reason, n := range r.Incomplete {
		m.incomplete.WithLabelValues(reason).Add(float64(n))
	}
	m.findings.Add(float64(len(r.Findings)))
	m.files.Add(float64(r.Files))
	m.cached.Add(float64(r.Cached))
	m.bytes.Add(float64(r.Bytes))
	m.readBytes.Add(float64(r.BytesRead))
	m.readOps.Add(float64(r.ReadOps))
	m.scanRead.Observe(float64(r.BytesRead))
}

func (m *metrics) scanOutcome(err error) {
	switch {
	case queue.IsPermanent(err):
		m.scans.WithLabelValues("failed_permanent").Inc()
	case errors.Is(err, context.Canceled):
		// Cancelled by an operator or stopped by a shutdown.
		m.scans.WithLabelValues("interrupted").Inc()
	default:
		m.scans.WithLabelValues("failed_transient").Inc()
	}
}

func (m *metrics) jobFinished(j queue.Job) { m.jobs.WithLabelValues(string(j.State)).Inc() }

var (
	descDepth     = prometheus.NewDesc("snapscan_queue_depth", "Queued jobs by priority class.", []string{"class"}, nil)
	descWait      = prometheus.NewDesc("snapscan_queue_wait_seconds", "How long started jobs waited, by class.", []string{"class"}, nil)
	descRunning   = prometheus.NewDesc("snapscan_running_jobs", "Jobs running now.", nil, nil)
	descJobEvents = prometheus.NewDesc("snapscan_queue_jobs_total", "Queue job transitions since start: started, done, failed, cancelled, retried.", []string{"event"}, nil)
	descDSBytes   = prometheus.NewDesc("snapscan_datastore_read_bytes_total", "Bytes read from a datastore.", []string{"datastore"}, nil)
	descDSOps     = prometheus.NewDesc("snapscan_datastore_read_ops_total", "Read operations issued to a datastore.", []string{"datastore"}, nil)
	descDSRate    = prometheus.NewDesc("snapscan_datastore_read_bytes_per_second", "Bytes/s delivered by a datastore over the last few seconds.", []string{"datastore"}, nil)
	descDSOpRate  = prometheus.NewDesc("snapscan_datastore_read_ops_per_second", "Read ops/s delivered by a datastore over the last few seconds.", []string{"datastore"}, nil)
	descDSBudgetB = prometheus.NewDesc("snapscan_datastore_budget_bytes_per_second", "A datastore's byte budget (0: unlimited).", []string{"datastore"}, nil)
	descDSBudgetO = prometheus.NewDesc("snapscan_datastore_budget_ops_per_second", "A datastore's operation budget (0: unlimited).", []string{"datastore"}, nil)
	descDSSlots   = prometheus.NewDesc("snapscan_datastore_budget_scans", "Concurrent scans a datastore allows.", []string{"datastore"}, nil)
	descDSRunning = prometheus.NewDesc("snapscan_datastore_running_jobs", "Jobs reading a datastore now.", []string{"datastore"}, nil)
	descDSQueued  = prometheus.NewDesc("snapscan_datastore_queued_jobs", "Queued jobs with a disk on a datastore.", []string{"datastore"}, nil)
	descDSPaused  = prometheus.NewDesc("snapscan_datastore_paused", "1 when a datastore is paused.", []string{"datastore"}, nil)
	descSig       = prometheus.NewDesc("snapscan_signature_version", "Version of the active signature set (0: none).", []string{"name"}, nil)
	descSigServer = prometheus.NewDesc("snapscan_signature_server_version", "Newest version of the signature set the central server offered at the last pull (absent without a server or before it answered).", []string{"name"}, nil)
	descSigRules  = prometheus.NewDesc("snapscan_signature_rules", "Rules in the active signature set.", nil, nil)
	descEvents    = prometheus.NewDesc("snapscan_events_total", "Events (findings, failed and incomplete scans, unreadable VMs, signature updates) by sink and outcome: sent, dropped (queue full, or stopped before sending), failed (refused or given up).", []string{"sink", "outcome"}, nil)
	descEvQueued  = prometheus.NewDesc("snapscan_events_queued", "Events waiting in a sink's queue.", []string{"sink"}, nil)
	descEvConn    = prometheus.NewDesc("snapscan_events_connected", "1 while a syslog stream sink (tcp, tls) is connected to its collector.", []string{"sink"}, nil)
	descDBUp      = prometheus.NewDesc("snapscan_database_up", "1 when the database answers a ping.", nil, nil)
	descQueueDB   = prometheus.NewDesc("snapscan_queue_store_ok", "1 when the queue's last heartbeat reached the database (0: it starts no new work; running scans go on within their lease).", nil, nil)
	descLeases    = prometheus.NewDesc("snapscan_queue_leases_lost_total", "Times the queue lost its lease (the database unreachable for a whole lease, or the lease ended by the fleet) and stopped its runs.", nil, nil)
	descReady     = prometheus.NewDesc("snapscan_ready", "1 when the appliance takes scans (signatures active, database open).", nil, nil)
	descBudget    = prometheus.NewDesc("snapscan_scan_budget_bytes", "The process's one scan budget (memory: scan buffers of every scan; spool: large files copied to disk): its size, what is lent now, and the peak since start.", []string{"budget", "kind"}, nil)
)

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDepth, descWait, descRunning, descJobEvents, descDSBytes, descDSOps, descDSRate,
		descDSOpRate, descDSBudgetB, descDSBudgetO, descDSSlots, descDSRunning, descDSQueued, descDSPaused, descSig, descSigServer,
		descSigRules, descEvents, descEvQueued, descEvConn, descReady, descBudget, descDBUp, descQueueDB, descLeases} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	a := m.a
	qm := a.q.Metrics()
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	for _, c := range []queue.Class{queue.Rescan, queue.Scheduled, queue.OnDemand} {
		// Classes by the API's names (on_demand, scheduled, rescan).
		gauge(descDepth, float64(qm.Depth[c]), priorityName(c))
		h := qm.Wait[c]
		ch <- prometheus.MustNewConstHistogram(descWait, h.Count, h.Sum.Seconds(), h.Cumulative(), priorityName(c))
	}
	gauge(descRunning, float64(len(qm.Running)))
	for ev, v := range map[string]uint64{"started": qm.Started, "done": qm.Done, "failed": qm.Failed, "cancelled": qm.Cancelled, "retried": qm.Retried} {
		counter(descJobEvents, float64(v), ev)
	}
	for _, d := range qm.Datastores {
		counter(descDSBytes, float64(d.BytesRead), d.Name)
		counter(descDSOps, float64(d.ReadOps), d.Name)
		gauge(descDSRate, d.BytesPerSec, d.Name)
		gauge(descDSOpRate, d.OpsPerSec, d.Name)
		gauge(descDSBudgetB, d.Budget.BytesPerSec, d.Name)
		gauge(descDSBudgetO, d.Budget.OpsPerSec, d.Name)
		gauge(descDSSlots, float64(max(d.Budget.MaxScans, 1)), d.Name)
		gauge(descDSRunning, float64(d.Running), d.Name)
		gauge(descDSQueued, float64(d.Queued), d.Name)
		gauge(descDSPaused, b2f(d.Paused), d.Name)
	}
	if act := a.recv.Current(); act != nil {
		gauge(descSig, float64(act.Manifest.Version), act.Manifest.Name)
		gauge(descSigRules, float64(act.RuleCount))
	} else {
		gauge(descSig, 0, "")
		gauge(descSigRules, 0)
	}
	if st := a.serverState(); st != nil && st.Version > 0 {
		gauge(descSigServer, float64(st.Version), st.Name)
	}
	for _, s := range a.events.Stats() {
		counter(descEvents, float64(s.Sent), s.Name, "sent")
		counter(descEvents, float64(s.Dropped), s.Name, "dropped")
		counter(descEvents, float64(s.Failed), s.Name, "failed")
		gauge(descEvQueued, float64(s.Queued), s.Name)
		if s.Network == "tcp" || s.Network == "tls" {
			gauge(descEvConn, b2f(s.Connected), s.Name)
		}
	}
	ok, why := a.readiness()
	gauge(descReady, b2f(ok))
	gauge(descDBUp, b2f(!slices.Contains(why, "database unavailable")))
	gauge(descQueueDB, b2f(qm.StoreOK))
	counter(descLeases, float64(qm.LeasesLost))
	bo, bu := a.budget.Options(), a.budget.Usage()
	for _, g := range []struct {
		budget, kind string
		v            int64
	}{
		{"memory", "size", bo.Memory}, {"memory", "in_use", bu.Memory}, {"memory", "peak", bu.MemoryPeak},
		{"spool", "size", bo.Spool}, {"spool", "in_use", bu.Spool}, {"spool", "peak", bu.SpoolPeak},
	} {
		gauge(descBudget, float64(g.v), g.budget, g.kind)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
