package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// jobProgress is a running job's progress, fed by the scanner.
type jobProgress struct {
	mu         sync.Mutex
	disks      int
	disksDone  int
	doneFiles  int64 // of finished disks
	doneBytes  int64
	doneTotalF int64
	doneTotalB int64
	cur        scanner.Progress
	read       readCounter // from the datastores, all disks
}

// Progress is a running scan's progress as the API shows it. Totals grow
// while disks are listed; Listed says the current disk's are final.
type Progress struct {
	Disks      int   `json:"disks"`
	DisksDone  int   `json:"disks_done"`
	Files      int64 `json:"files"`
	Bytes      int64 `json:"bytes"`
	TotalFiles int64 `json:"total_files"`
	TotalBytes int64 `json:"total_bytes"`
	Listed     bool  `json:"listed"`
	// BytesRead and ReadOps are what the scan read from its datastores so
	// far (image metadata and backing files included).
	BytesRead int64 `json:"bytes_read"`
	ReadOps   int64 `json:"read_ops"`
}

func (p *jobProgress) snapshot() Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Progress{Disks: p.disks, DisksDone: p.disksDone,
		Files: p.doneFiles + p.cur.Files, Bytes: p.doneBytes + p.cur.Bytes,
		TotalFiles: p.doneTotalF + p.cur.TotalFiles, TotalBytes: p.doneTotalB + p.cur.TotalBytes,
		Listed: p.cur.Listed, BytesRead: p.read.bytes.Load(), ReadOps: p.read.ops.Load()}
}

func (p *jobProgress) set(cur scanner.Progress) {
	p.mu.Lock()
	p.cur = cur
	p.mu.Unlock()
}

func (p *jobProgress) diskDone() {
	p.mu.Lock()
	p.disksDone++
	p.doneFiles += p.cur.Files
	p.doneBytes += p.cur.Bytes
	p.doneTotalF += p.cur.TotalFiles
	p.doneTotalB += p.cur.TotalBytes
	p.cur = scanner.Progress{}
	p.mu.Unlock()
}

// progressBoard holds the progress of running jobs: by job id for the API,
// by scanner target name for the scanner's callback. Target names are
// "job-<id>/<disk index>".
type progressBoard struct {
	mu      sync.Mutex
	jobs    map[int64]*jobProgress
	targets map[string]*jobProgress
}

func newProgressBoard() *progressBoard {
	return &progressBoard{jobs: map[int64]*jobProgress{}, targets: map[string]*jobProgress{}}
}

func (b *progressBoard) addJob(id int64, p *jobProgress) {
	b.mu.Lock()
	b.jobs[id] = p
	b.mu.Unlock()
}

func (b *progressBoard) removeJob(id int64) {
	b.mu.Lock()
	delete(b.jobs, id)
	b.mu.Unlock()
}

func (b *progressBoard) addTarget(name string, p *jobProgress) {
	b.mu.Lock()
	b.targets[name] = p
	b.mu.Unlock()
}

func (b *progressBoard) removeTarget(name string) {
	b.mu.Lock()
	delete(b.targets, name)
	b.mu.Unlock()
}

// job returns a running job's progress.
func (b *progressBoard) job(id int64) (Progress, bool) {
	b.mu.Lock()
	p, ok := b.jobs[id]
	b.mu.Unlock()
	if !ok {
		return Progress{}, false
	}
	return p.snapshot(), true
}

// onProgress is the scanner's progress callback.
func (b *progressBoard) onProgress(p scanner.Progress) {
	b.mu.Lock()
	jp, ok := b.targets[p.Target]
	b.mu.Unlock()
	if ok {
		jp.set(p)
	}
}

// readCounter counts what a job reads from its datastores.
type readCounter struct {
	bytes, ops atomic.Int64
}

// jobReader is what every read of a job's disks passes last: it counts
// the bytes and fails at once when the job's context ended (its time limit
// included), so that no read outlives the job.
type jobReader struct {
	ctx context.Context
	r   io.ReaderAt
	n   *readCounter
}

