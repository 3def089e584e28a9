package appliance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// apiError is a handler's failure: Code and Msg go to the client, Err
// (which may name files, paths and SQL) only to the log. It is the one
// error type of snapscan's HTTP services.
type apiError = httpx.Error

func badRequest(format string, args ...any) error { return httpx.BadRequest(format, args...) }

// statusWriter records the status for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(c int) {
	if w.code == 0 {
		w.code = c
	}
	w.ResponseWriter.WriteHeader(c)
}
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Handler returns the appliance's HTTP API on its own ServeMux:
// /v1/... (authenticated), /healthz, /readyz, /metrics (authenticated).
// openapi.yaml beside this file documents it.
func (a *Appliance) Handler() http.Handler {
	mux := http.NewServeMux()
	// Every handler takes the query parameters it names and no other:
	// an unknown or repeated one is refused with 400 naming it, never
	// ignored (a filter ignored widens the answer).
	strict := func(params []string, h queryHandler) http.Handler {
		return httpx.Handle(a.log, func(w http.ResponseWriter, r *http.Request) error {
			q, err := httpx.StrictQuery(r, params...)
			if err != nil {
				return err
			}
			return h(w, r, q)
		})
	}
	// Answers are gzipped for a client that takes it (a page of 100
	// findings is 110 KB of JSON, 15 KB gzipped).
	handle := func(pattern string, params []string, h queryHandler) {
		mux.Handle(pattern, a.auth(a.tokens, httpx.Compress(strict(params, h))))
	}
	mux.Handle("GET /healthz", strict(nil, func(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true})
		return nil
	}))
	mux.Handle("GET /readyz", strict(nil, a.handleReady))
	mux.Handle("GET /metrics", a.auth(a.tokens, promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{})))
	handle("POST /v1/scans", nil, a.handleSubmit)
	handle("GET /v1/scans", []string{"state", "limit", "before", "vm"}, a.handleListScans)
	handle("GET /v1/scans/{id}", nil, a.handleGetScan)
	handle("POST /v1/scans/{id}/cancel", nil, a.handleCancel)
	handle("GET /v1/findings", []string{"vm", "datastore", "rule", "tag", "scan", "since", "until", "after", "limit"}, a.handleFindings)
	handle("GET /v1/datastores", nil, a.handleDatastores)
	handle("GET /v1/datastores/{name}/history", []string{"since", "until", "step", "limit"}, a.handleHistory)
	handle("GET /v1/vms", []string{"search", "scanned", "after", "limit"}, a.handleVMs)
	handle("GET /v1/vms/{id}", nil, a.handleVM)
	handle("GET /v1/vms/{id}/freezes", []string{"before", "limit"}, a.handleVMFreezes)
	handle("POST /v1/datastores/{name}/pause", nil, a.handlePause(true))
	handle("POST /v1/datastores/{name}/resume", nil, a.handlePause(false))
	handle("GET /v1/signatures", nil, a.handleSignatures)
	handle("GET /v1/appliances", nil, a.handleAppliances)
	handle("GET /v1/queue", []string{"limit", "datastore"}, a.handleQueue)
	handle("GET /v1/events", nil, a.handleEvents)
	handle("GET /v1/reports/scans/{id}", nil, a.handleScanReport)
	handle("GET /v1/reports/period", []string{"since", "until", "schedule_hours"}, a.handlePeriodReport)
	// The console: pages for a browser, which logs in with an API token
	// and then calls this API with its session (see auth).
	mux.Handle("/console/", a.console.Handler())
	mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusSeeOther))
	// The central server pushes here; the receiver verifies the bundle,
	// the token only says who may try.
	mux.Handle("POST /v1/signatures", a.auth(a.pushTokens, a.recv.Handler()))
	mux.Handle("/", httpx.Handle(a.log, func(w http.ResponseWriter, r *http.Request) error {
		return &apiError{Code: http.StatusNotFound, Msg: "no such endpoint: " + r.Method + " " + r.URL.Path}
	}))
	return a.count(mux)
}

