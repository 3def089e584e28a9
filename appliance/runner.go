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
	"syscall"
	"time"

	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/snapshot"
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
}

func (p *jobProgress) snapshot() Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Progress{Disks: p.disks, DisksDone: p.disksDone,
		Files: p.doneFiles + p.cur.Files, Bytes: p.doneBytes + p.cur.Bytes,
		TotalFiles: p.doneTotalF + p.cur.TotalFiles, TotalBytes: p.doneTotalB + p.cur.TotalBytes,
		Listed: p.cur.Listed}
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

// jobProgress returns a running job's progress.
func (a *Appliance) jobProgress(id int64) (Progress, bool) {
	v, ok := a.progress.Load(id)
	if !ok {
		return Progress{}, false
	}
	return v.(*jobProgress).snapshot(), true
}

// onProgress is the scanner's progress callback: targets are named
// "job-<id>/<disk index>" so the callback finds its job.
func (a *Appliance) onProgress(p scanner.Progress) {
	v, ok := a.progress.Load(p.Target)
	if !ok {
		return
	}
	jp := v.(*jobProgress)
	jp.mu.Lock()
	jp.cur = p
	jp.mu.Unlock()
}

// scanner returns the Scanner for a rule set, making a new one when the
// set changed; scans that started on the old one keep it.
func (a *Appliance) scanner(act *signatures.Active[*scanner.Rules]) *scanner.Scanner {
	a.scMu.Lock()
	defer a.scMu.Unlock()
	if id := act.Rules.ID(); a.sc == nil || a.scRules != id {
		o := a.cfg.scannerOptions()
		o.Cache = a.cache
		o.OnProgress = a.onProgress
		o.Logger = a.log
		a.sc, a.scRules = scanner.New(act.Rules, o), id
	}
	return a.sc
}

// run is the queue's Runner: it scans every disk of a job with the rule
// set active when the job starts, and stores the results.
func (a *Appliance) run(ctx context.Context, job queue.Job, wrap queue.Wrap) error {
	act := a.recv.Current()
	if act == nil {
		return errors.New("appliance: no signature set active") // transient
	}
	sc := a.scanner(act)
	log := a.log.With("job", job.ID, "vm", job.VM, "attempt", job.Attempts)
	log.Info("appliance: scan started", "disks", len(job.Disks), "signatures", act.Manifest.Version)
	res := &ScanResult{JobID: job.ID, VM: job.VM, SigName: act.Manifest.Name, SigVersion: act.Manifest.Version,
		RulesID: act.Rules.ID(), StartedAt: time.Now().UTC()}
	jp := &jobProgress{disks: len(job.Disks)}
	a.progress.Store(job.ID, jp)
	defer a.progress.Delete(job.ID)
	for i, d := range job.Disks {
		rep, format, err := a.scanDisk(ctx, sc, job, i, d, wrap, jp)
		if err != nil {
			a.m.scanOutcome(err)
			log.Warn("appliance: scan failed", "disk", d.Path, "datastore", d.Datastore, "permanent", queue.IsPermanent(err), "err", err)
			return err
		}
		jp.diskDone()
		res.Disks = append(res.Disks, DiskResult{Disk: d, Format: format, Report: rep})
	}
	res.FinishedAt = time.Now().UTC()
	rows, err := a.store.Save(ctx, res)
	if err != nil {
		return err // transient: the scan is redone
	}
	if err := a.cache.Flush(ctx); err != nil {
		log.Warn("appliance: verdict cache not saved", "err", err)
	}
	a.events.Emit(rows)
	a.m.scanDone(res, len(rows))
	log.Info("appliance: scan complete", "findings", len(rows), "duration", res.FinishedAt.Sub(res.StartedAt))
	return nil
}

// scanDisk opens one disk through the datastore's budget and scans it.
func (a *Appliance) scanDisk(ctx context.Context, sc *scanner.Scanner, job queue.Job, i int, d queue.Disk, wrap queue.Wrap, jp *jobProgress) (*scanner.Report, string, error) {
	ds, ok := a.cfg.datastore(d.Datastore)
	if !ok {
		return nil, "", queue.Permanent(fmt.Errorf("disk %s: datastore %q is not configured", d.Path, d.Datastore))
	}
	path, err := DiskPath(ds.Path, d.Path)
	if err != nil {
		return nil, "", queue.Permanent(fmt.Errorf("disk %s on %s: %w", d.Path, d.Datastore, err))
	}
	disk, err := snapshot.Open(path, &snapshot.Options{
		// Backing files and extents may come from anywhere in the
		// datastore, never from outside it.
		AllowedDirs: []string{ds.Path},
		// Every file the disk reads, backing chain included, goes
		// through the datastore's budget.
		WrapReader: func(_ string, r io.ReaderAt) io.ReaderAt { return wrap(d.Datastore, r) },
	})
	if err != nil {
		return nil, "", classify(ctx, fmt.Errorf("disk %s on %s: %w", d.Path, d.Datastore, err))
	}
	defer disk.Close()
	t := scanner.DiskTarget(fmt.Sprintf("job-%d/%d", job.ID, i), disk)
	var reasons []string
	for _, v := range disk.Volumes {
		if v.Err != nil {
			reasons = append(reasons, v.ID+": "+v.Err.Error())
		}
	}
	if len(reasons) == len(disk.Volumes) {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		// Nothing to scan is a result nobody should take for "clean".
		if len(reasons) == 0 {
			reasons = []string{"no partition or file system found"}
		}
		return nil, "", queue.Permanent(fmt.Errorf("disk %s on %s (%s): no readable volume: %s", d.Path, d.Datastore, disk.Format, strings.Join(reasons, "; ")))
	}
	a.progress.Store(t.Name, jp)
	defer a.progress.Delete(t.Name)
	rep, err := sc.Scan(ctx, t)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", fmt.Errorf("disk %s: %w", d.Path, ctx.Err())
		}
		return nil, "", fmt.Errorf("disk %s: %w", d.Path, err) // YARA could not start: transient
	}
	return rep, disk.Format, nil
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
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
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