func (j *jobReader) ReadAt(p []byte, off int64) (int, error) {
	if err := j.ctx.Err(); err != nil {
		return 0, context.Cause(j.ctx)
	}
	n, err := j.r.ReadAt(p, off)
	j.n.bytes.Add(int64(n))
	j.n.ops.Add(1)
	return n, err
}

// activeSet names the signature set a scan used.
type activeSet struct {
	name    string
	version uint64
	rulesID string
}

// scanner returns the Scanner for a rule set, making a new one when the
// set changed; scans that started on the old one keep it. Every Scanner
// shares the process's one budget (scanner.memory_budget, spool_budget),
// so a signature update never doubles the bound while old scans finish.
func (a *Appliance) scanner(act *signatures.Active[*scanner.Rules]) *scanner.Scanner {
	a.scMu.Lock()
	defer a.scMu.Unlock()
	if id := act.Rules.ID(); a.sc == nil || a.scRules != id {
		o := a.cfg.scannerOptions()
		o.Budget = a.budget
		if !a.cfg.Scanner.NoCache {
			o.Cache = a.cache
		}
		o.OnProgress = a.progress.onProgress
		o.Logger = a.log
		a.sc, a.scRules = scanner.New(act.Rules, o), id
	}
	return a.sc
}

// errTimeLimit is the cause of a job context that reached queue.job_timeout.
var errTimeLimit = errors.New("appliance: job time limit reached")

// run is the queue's Runner: it scans every disk of a job with the rule
// set active when the job starts, and stores the results. A run that
// reaches the job time limit stores what it found so far as incomplete
// and fails the job for good: the same bytes would hold a slot as long
// again.
func (a *Appliance) run(ctx context.Context, job queue.Job, wrap queue.Wrap) error {
	if h, vmID, ok := a.connectorJob(job); ok {
		// A scheduled VM of a connector: freeze it, scan the frozen
		// disks (scanJob), release it whatever happened.
		return a.runFrozen(ctx, job, wrap, h, vmID)
	}
	return a.scanJob(ctx, job, wrap, nil)
}

