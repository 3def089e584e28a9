package queue

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Class is a job's priority class. A higher class starts first, subject to
// aging (see [Config.AgingStep]).
type Class int

// The priority classes, lowest first.
const (
	// Rescan is a scan asked for because the signatures changed.
	Rescan Class = iota
	// Scheduled is a scan due by policy.
	Scheduled
	// OnDemand is a scan a person or an API client asked for.
	OnDemand

	numClasses = 3
)

// String returns the class name used in logs, metrics labels and the store.
func (c Class) String() string {
	switch c {
	case Rescan:
		return "rescan"
	case Scheduled:
		return "scheduled"
	case OnDemand:
		return "on-demand"
	}
	return fmt.Sprintf("class(%d)", int(c))
}

func (c Class) valid() bool { return c >= Rescan && c <= OnDemand }

// State is where a job is in its life.
type State string

// Job states. Done, Failed and Cancelled are terminal.
const (
	Queued    State = "queued"
	Running   State = "running"
	Done      State = "done"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Terminal reports whether no further transition leaves s.
func (s State) Terminal() bool { return s == Done || s == Failed || s == Cancelled }

// Disk is one disk snapshot of a VM and the datastore it is read from.
type Disk struct {
	// Path names the snapshot for the runner (a file path or a URL); the
	// queue does not open it.
	Path string `json:"path"`
	// Datastore is the name the budgets are kept under.
	Datastore string `json:"datastore"`
	// Format and Layers are how the runner is to open the disk (its image
	// format as declared, "" to probe; the other files of its chain the
	// submitter named). The queue keeps them and does not read them.
	Format string   `json:"format,omitempty"`
	Layers []string `json:"layers,omitempty"`
}

// Same reports whether d and o are the same disk: the same path on the
// same datastore, however declared.
func (d Disk) Same(o Disk) bool { return d.Path == o.Path && d.Datastore == o.Datastore }

// Equal reports whether d and o are the same disk declared alike (a nil
// and an empty Layers are alike: the store keeps neither).
func (d Disk) Equal(o Disk) bool {
	return d.Same(o) && d.Format == o.Format && slices.Equal(d.Layers, o.Layers)
}

// VM is a VM and its disks, as EnqueueRescan takes them.
type VM struct {
	Name  string
	Disks []Disk
}

// Request asks for a scan of one VM.
type Request struct {
	VM         string
	Disks      []Disk
	Class      Class
	Reason     string
	SigVersion string // signature version the scan must use; "" for any
	// Deadline, when not zero, is when the job is given up: a queued job
	// still waiting then fails, a running one has its context cancelled and
	// fails. Both are recorded with an error wrapping ErrDeadline.
	Deadline time.Time
	// NotBefore, when not zero, is the earliest start. Aging counts from
	// NotBefore when it is later than the enqueue time.
	NotBefore time.Time
}

// Limits on a request, so that a client cannot make the queue hold
// unbounded rows.
const (
	MaxDisks     = 64
	maxStringLen = 4096
)

func (r *Request) validate() error {
	// Disks are kept as JSON, which would silently replace invalid UTF-8:
	// refuse it rather than store a different name than was asked for.
	// NUL is refused too: PostgreSQL's text cannot hold it, and every
	// Store must keep the same names.
	for _, str := range []string{r.VM, r.Reason, r.SigVersion} {
		if !validText(str) {
			return fmt.Errorf("%w: %q is not valid UTF-8 without NUL", ErrInvalid, str)
		}
	}
	for _, d := range r.Disks {
		strs := append([]string{d.Path, d.Datastore, d.Format}, d.Layers...)
		if slices.ContainsFunc(strs, func(s string) bool { return !validText(s) }) {
			return fmt.Errorf("%w: VM %q: disk %q on %q is not valid UTF-8 without NUL", ErrInvalid, r.VM, d.Path, d.Datastore)
		}
		if len(d.Format) > maxStringLen || len(d.Layers) > MaxDisks || slices.ContainsFunc(d.Layers, func(s string) bool { return s == "" || len(s) > maxStringLen }) {
			return fmt.Errorf("%w: VM %q: disk %q on %q: format too long, or more than %d layers, or an empty or long one", ErrInvalid, r.VM, d.Path, d.Datastore, MaxDisks)
		}
	}
	if r.VM == "" || len(r.VM) > maxStringLen {
		return fmt.Errorf("%w: VM name empty or longer than %d bytes", ErrInvalid, maxStringLen)
	}
	if len(r.Disks) == 0 || len(r.Disks) > MaxDisks {
		return fmt.Errorf("%w: VM %q has %d disks (want 1..%d)", ErrInvalid, r.VM, len(r.Disks), MaxDisks)
	}
	for i, d := range r.Disks {
		if d.Path == "" || d.Datastore == "" || len(d.Path) > maxStringLen || len(d.Datastore) > maxStringLen {
			return fmt.Errorf("%w: VM %q disk %d: path and datastore must be set and short", ErrInvalid, r.VM, i)
		}
	}
	if !r.Class.valid() {
		return fmt.Errorf("%w: VM %q: unknown class %d", ErrInvalid, r.VM, int(r.Class))
	}
	if len(r.Reason) > maxStringLen || len(r.SigVersion) > maxStringLen {
		return fmt.Errorf("%w: VM %q: reason or signature version too long", ErrInvalid, r.VM)
	}
	return nil
}

func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// Job is a scan job as stored.
type Job struct {
	ID         int64
	VM         string
	Disks      []Disk
	Class      Class
	Reason     string
	SigVersion string
	Deadline   time.Time // zero: none
	State      State
	// Attempts counts runs started, including one in progress. It is
	// incremented in the same commit that marks the job Running, before
	// the runner is called, so a run that crashes the process is counted.
	Attempts int
	// Crashes counts runs that never reported an end: the process running
	// them crashed or was killed (see Queue's Recover).
	Crashes int
	Error   string // why the last run failed, or why the job failed

	EnqueuedAt time.Time // first enqueue; merges keep the earliest
	NotBefore  time.Time // earliest start asked for (rescan spreading)
	RetryAt    time.Time // earliest start after a transient failure
	StartedAt  time.Time // start of the last run
	FinishedAt time.Time // when the job reached a terminal state

	// Holder and Epoch name the lease of the job's current or last run:
	// the queue instance (appliance and process) that runs it, and a count
	// that grows by one at every start. A report about a run is accepted
	// only with the epoch it was started with (fencing).
	Holder string
	Epoch  int64

	// CancelRequested is set when Cancel was called on the running job;
	// a crash before the runner returns turns it into Cancelled on restart.
	CancelRequested bool
}

// Datastores returns the sorted, distinct datastores of the job's disks.
func (j *Job) Datastores() []string { return datastoresOf(j.Disks) }

func datastoresOf(disks []Disk) []string {
	out := make([]string, 0, len(disks))
	for _, d := range disks {
		out = append(out, d.Datastore)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ageBase is the time the job's wait is counted from.
func (j *Job) ageBase() time.Time {
	if j.NotBefore.After(j.EnqueuedAt) {
		return j.NotBefore
	}
	return j.EnqueuedAt
}

// readyAt is the earliest time the job may start.
func (j *Job) readyAt() time.Time {
	if j.RetryAt.After(j.NotBefore) {
		return j.RetryAt
	}
	return j.NotBefore
}

// Merge folds r into the queued job j by the rule documented on
// Queue.Enqueue. It is part of the Store contract: a Store calls it when a
// request meets its VM's queued job, so every implementation merges alike.
func (j *Job) Merge(r *Request) {
	for _, d := range r.Disks {
		// The same disk asked for again: the newer declaration of its
		// format and layers wins.
		if i := slices.IndexFunc(j.Disks, d.Same); i >= 0 {
			j.Disks[i] = d
		} else {
			j.Disks = append(j.Disks, d)
		}
	}
	if r.Class > j.Class {
		j.Class = r.Class
		j.Reason = r.Reason
	} else if j.Reason == "" {
		j.Reason = r.Reason
	}
	if r.SigVersion != "" {
		j.SigVersion = r.SigVersion
	}
	if !r.Deadline.IsZero() && (j.Deadline.IsZero() || r.Deadline.Before(j.Deadline)) {
		j.Deadline = r.Deadline
	}
	if r.NotBefore.Before(j.NotBefore) {
		j.NotBefore = r.NotBefore
	}
}

// Absorb folds the job o of the same VM, whose run ended without completing
// while j was queued, into j: Merge of what o asked for, keeping the
// earlier enqueue time, so the VM's one queued job covers both and keeps
// the age o had earned. o's signature version is not carried over: j's
// requests are newer. A Store calls it for a Transition with MergeInto.
func (j *Job) Absorb(o *Job) {
	j.Merge(&Request{Disks: o.Disks, Class: o.Class, Reason: o.Reason, Deadline: o.Deadline, NotBefore: o.NotBefore})
	if o.EnqueuedAt.Before(j.EnqueuedAt) {
		j.EnqueuedAt = o.EnqueuedAt
	}
}

// Errors the package returns. Match them with errors.Is.
var (
	// ErrInvalid: a request or budget is malformed.
	ErrInvalid = errors.New("queue: invalid request")
	// ErrNotFound: no job has the given id.
	ErrNotFound = errors.New("queue: no such job")
	// ErrConflict: a conditional transition found the job in another state.
	ErrConflict = errors.New("queue: job is not in the expected state")
	// ErrFinished: the job is already in a terminal state.
	ErrFinished = errors.New("queue: job already finished")
	// ErrDeadline: the job's deadline passed before it finished.
	ErrDeadline = errors.New("queue: deadline exceeded")
	// ErrAttempts: the job failed transiently MaxAttempts times.
	ErrAttempts = errors.New("queue: too many attempts")
	// ErrClosed: Serve has ended or was never started where it must run.
	ErrClosed = errors.New("queue: not serving")
	// ErrLeaseLost: the holder's lease expired (or it was reaped): the
	// runs it held are no longer its own, and what it reports of them is
	// refused.
	ErrLeaseLost = errors.New("queue: lease lost")
	// ErrNoSlot: a start was refused because a datastore it needs runs as
	// many scans as its budget allows, counted over the whole fleet.
	ErrNoSlot = errors.New("queue: no free scan slot on the datastore")
)

// permanentError marks an error a retry cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: a runner returns it for failures a retry
// cannot fix (corrupt image, unsupported format), and the job fails at once
// with err's message. Every other runner error is transient and retried with
// backoff. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// deferredError marks a run that did not do its work because it may not
// now, for a reason that passes by itself at a known time.
type deferredError struct {
	err   error
	until time.Time
}

func (e *deferredError) Error() string { return e.err.Error() }
func (e *deferredError) Unwrap() error { return e.err }

// Defer marks err as "not now": a runner returns it when the job may not
// run yet for a reason that is not the job's fault and passes by itself
// (a VM's freeze outside its freeze window, another member of its group
// frozen). The job goes back to the queue, due at until, and the run does
// not count against MaxAttempts, so a job may wait for its window for
// days. The due time is kept in the store: it survives a restart.
// Defer(nil, t) is nil.
func Defer(err error, until time.Time) error {
	if err == nil {
		return nil
	}
	return &deferredError{err: err, until: until}
}

// IsDeferred reports whether err, or an error it wraps, was marked by
// Defer, and until when.
func IsDeferred(err error) (time.Time, bool) {
	var d *deferredError
	if errors.As(err, &d) {
		return d.until, true
	}
	return time.Time{}, false
}

func joinNonEmpty(parts ...string) string {
	var b []string
	for _, p := range parts {
		if p != "" {
			b = append(b, p)
		}
	}
	return strings.Join(b, ": ")
}