// queryHandler is an API handler given its checked query parameters.
type queryHandler func(w http.ResponseWriter, r *http.Request, q httpx.Query) error

// count feeds the request counter.
func (a *Appliance) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		a.m.requests.WithLabelValues(strconv.Itoa(sw.code)).Inc()
	})
}

// auth lets a request through when it bears one of tokens, or a client
// certificate verified against server.tls.client_ca (httpx.RequireBearer:
// the scheme in any case, digests compared in constant time, refusals
// logged without the secret), or the console's session cookie of a login
// with one of tokens (with its CSRF token when it changes something:
// console.Authenticate).
func (a *Appliance) auth(tokens httpx.Tokens, next http.Handler) http.Handler {
	bearer := httpx.RequireBearer(tokens, next, httpx.BearerOptions{Log: a.log, ClientCert: a.clientCAs != nil})
	return a.console.Authenticate(tokens, bearer, next)
}

func hashTokens(ts []string) httpx.Tokens { return httpx.NewTokens(ts...) }

func writeJSON(w http.ResponseWriter, code int, v any) { httpx.WriteJSON(w, code, v) }

// maxBody bounds a request body (a submit with MaxDisks disks is a few KiB).
const maxBody = 1 << 20

// decode reads a JSON body strictly (httpx.DecodeJSON): one value, no
// unknown or repeated names, at most maxBody bytes.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	return httpx.DecodeJSON(w, r, v, maxBody)
}