// scanJob scans the disks of a job; tracks, when not nil, holds the
// changed-block tracking of each disk (nil for a disk with none).
func (a *Appliance) scanJob(ctx context.Context, job queue.Job, wrap queue.Wrap, tracks []*diskTrack) error {
	act := a.recv.Current()
	if act == nil {
		return errors.New("appliance: no signature set active") // transient
	}
	limit := a.cfg.Queue.JobTimeout
	qctx := ctx // the queue's: cancel, shutdown, deadline
	ctx, cancel := context.WithTimeoutCause(ctx, limit, errTimeLimit)
	defer cancel()
	sc := a.scanner(act)
	log := a.log.With("job", job.ID, "vm", job.VM, "attempt", job.Attempts)
	log.Info("appliance: scan started", "disks", len(job.Disks), "signatures", act.Manifest.Version)
	set := activeSet{name: act.Manifest.Name, version: act.Manifest.Version, rulesID: act.Rules.ID()}
	started := time.Now().UTC()
	jp := &jobProgress{disks: len(job.Disks)}
	a.unreadable.clear(job.ID)
	a.progress.addJob(job.ID, jp)
	defer a.progress.removeJob(job.ID)
	var disks []diskScan
	timedOut := false
	for i, d := range job.Disks {
		var tr *diskTrack
		if i < len(tracks) {
			tr = tracks[i]
		}
		ds, err := a.scanDisk(ctx, sc, job, i, d, tr, wrap, jp)
		// The queue's context is asked first, and directly: its end
		// reaches the reads (which fail) an instant before it reaches
		// ctx, and a scan whose reads failed that way must not be stored
		// as a result.
		if qctx.Err() != nil {
			a.m.scanOutcome(qctx.Err())
			log.Info("appliance: scan interrupted", "disk", d.Path, "cause", context.Cause(qctx))
			return fmt.Errorf("%s: %s: %w", d.Datastore, d.Path, context.Cause(qctx))
		}
		if errors.Is(context.Cause(ctx), errTimeLimit) {
			timedOut = true
			if ds != nil {
				disks = append(disks, *ds)
			}
			break
		}
		if err != nil {
			a.m.scanOutcome(err)
			log.Warn("appliance: scan failed", "disk", d.Path, "datastore", d.Datastore, "permanent", queue.IsPermanent(err), "err", err)
			return err
		}
		jp.diskDone()
		disks = append(disks, *ds)
	}
	res := record(job, set, disks, timedOut)
	res.StartedAt, res.FinishedAt = started, time.Now().UTC()
	res.BytesRead, res.ReadOps = jp.read.bytes.Load(), jp.read.ops.Load()
	// The results are saved even when the time limit ended the scan:
	// what it found is real. They are saved under the run's fence, and
	// retried while the run is this appliance's (fleet.go).
	res.Fence = a.dbs.fence(job)
	rows, err := a.saveScan(qctx, res, log)
	if err != nil {
		return err // transient: the run is redone (or already was); the store's error names the job
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
	defer scancel()
	if err := a.cache.Flush(sctx); err != nil {
		log.Warn("appliance: verdict cache", "err", err)
	}
	a.events.Emit(scanEvents(res, rows)...)
	a.m.scanDone(res)
	if timedOut {
		log.Warn("appliance: scan stopped by the job time limit", "limit", limit, "findings", len(rows), "incomplete", res.Incomplete)
		return queue.Permanent(fmt.Errorf("%w (%s): scan incomplete, %d findings stored", errTimeLimit, limit, len(rows)))
	}
	log.Info("appliance: scan complete", "status", res.Status, "findings", len(rows), "incomplete", res.Incomplete,
		"bytes_read", res.BytesRead, "duration", res.FinishedAt.Sub(res.StartedAt))
	return nil
}

// saveTimeout bounds storing a job's results.
const saveTimeout = time.Minute

// scanDisk opens one disk through the datastore's budget and scans it. It
// returns the partial scan with the context's error when the context
// ended during the scan. Its errors name the datastore and paths within
// it, never the datastore's folder: they reach API clients (the full error
// is logged).
func (a *Appliance) scanDisk(ctx context.Context, sc *scanner.Scanner, job queue.Job, i int, d queue.Disk, tr *diskTrack, wrap queue.Wrap, jp *jobProgress) (*diskScan, error) {
	ds, ok := a.cfg.datastore(d.Datastore)
	if !ok {
		return nil, queue.Permanent(fmt.Errorf("disk %s: datastore %q is not configured", d.Path, d.Datastore))
	}
	if ds.Connector != "" {
		return a.scanRemoteDisk(ctx, sc, job, i, d, ds, tr, wrap, jp)
	}
	// Checked again: a link in the datastore may have changed since the
	// submit.
	path, err := ds.entry(d.Path)
	if err != nil {
		a.log.Warn("appliance: disk refused", "job", job.ID, "datastore", ds.Name, "path", d.Path, "resolves", resolvedForLog(ds, d.Path), "err", err)
		return nil, queue.Permanent(err)
	}
	opts := &snapshot.Options{
		Format:             d.Format,
		AllowUnnamedLayers: ds.AllowUnnamedLayers,
		// Backing files and extents may come from anywhere in the
		// datastore, never from outside it.
		AllowedDirs: []string{ds.Path},
		// Every file the disk reads, backing chain included, goes
		// through the datastore's budget, is counted for the job, and
		// stops when the job does.
		WrapReader: func(_ string, r io.ReaderAt) io.ReaderAt {
			return &jobReader{ctx: ctx, r: wrap(d.Datastore, r), n: &jp.read}
		},
	}
	if len(d.Layers) > 0 {
		opts.Layers = []string{path}
		for _, l := range d.Layers {
			lp, err := ds.entry(l)
			if err != nil {
				a.log.Warn("appliance: layer refused", "job", job.ID, "datastore", ds.Name, "path", l, "resolves", resolvedForLog(ds, l), "err", err)
				return nil, queue.Permanent(fmt.Errorf("disk %s: layer %w", d.Path, err))
			}
			opts.Layers = append(opts.Layers, lp)
		}
	}
	return a.scanOpened(ctx, sc, job, i, d, ds, path, opts, tr, jp)
}

// scanRemoteDisk opens a disk of a datastore read through its connector
// (vSphere's HTTP /folder interface): every file of its chain is opened
// through the connector's Files, under the names remotePath gives, within
// the datastore, through the datastore's budget like any other read.
func (a *Appliance) scanRemoteDisk(ctx context.Context, sc *scanner.Scanner, job queue.Job, i int, d queue.Disk, ds *DatastoreConfig, tr *diskTrack, wrap queue.Wrap, jp *jobProgress) (*diskScan, error) {
	var files connector.Files
	for _, h := range a.hypervisors {
		if h.cfg.Name == ds.Connector {
			c, _, err := h.connect(ctx, a)
			if err != nil {
				return nil, classifyConnector(err)
			}
			files = c.Files()
		}
	}
	if files == nil {
		return nil, queue.Permanent(fmt.Errorf("disk %s: datastore %s: connector %q is not configured", d.Path, ds.Name, ds.Connector))
	}
	path, err := remotePath(ds, d.Path)
	if err != nil {
		return nil, queue.Permanent(fmt.Errorf("disk %w", err))
	}
	opts := &snapshot.Options{
		Format:      d.Format,
		AllowedDirs: []string{"/" + ds.Name},
		WrapReader: func(_ string, r io.ReaderAt) io.ReaderAt {
			return &jobReader{ctx: ctx, r: wrap(d.Datastore, r), n: &jp.read}
		},
		OpenFile: func(name string) (image.File, error) {
			dp, err := datastorePath(ds, name)
			if err != nil {
				return image.File{}, err
			}
			f, err := files.Open(ctx, dp)
			if err != nil {
				return image.File{}, err
			}
			return image.File{R: f, Size: f.Size(), Closer: f}, nil
		},
	}
	if len(d.Layers) > 0 {
		opts.Layers = []string{path}
		for _, l := range d.Layers {
			lp, err := remotePath(ds, l)
			if err != nil {
				return nil, queue.Permanent(fmt.Errorf("disk %s: layer %w", d.Path, err))
			}
			opts.Layers = append(opts.Layers, lp)
		}
	}
	return a.scanOpened(ctx, sc, job, i, d, ds, path, opts, tr, jp)
}

// scanOpened opens the disk at path with opts and scans it.
func (a *Appliance) scanOpened(ctx context.Context, sc *scanner.Scanner, job queue.Job, i int, d queue.Disk, ds *DatastoreConfig, path string, opts *snapshot.Options, tr *diskTrack, jp *jobProgress) (*diskScan, error) {
	disk, err := snapshot.Open(path, opts)
	if err != nil {
		a.unreadable.set(job.ID, d)
		err = fmt.Errorf("%s: %w", d.Datastore, err)
		log := a.log.With("job", job.ID, "datastore", ds.Name, "path", d.Path, "err", err)
		var rel *image.RelatedError
		if errors.As(err, &rel) {
			log = log.With("related", rel.Name, "resolves", rel.Resolved)
		}
		log.Warn("appliance: disk not opened")
		var ce *connector.Error
		if errors.As(err, &ce) && !ce.Permanent() && ctx.Err() == nil {
			return nil, err // the hypervisor did not answer: transient
		}
		return nil, classify(ctx, ds.redactErr(err))
	}
	defer disk.Close()
	name := fmt.Sprintf("job-%d/%d", job.ID, i)
	t := scanner.DiskTarget(name, disk)
	var plan *incremental.Plan
	if a.records != nil {
		log := a.log.With("job", job.ID, "datastore", ds.Name, "path", d.Path)
		sess := incremental.NewSession(a.records, sc.ReuseKey(), log)
		if tr != nil {
			plan = sess.PlanChanged(ctx, disk, tr.plan(ctx, sess, log))
		} else {
			plan = sess.Plan(ctx, disk)
		}
		t = plan.Target(name)
	}
	readable := 0
	for _, v := range disk.Volumes {
		if v.Err == nil {
			readable++
		}
	}
	if readable == 0 {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		// Nothing to scan is a result nobody should take for "clean".
		var reasons []string
		for _, v := range disk.Volumes {
			reasons = append(reasons, v.ID+": "+v.Err.Error())
		}
		if len(reasons) == 0 {
			reasons = []string{"no partition or file system found"}
		}
		a.unreadable.set(job.ID, d)
		err := fmt.Errorf("%s: %s (%s): no readable volume: %s", d.Datastore, d.Path, disk.Format, strings.Join(reasons, "; "))
		a.log.Warn("appliance: nothing to scan", "job", job.ID, "err", err)
		return nil, queue.Permanent(ds.redactErr(err))
	}
	a.progress.addTarget(t.Name, jp)
	defer a.progress.removeTarget(t.Name)
	rep, err := sc.Scan(ctx, t)
	if plan != nil && rep != nil {
		if ferr := plan.Finish(context.WithoutCancel(ctx), rep); ferr != nil {
			a.log.Warn("appliance: recording the scan for incremental scans", "job", job.ID, "err", ferr)
		}
		var reused int64
		for _, v := range rep.Volumes {
			reused += v.Reused
		}
		a.m.reused.Add(float64(reused))
		if inc := rep.Incremental; inc != nil && inc.Tracked != nil {
			outcome := "first"
			switch {
			case inc.Tracked.Since != "":
				outcome = "changes"
			case len(inc.Warnings) > 0:
				outcome = "unknown"
			}
			a.m.tracked.WithLabelValues(outcome).Inc()
			a.log.Info("appliance: VM disk scanned with changed-block tracking", "job", job.ID, "vm_disk", inc.Tracked.Disk,
				"checkpoint", inc.Tracked.Checkpoint, "since", inc.Tracked.Since, "changed_bytes", inc.Tracked.ChangedBytes,
				"files", rep.Files(), "reused", reused, "warnings", len(inc.Warnings))
		}
	}
	out := &diskScan{disk: d, report: rep, redact: ds.redact}
	if err != nil {
		if ctx.Err() != nil {
			return out, fmt.Errorf("%s: %s: %w", d.Datastore, d.Path, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%s: %s: %w", d.Datastore, d.Path, err) // YARA could not start: transient
	}
	return out, nil
}

// DiskPath resolves a disk path submitted for a datastore: relative to
// the datastore's folder, clean, and inside it (no "..", no absolute
// path). Symbolic links inside the datastore are the operator's.
func DiskPath(root, p string) (string, error) {
	if p == "" || strings.ContainsRune(p, 0) || strings.Contains(p, "\\") {
		return "", fmt.Errorf("%w: disk path %q: empty or with NUL or backslash", ErrRequest, p)
	}
	if !fs.ValidPath(p) {
		return "", fmt.Errorf("%w: disk path %q: must be relative to the datastore, clean, without \"..\"", ErrRequest, p)
	}
	return filepath.Join(root, filepath.FromSlash(p)), nil
}

// ErrRequest is wrapped by errors about a malformed API request.
var ErrRequest = errors.New("appliance: bad request")

// classify marks an error opening a disk: a context end is returned as
// is (the queue decides), an I/O error that may pass (EIO, a stale NFS
// handle, a timeout, too many open files) is transient, and everything
// else (corrupt or unsupported image, missing file, unsafe backing path)
// is permanent: the same bytes give the same answer next time.
func classify(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EIO, syscall.EAGAIN, syscall.EINTR, syscall.ESTALE, syscall.ETIMEDOUT,
			syscall.ENOTCONN, syscall.ECONNRESET, syscall.EHOSTDOWN, syscall.EHOSTUNREACH,
			syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE, syscall.EBUSY:
			return err
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return queue.Permanent(err)
}
