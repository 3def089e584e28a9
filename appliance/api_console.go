package appliance

import (
	"fmt"
	"net/http"
	"time"

	"github.com/snapscan/snapscan/appliance/events"
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
	out := QueueView{Running: []ScanView{}, Waiting: []WaitingView{}}
	_, out.MaxScans = a.q.Slots()
	for _, rj := range a.q.Metrics().Running {
		j, err := a.q.Job(r.Context(), rj.ID)
		if err != nil {
			continue // ended meanwhile
		}
		out.Running = append(out.Running, a.view(j))
	}
	waiting := a.q.Waiting()
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
