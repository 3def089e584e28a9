package appliance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/appliance/report"
	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/queue"
)

// The API endpoints the console's pages read (any client may): the queue
// as the scheduler sees it, a datastore's I/O history and the event sinks'
// counters. openapi.yaml documents them.

// WaitingView is a queued scan, its place in line and why it waits.
type WaitingView struct {
	Position int              `json:"position"`
	Reason   queue.WaitReason `json:"reason"`
	Detail   string           `json:"detail,omitempty"`
	Until    *time.Time       `json:"until,omitempty"`
	Scan     ScanView         `json:"scan"`
}

// QueueView is GET /v1/queue.
type QueueView struct {
	Running      []ScanView    `json:"running"`
	Waiting      []WaitingView `json:"waiting"`
	WaitingTotal int           `json:"waiting_total"`
	MaxScans     int           `json:"max_scans"`
}

func (a *Appliance) handleQueue(w http.ResponseWriter, r *http.Request, q httpx.Query) error {
	limit, err := q.Int("limit", 100, 1, queue.MaxList)
	if err != nil {
		return err
	}
	// datastore keeps the scans with a disk on it: what a datastore's
	// card shows, without reading the whole queue each refresh (a
	// signature update's rescan queues every VM at once).
	ds := q.Get("datastore")
	if _, ok := a.cfg.datastore(ds); ds != "" && !ok {
		return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no datastore %q", ds)}
	}
	out := QueueView{Running: []ScanView{}, Waiting: []WaitingView{}}
	_, out.MaxScans = a.q.Slots()
	for _, rj := range a.q.Metrics().Running {
		if ds != "" && !slices.Contains(rj.Datastores, ds) {
			continue
		}
		j, err := a.q.Job(r.Context(), rj.ID)
		if err != nil {
			continue // ended meanwhile
		}
		out.Running = append(out.Running, a.view(j))
	}
	waiting := a.q.Waiting()
	if ds != "" {
		waiting = slices.DeleteFunc(waiting, func(w queue.WaitingJob) bool {
			return !slices.ContainsFunc(w.Job.Disks, func(d queue.Disk) bool { return d.Datastore == ds })
		})
	}
	out.WaitingTotal = len(waiting)
	for _, wj := range waiting[:min(len(waiting), int(limit))] {
		out.Waiting = append(out.Waiting, WaitingView{Position: wj.Position, Reason: wj.Reason, Detail: wj.Detail,
			Until: timePtr(wj.Until), Scan: a.view(wj.Job)})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// IOPoint is one sample of a datastore's I/O history: what it delivered
// over Interval ending At (and as rates), the budget then, and the scans
// reading it.
type IOPoint struct {
	Datastore         string        `json:"datastore"`
	At                time.Time     `json:"at"`
	Interval          time.Duration `json:"interval_ns"`
	BytesRead         int64         `json:"bytes_read"`
	ReadOps           int64         `json:"read_ops"`
	BudgetBytesPerSec float64       `json:"budget_bytes_per_sec"`
	BudgetOpsPerSec   float64       `json:"budget_ops_per_sec"`
	Running           int           `json:"running"`
	BytesPerSec       float64       `json:"bytes_per_sec"`
	OpsPerSec         float64       `json:"ops_per_sec"`
}

// maxHistory bounds the span one history request may cover.
const maxHistory = 31 * 24 * time.Hour

// historyPoints is about how many points a history answer has at most
// when it is downsampled.
const historyPoints = 360

// handleHistory serves a datastore's I/O history: the last hour from the
// in-memory trail (one sample per trailEvery), further back from the
// results store's per-interval history (historyEvery), added up into
// buckets of step over long spans; at most limit points, the latest.
func (a *Appliance) handleHistory(w http.ResponseWriter, r *http.Request, q httpx.Query) error {
	name := r.PathValue("name")
	if _, ok := a.cfg.datastore(name); !ok {
		return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no datastore %q", name)}
	}
	now := time.Now().UTC()
	since, err := q.Time("since")
	if err != nil {
		return err
	}
	until, err := q.Time("until")
	if err != nil {
		return err
	}
	if until.IsZero() {
		until = now.Add(time.Second)
	}
	if since.IsZero() {
		since = until.Add(-time.Hour)
	}
	if !since.Before(until) || until.Sub(since) > maxHistory {
		return badRequest("since, until: want since before until, at most %s apart", maxHistory)
	}
	limit, err := q.Int("limit", results.MaxPage, 1, results.MaxPage)
	if err != nil {
		return err
	}
	var step time.Duration
	if s := q.Get("step"); s != "" {
		if step, err = time.ParseDuration(s); err != nil || step < time.Second {
			return badRequest("step: %q is not a duration of at least 1s (30s, 5m, 1h)", s)
		}
	} else if span := until.Sub(since); span > 2*time.Hour {
		step = (span / historyPoints).Truncate(time.Minute) + time.Minute
	}
	// Older than the in-memory trail: the database's per-minute samples.
	fine := a.trail.Since(name, since)
	coarseUntil := until
	if len(fine) > 0 {
		if start := fine[0].At.Add(-fine[0].Interval); start.Before(until) {
			coarseUntil = start
		}
	}
	var samples []results.IOSample
	for from := since; from.Before(coarseUntil); {
		page, err := a.results.IOHistory(r.Context(), results.IOQuery{Datastore: name, Since: from, Until: coarseUntil})
		if err != nil {
			return err
		}
		samples = append(samples, page...)
		if len(page) < results.MaxPage {
			break
		}
		from = page[len(page)-1].At.Add(time.Nanosecond)
	}
	for _, s := range fine {
		if s.At.Before(until) {
			samples = append(samples, s)
		}
	}
	pts := make([]IOPoint, 0, len(samples))
	for _, s := range samples {
		p := IOPoint{Datastore: name, At: s.At.UTC(), Interval: s.Interval, BytesRead: s.BytesRead, ReadOps: s.ReadOps,
			BudgetBytesPerSec: s.BudgetBytesPerSec, BudgetOpsPerSec: s.BudgetOpsPerSec, Running: s.Running}
		if n := len(pts); step > 0 && n > 0 && s.At.Sub(pts[n-1].At.Add(-pts[n-1].Interval)) <= step {
			// Same bucket: add up what was read, keep the latest budget.
			b := &pts[n-1]
			b.Interval += s.At.Sub(b.At)
			b.At, b.BytesRead, b.ReadOps = p.At, b.BytesRead+p.BytesRead, b.ReadOps+p.ReadOps
			b.BudgetBytesPerSec, b.BudgetOpsPerSec, b.Running = p.BudgetBytesPerSec, p.BudgetOpsPerSec, max(b.Running, p.Running)
			continue
		}
		pts = append(pts, p)
	}
	if len(pts) > int(limit) {
		pts = pts[len(pts)-int(limit):]
	}
	for i := range pts {
		if secs := pts[i].Interval.Seconds(); secs > 0 {
			pts[i].BytesPerSec, pts[i].OpsPerSec = float64(pts[i].BytesRead)/secs, float64(pts[i].ReadOps)/secs
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"datastore": name, "since": since, "until": until, "step_ns": step, "samples": pts})
	return nil
}

func (a *Appliance) handleEvents(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	sinks := a.events.Stats()
	if sinks == nil {
		sinks = []events.SinkStats{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sinks": sinks})
	return nil
}

// writeHTML answers with a report page: no script may run in it, and its
// only style sheet is the console's.
func writeHTML(w http.ResponseWriter, render func(io.Writer) error) error {
	var b bytes.Buffer
	if err := render(&b); err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(b.Bytes())
	return err
}

func (a *Appliance) handleScanReport(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	j, err := a.getJob(r.Context(), id)
	if err != nil {
		return err
	}
	rep := &report.Scan{Appliance: a.cfg.Signatures.ApplianceID, Generated: time.Now().UTC(), ID: j.ID, VM: j.VM,
		State: string(j.State), Priority: priorityName(j.Class), Attempts: j.Attempts, Error: j.Error}
	for _, d := range j.Disks {
		rep.Disks = append(rep.Disks, resultDisk(d))
	}
	res, err := a.results.Scan(r.Context(), id)
	switch {
	case errors.Is(err, results.ErrNotFound):
	case err != nil:
		return err
	default:
		rep.Result = res
		if rep.Findings, err = a.results.Findings(r.Context(), results.FindingQuery{JobID: id}); err != nil {
			return err
		}
		rep.FindingsTotal = int(res.FindingCount)
	}
	if rep.Freezes, err = a.results.Freezes(r.Context(), results.FreezeQuery{JobID: id}); err != nil {
		return err
	}
	return writeHTML(w, func(out io.Writer) error { return report.WriteScan(out, rep) })
}

// reportFindings bounds the findings a period report lists, and
// reportRows the VMs it lists as not scanned within the schedule (all are
// counted), so that a fleet's report stays a document one can print.
const (
	reportFindings = 1000
	reportRows     = 1000
)

func (a *Appliance) handlePeriodReport(w http.ResponseWriter, r *http.Request, q httpx.Query) error {
	ctx := r.Context()
	now := time.Now().UTC()
	until, err := q.Time("until")
	if err != nil {
		return err
	}
	if until.IsZero() {
		until = now
	}
	since, err := q.Time("since")
	if err != nil {
		return err
	}
	if since.IsZero() {
		since = until.Add(-7 * 24 * time.Hour)
	}
	hours, err := q.Int("schedule_hours", 24, 1, 24*366)
	if err != nil {
		return err
	}
	if !since.Before(until) || until.Sub(since) > 366*24*time.Hour {
		return badRequest("since, until: want since before until, at most a year apart")
	}
	p := &report.Period{Appliance: a.cfg.Signatures.ApplianceID, Generated: now, Since: since, Until: until,
		Schedule: time.Duration(hours) * time.Hour}

	// The inventory: every VM, and those not scanned within the schedule.
	vms := map[string]results.VM{}
	for after := ""; ; {
		page, err := a.results.VMs(ctx, results.VMQuery{After: after, Limit: results.MaxPage})
		if err != nil {
			return err
		}
		for _, v := range page {
			vms[v.ID] = v
			if v.LastScanned.IsZero() || v.LastScanned.Before(until.Add(-p.Schedule)) {
				if p.NotScannedTotal++; len(p.NotScanned) < reportRows {
					p.NotScanned = append(p.NotScanned, v)
				}
			}
		}
		if len(page) < results.MaxPage {
			break
		}
		after = page[len(page)-1].ID
	}
	p.VMsKnown = len(vms)

	// Jobs that ended in the period (enqueued at most a schedule before
	// it: a job waits no longer than that in a queue that keeps up).
	latest := map[string]queue.Job{}
	for _, st := range []queue.State{queue.Done, queue.Failed, queue.Cancelled} {
		for after := int64(0); ; {
			jobs, err := a.q.List(ctx, queue.ListOptions{State: st, Since: since.Add(-p.Schedule), Until: until,
				AfterID: after, Ascending: true, Limit: queue.MaxList})
			if err != nil {
				return err
			}
			for _, j := range jobs {
				if j.FinishedAt.Before(since) || !j.FinishedAt.Before(until) {
					continue
				}
				if st != queue.Done {
					p.Failed = append(p.Failed, report.JobLine{ID: j.ID, VM: j.VM, State: string(j.State), Finished: j.FinishedAt,
						Attempts: j.Attempts, Error: j.Error})
				} else if old, ok := latest[j.VM]; !ok || j.FinishedAt.After(old.FinishedAt) {
					latest[j.VM] = j
				}
			}
			if len(jobs) < queue.MaxList {
				break
			}
			after = jobs[len(jobs)-1].ID
		}
	}
	for vm, j := range latest {
		s := report.VMScan{VM: vm, Job: j.ID, Finished: j.FinishedAt}
		// A clean scan left nothing out: the inventory says enough.
		// Others are read for what they left out.
		if v, ok := vms[vm]; ok && v.LastJob == j.ID && v.LastStatus == results.StatusClean {
			s.Status, s.Findings, s.SigVersion, s.BytesRead = v.LastStatus, v.LastFindings, v.LastSigVersion, v.LastBytesRead
		} else {
			res, err := a.results.Scan(ctx, j.ID)
			if errors.Is(err, results.ErrNotFound) {
				continue // done without a stored result: cannot happen
			} else if err != nil {
				return err
			}
			s.Status, s.Findings, s.SigVersion, s.BytesRead, s.Incomplete = res.Status, res.FindingCount, res.SigVersion, res.BytesRead, res.Incomplete
		}
		p.Scanned = append(p.Scanned, s)
	}
	slices.SortFunc(p.Scanned, func(a, b report.VMScan) int { return strings.Compare(a.VM, b.VM) })
	slices.SortFunc(p.Failed, func(a, b report.JobLine) int { return a.Finished.Compare(b.Finished) })

	// Findings of the period: the first ones listed, all counted (by the
	// store: reading 100,000 findings to count them took seconds).
	fq := results.FindingQuery{Since: since, Until: until, Limit: reportFindings}
	total, err := a.results.CountFindings(ctx, fq)
	if err != nil {
		return err
	}
	p.FindingsTotal = int(total)
	if p.Findings, err = a.results.Findings(ctx, fq); err != nil {
		return err
	}
	return writeHTML(w, func(out io.Writer) error { return report.WritePeriod(out, p) })
}

// ServerState is what this appliance knows of the central signature
// server's newest version (GET /v1/signatures, "server").
type ServerState struct {
	URL string `json:"url"`
	// Name is the signature set (the active one's, else the configured).
	Name string `json:"name,omitempty"`
	// CheckedAt is the last pull; Version the newest the server offered
	// (0: unknown); UpToDate says it is the one active here; Error is why
	// the last pull failed or its bundle was refused.
	CheckedAt *time.Time `json:"checked_at,omitempty"`
	Version   uint64     `json:"version,omitempty"`
	UpToDate  bool       `json:"up_to_date"`
	Error     string     `json:"error,omitempty"`
}

// serverState is nil without a central server.
func (a *Appliance) serverState() *ServerState {
	if a.cfg.Signatures.ServerURL == "" {
		return nil
	}
	p := a.recv.LastPull()
	st := &ServerState{URL: a.cfg.Signatures.ServerURL, Name: a.cfg.Signatures.Name, CheckedAt: timePtr(p.At),
		Version: p.ServerVersion, UpToDate: p.UpToDate && !p.At.IsZero(), Error: p.Err}
	if act := a.recv.Current(); act != nil {
		st.Name = act.Manifest.Name
	}
	return st
}