func (a *Appliance) readiness() (bool, []string) {
	var why []string
	if a.recv.Current() == nil {
		why = append(why, "no signature set active")
	}
	if a.draining.Load() {
		why = append(why, "shutting down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if a.db == nil || a.db.PingContext(ctx) != nil {
		why = append(why, "database unavailable")
	} else if !a.q.Metrics().StoreOK {
		why = append(why, "queue cannot reach the database")
	}
	return len(why) == 0, why
}

func (a *Appliance) handleReady(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	ok, why := a.readiness()
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reasons": why})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
	return nil
}

// SubmitRequest is the body of POST /v1/scans.
type SubmitRequest struct {
	VM    string `json:"vm"`
	Disks []struct {
		Datastore string `json:"datastore"`
		Path      string `json:"path"`
		// Format is the disk's image format as the hypervisor knows it
		// ("raw", "qcow2", "vmdk", "vhd", "vhdx"); without it the format
		// is probed, and a probed image may open no file the submitter
		// did not list in Layers.
		Format string `json:"format,omitempty"`
		// Layers are the other files of the disk's chain (extents,
		// backing files, parents), paths on the same datastore.
		Layers []string `json:"layers,omitempty"`
	} `json:"disks"`
	// Priority: "on_demand" (default), "scheduled" or "rescan".
	Priority string `json:"priority,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Deadline, RFC 3339: the job is given up if not finished by then.
	Deadline *time.Time `json:"deadline,omitempty"`
}

// ScanView is a scan as the API shows it.
type ScanView struct {
	ID              int64        `json:"id"`
	VM              string       `json:"vm"`
	State           queue.State  `json:"state"`
	Priority        string       `json:"priority"`
	Reason          string       `json:"reason,omitempty"`
	Disks           []queue.Disk `json:"disks"`
	Attempts        int          `json:"attempts"`
	Error           string       `json:"error,omitempty"`
	CancelRequested bool         `json:"cancel_requested,omitempty"`
	EnqueuedAt      time.Time    `json:"enqueued_at"`
	NotBefore       *time.Time   `json:"not_before,omitempty"`
	StartedAt       *time.Time   `json:"started_at,omitempty"`
	FinishedAt      *time.Time   `json:"finished_at,omitempty"`
	Deadline        *time.Time   `json:"deadline,omitempty"`
	Progress        *Progress    `json:"progress,omitempty"`
	// Result is the stored result (status, incomplete reasons, totals)
	// once the job has one; Volumes and Findings come with it.
	Result   *results.Scan     `json:"result,omitempty"`
	Volumes  []results.Volume  `json:"volumes,omitempty"`
	Findings []results.Finding `json:"findings,omitempty"`
	// Freezes are the hypervisor snapshots the job took of a connector's
	// VM, with their stun times (one per run that froze it).
	Freezes []results.Freeze `json:"freezes,omitempty"`
}

var priorities = map[string]queue.Class{"on_demand": queue.OnDemand, "scheduled": queue.Scheduled, "rescan": queue.Rescan}

func priorityName(c queue.Class) string {
	for k, v := range priorities {
		if v == c {
			return k
		}
	}
	return c.String()
}

func (a *Appliance) handleSubmit(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	if a.draining.Load() {
		return &apiError{Code: http.StatusServiceUnavailable, Msg: "shutting down"}
	}
	var req SubmitRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.VM == "" || len(req.VM) > 256 || !utf8.ValidString(req.VM) || strings.ContainsFunc(req.VM, isControl) {
		return badRequest("vm: required, at most 256 bytes of UTF-8 without control characters")
	}
	if len(req.Disks) > queue.MaxDisks {
		return badRequest("disks: want 1 to %d disks", queue.MaxDisks)
	}
	if len(req.Reason) > 1024 {
		return badRequest("reason: at most 1024 bytes")
	}
	qr := queue.Request{VM: req.VM, Class: queue.OnDemand, Reason: req.Reason}
	var fromConnector bool
	if len(req.Disks) == 0 {
		// A VM a connector lists: its disks come from the hypervisor,
		// frozen when the job runs (connectors.go).
		cr, err := a.connectorRequest(req.VM)
		if errors.Is(err, errNoConnectorVM) {
			return badRequest("disks: want 1 to %d disks, or vm naming a VM a connector lists (%v)", queue.MaxDisks, err)
		}
		if err != nil {
			return err
		}
		qr.VM, qr.Disks, fromConnector = cr.VM, cr.Disks, true
	}
	if req.Priority != "" {
		c, ok := priorities[req.Priority]
		if !ok {
			return badRequest("priority: %q is not on_demand, scheduled or rescan", req.Priority)
		}
		qr.Class = c
	}
	if req.Deadline != nil {
		if !req.Deadline.After(time.Now()) {
			return badRequest("deadline: %s is in the past", req.Deadline.Format(time.RFC3339))
		}
		qr.Deadline = *req.Deadline
	}
	var seen []queue.Disk
	for i, d := range req.Disks {
		ds, ok := a.cfg.datastore(d.Datastore)
		if !ok {
			return badRequest("disks[%d].datastore: %q is not a configured datastore", i, d.Datastore)
		}
		if ds.Connector != "" {
			return badRequest("disks[%d].datastore: %q is read through connector %s, not mounted here: submit the VM by name, without disks", i, d.Datastore, ds.Connector)
		}
		if err := a.checkEntry(ds, d.Path); err != nil {
			return badRequest("disks[%d].path: %v", i, err)
		}
		if d.Format != "" && !slices.Contains(snapshot.Formats(), d.Format) {
			return badRequest("disks[%d].format: %q is not one of %s", i, d.Format, strings.Join(snapshot.Formats(), ", "))
		}
		if len(d.Layers) > image.MaxChainDepth {
			return badRequest("disks[%d].layers: more than %d", i, image.MaxChainDepth)
		}
		for k, l := range d.Layers {
			if err := a.checkEntry(ds, l); err != nil {
				return badRequest("disks[%d].layers[%d]: %v", i, k, err)
			}
		}
		qd := queue.Disk{Path: d.Path, Datastore: d.Datastore, Format: d.Format, Layers: d.Layers}
		if slices.ContainsFunc(seen, qd.Same) {
			return badRequest("disks[%d]: listed twice", i)
		}
		seen = append(seen, qd)
		qr.Disks = append(qr.Disks, qd)
	}
	// The inventory knows the VM with the disks last submitted: what a
	// new signature version rescans. A VM a connector registered keeps
	// its source (and, submitted by name, its disks as the connector
	// listed them).
	if !fromConnector {
		vm := results.VM{ID: req.VM, Source: "api"}
		if old, err := a.results.VM(r.Context(), req.VM); err == nil {
			vm.Name, vm.Source = old.Name, old.Source
		}
		for _, d := range qr.Disks {
			vm.Disks = append(vm.Disks, resultDisk(d))
		}
		if err := a.results.PutVM(r.Context(), vm); err != nil {
			return err
		}
	}
	job, err := a.q.Enqueue(r.Context(), qr)
	if err != nil {
		if errors.Is(err, queue.ErrInvalid) {
			return badRequest("%v", err)
		}
		return err
	}
	writeJSON(w, http.StatusAccepted, a.view(job))
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// checkEntry checks a disk or layer path of a submit (datastore.entry),
// logging where a refused one resolves; the error is the client's.
func (a *Appliance) checkEntry(ds *DatastoreConfig, rel string) error {
	if _, err := ds.entry(rel); err != nil {
		if errors.Is(err, ErrRequest) {
			return fmt.Errorf("%q must be a clean path relative to the datastore, with no .. element", rel)
		}
		a.log.Warn("appliance: submit refused", "datastore", ds.Name, "path", rel, "resolves", resolvedForLog(ds, rel), "err", err)
		return err
	}
	return nil
}

// resolvedForLog says where a datastore path resolves, for the log only.
func resolvedForLog(ds *DatastoreConfig, rel string) string {
	p, err := DiskPath(ds.Path, rel)
	if err != nil {
		return ""
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return real
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func (a *Appliance) view(j queue.Job) ScanView {
	v := ScanView{ID: j.ID, VM: j.VM, State: j.State, Priority: priorityName(j.Class), Reason: j.Reason,
		Disks: j.Disks, Attempts: j.Attempts, Error: j.Error, CancelRequested: j.CancelRequested,
		EnqueuedAt: j.EnqueuedAt.UTC(), NotBefore: timePtr(j.NotBefore), StartedAt: timePtr(j.StartedAt),
		FinishedAt: timePtr(j.FinishedAt), Deadline: timePtr(j.Deadline)}
	if j.State == queue.Running {
		if p, ok := a.progress.job(j.ID); ok {
			v.Progress = &p
		}
	}
	return v
}

func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest("scan id %q is not a positive integer", r.PathValue("id"))
	}
	return id, nil
}

func (a *Appliance) getJob(ctx context.Context, id int64) (queue.Job, error) {
	j, err := a.q.Job(ctx, id)
	if errors.Is(err, queue.ErrNotFound) {
		return j, &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no scan %d", id)}
	}
	return j, err
}

func (a *Appliance) handleGetScan(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	j, err := a.getJob(r.Context(), id)
	if err != nil {
		return err
	}
	v := a.view(j)
	res, err := a.results.Scan(r.Context(), id)
	switch {
	case errors.Is(err, results.ErrNotFound):
	case err != nil:
		return err
	default:
		v.Volumes, res.Volumes = res.Volumes, nil
		v.Result = res
		if v.Findings, err = a.results.Findings(r.Context(), results.FindingQuery{JobID: id}); err != nil {
			return err
		}
	}
	if _, _, ok := a.connectorJob(j); ok {
		if v.Freezes, err = a.results.Freezes(r.Context(), results.FreezeQuery{JobID: id}); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (a *Appliance) handleListScans(w http.ResponseWriter, r *http.Request, qs httpx.Query) error {
	st := queue.State(qs.Get("state"))
	switch st {
	case "", queue.Queued, queue.Running, queue.Done, queue.Failed, queue.Cancelled:
	default:
		return badRequest("state: %q is not queued, running, done, failed or cancelled", st)
	}
	limit, err := qs.Int("limit", 100, 1, queue.MaxList)
	if err != nil {
		return err
	}
	before, err := qs.Int("before", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	vm := qs.Get("vm")
	if len(vm) > 1024 {
		return badRequest("vm: longer than 1024 bytes")
	}
	jobs, err := a.q.List(r.Context(), queue.ListOptions{State: st, VM: vm, BeforeID: before, Limit: int(limit)})
	if err != nil {
		return err
	}
	out := struct {
		Scans      []ScanView `json:"scans"`
		NextBefore int64      `json:"next_before,omitempty"`
	}{Scans: make([]ScanView, 0, len(jobs))}
	for _, j := range jobs {
		out.Scans = append(out.Scans, a.view(j))
	}
	if len(jobs) == int(limit) {
		out.NextBefore = jobs[len(jobs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *Appliance) handleCancel(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	err = a.q.Cancel(r.Context(), id)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no scan %d", id)}
	case errors.Is(err, queue.ErrFinished):
		return &apiError{Code: http.StatusConflict, Msg: fmt.Sprintf("scan %d already finished", id)}
	case err != nil:
		return err
	}
	j, err := a.getJob(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a.view(j))
	return nil
}

func (a *Appliance) handleFindings(w http.ResponseWriter, r *http.Request, qs httpx.Query) error {
	var q results.FindingQuery
	var err error
	q.VM, q.Datastore, q.Rule, q.Tag = qs.Get("vm"), qs.Get("datastore"), qs.Get("rule"), qs.Get("tag")
	if q.JobID, err = qs.Int("scan", 0, 0, 1<<62); err != nil {
		return err
	}
	if q.After, err = qs.Int("after", 0, 0, 1<<62); err != nil {
		return err
	}
	limit, err := qs.Int("limit", 100, 1, results.MaxPage)
	if err != nil {
		return err
	}
	q.Limit = int(limit)
	if q.Since, err = qs.Time("since"); err != nil {
		return err
	}
	if q.Until, err = qs.Time("until"); err != nil {
		return err
	}
	rows, err := a.results.Findings(r.Context(), q)
	if err != nil {
		return err
	}
	out := struct {
		Findings  []results.Finding `json:"findings"`
		NextAfter int64             `json:"next_after,omitempty"`
	}{Findings: rows}
	if len(rows) == q.Limit {
		out.NextAfter = rows[len(rows)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// DatastoreView is a datastore's budget and what it delivers.
type DatastoreView struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Paused  bool   `json:"paused"`
	Running int    `json:"running"`
	Queued  int    `json:"queued"`
	Budget  struct {
		MaxScans    int     `json:"max_scans"`
		BytesPerSec float64 `json:"bytes_per_sec"`
		OpsPerSec   float64 `json:"ops_per_sec"`
	} `json:"budget"`
	// Delivered is the mean over the last few complete seconds.
	Delivered struct {
		BytesPerSec float64 `json:"bytes_per_sec"`
		OpsPerSec   float64 `json:"ops_per_sec"`
	} `json:"delivered"`
	BytesRead int64 `json:"bytes_read"`
	ReadOps   int64 `json:"read_ops"`
}

func (a *Appliance) datastores() []DatastoreView {
	qm := a.q.Metrics()
	byName := map[string]queue.DatastoreMetrics{}
	for _, d := range qm.Datastores {
		byName[d.Name] = d
	}
	out := []DatastoreView{}
	for _, c := range a.cfg.Datastores {
		d := byName[c.Name]
		v := DatastoreView{Name: c.Name, Path: c.Path, Paused: d.Paused, Running: d.Running, Queued: d.Queued,
			BytesRead: d.BytesRead, ReadOps: d.ReadOps}
		v.Budget.MaxScans = max(d.Budget.MaxScans, 1)
		v.Budget.BytesPerSec, v.Budget.OpsPerSec = d.Budget.BytesPerSec, d.Budget.OpsPerSec
		v.Delivered.BytesPerSec, v.Delivered.OpsPerSec = d.BytesPerSec, d.OpsPerSec
		out = append(out, v)
	}
	return out
}

func (a *Appliance) handleDatastores(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	writeJSON(w, http.StatusOK, map[string]any{"datastores": a.datastores()})
	return nil
}

// handleVMs lists the inventory: every VM known, with its last scan
// (status, findings, signature version, bytes read).
func (a *Appliance) handleVMs(w http.ResponseWriter, r *http.Request, qs httpx.Query) error {
	q := results.VMQuery{Search: qs.Get("search"), After: qs.Get("after")}
	switch qs.Get("scanned") {
	case "", "false":
	case "true":
		q.Scanned = true
	default:
		return badRequest("scanned: %q is not true or false", qs.Get("scanned"))
	}
	if len(q.Search) > 256 || len(q.After) > 4096 {
		return badRequest("search or after too long")
	}
	limit, err := qs.Int("limit", 100, 1, results.MaxPage)
	if err != nil {
		return err
	}
	q.Limit = int(limit)
	vms, err := a.results.VMs(r.Context(), q)
	if err != nil {
		return err
	}
	out := struct {
		VMs       []results.VM `json:"vms"`
		NextAfter string       `json:"next_after,omitempty"`
	}{VMs: vms}
	if len(vms) == q.Limit {
		out.NextAfter = vms[len(vms)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *Appliance) handleVM(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	v, err := a.results.VM(r.Context(), r.PathValue("id"))
	if errors.Is(err, results.ErrNotFound) {
		return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no VM %q", r.PathValue("id"))}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// handleVMFreezes lists a connector's VM's freezes, newest first, with
// their stun times: the per-VM view the metrics leave out (their labels
// name connectors, never VMs, so that /metrics stays bounded).
func (a *Appliance) handleVMFreezes(w http.ResponseWriter, r *http.Request, qs httpx.Query) error {
	id := r.PathValue("id")
	if _, err := a.results.VM(r.Context(), id); errors.Is(err, results.ErrNotFound) {
		return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no VM %q", id)}
	} else if err != nil {
		return err
	}
	limit, err := qs.Int("limit", 100, 1, results.MaxPage)
	if err != nil {
		return err
	}
	before, err := qs.Time("before")
	if err != nil {
		return err
	}
	fs, err := a.results.Freezes(r.Context(), results.FreezeQuery{VM: id, Before: before, Limit: int(limit)})
	if err != nil {
		return err
	}
	out := struct {
		Freezes    []results.Freeze `json:"freezes"`
		NextBefore *time.Time       `json:"next_before,omitempty"`
	}{Freezes: fs}
	if len(fs) == int(limit) {
		out.NextBefore = timePtr(fs[len(fs)-1].Taken)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *Appliance) handlePause(pause bool) queryHandler {
	return func(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
		name := r.PathValue("name")
		if _, ok := a.cfg.datastore(name); !ok {
			return &apiError{Code: http.StatusNotFound, Msg: fmt.Sprintf("no datastore %q", name)}
		}
		f := a.q.Resume
		if pause {
			f = a.q.Pause
		}
		if err := f(r.Context(), name); err != nil {
			return err
		}
		a.log.Info("appliance: datastore", "name", name, "paused", pause)
		for _, d := range a.datastores() {
			if d.Name == name {
				writeJSON(w, http.StatusOK, d)
			}
		}
		return nil
	}
}

func (a *Appliance) handleSignatures(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	out := map[string]any{"active": nil, "server": a.serverState()}
	if act := a.recv.Current(); act != nil {
		out["active"] = map[string]any{
			"name": act.Manifest.Name, "version": act.Manifest.Version, "created": act.Manifest.Created,
			"rule_count": act.RuleCount, "files": len(act.Manifest.Files), "key_id": act.KeyID,
			"digest": act.Digest, "installed": act.Installed.UTC(), "rules_id": act.Rules.ID(),
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
