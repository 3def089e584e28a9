// Package queue holds snapscan's one global scan queue: durable jobs (one
// queued job per VM), per-datastore budgets (concurrent scans, read bytes/s,
// read ops/s) enforced on the reads themselves, priorities with aging,
// retries with backoff, cancellation, and signature-update rescans spread
// over time.
//
// The queue does not know how a scan is done: the appliance gives it a
// Runner, and the runner reads every disk through the Wrap it is handed, so
// what a datastore sees is what is limited, whatever the file-system code
// above does.
//
// State lives behind the Store interface, in a package of its own per
// database: queue/sqlite (modernc.org/sqlite, pure Go) for one appliance,
// queue/postgres (pgx) for a fleet of appliances sharing one PostgreSQL.
// Every implementation passes the suite in queue/storetest. Every state
// change is committed before it is acknowledged: Enqueue returns after the
// commit.
//
// # Scheduling
//
// A job may start when it is due (NotBefore and any retry backoff have
// passed), no other job of its VM runs, none of its datastores is paused,
// and every one of its datastores has a free slot (Budget.MaxScans); it then
// takes a slot on each, all at once, so a job spanning datastores can never
// hold one slot while waiting for another. At most Config.MaxScans jobs run
// in all.
//
// Priority with aging: a job's rank key is
//
//	key = waitStart - class × AgingStep
//
// where waitStart is the later of its enqueue time and NotBefore, and the
// class is 0 for Rescan, 1 for Scheduled, 2 for OnDemand. Smaller keys go
// first. So each class step is worth AgingStep of waiting: an on-demand job
// enqueued at t outranks a rescan enqueued after t-2×AgingStep, and a
// rescan that has waited more than 2×AgingStep longer than an on-demand job
// goes before it. No class starves.
//
// A job spanning datastores can start only when all of them have a free
// slot at once, which on busy datastores may never happen. So, walking jobs
// in key order, a job that has waited at least Config.ReserveAfter, is
// next in line on every full datastore it needs, and cannot start, holds
// its other datastores: later jobs may not take their free slots. Holds do
// not cascade (a job blocked by a hold holds nothing). The price is a slot
// left idle until the job's last datastore frees, which is why a job is
// bypassed for a while before it holds anything.
//
// When the global limit binds, a free worker goes to the startable job
// whose datastores run the fewest scans (an idle datastore first: a scan
// there uses budget nobody else can, while one more scan on a busy
// datastore mostly shares its rate), then to the best level (class plus
// one per AgingStep waited), then round-robin over datastores. So one busy
// datastore never idles the others, and priority decides who gets each
// datastore's slots and the workers among equally loaded datastores.
//
// # Writes and the lock
//
// The queue's mutex guards its in-memory mirror of the store, never a
// round trip of the scheduler: a pass decides under it, reserves what it
// starts in memory (the slots, the VM, the job marked starting), writes
// its batch of starts and ends without it, and commits or rolls back the
// reservations under it again. The runners reporting their ends, the
// fleet's sync (which reads Changes without the mutex too), the rate
// shares and the API do not wait for the store meanwhile. The other
// writes (Enqueue, Cancel, SetDatastore, reaping) wait for the pass's
// write in flight and hold the mutex across theirs, so every write of a
// queue is ordered in the store as in its mirror: a Cancel acknowledged
// is never overtaken by a retry, a requeue never races an Enqueue of its
// VM, and a cancel another appliance asks of a run being started reaches
// it at launch.
//
// # Listing and shutdown
//
// List reads stored jobs by state, VM, id range and enqueue time, newest
// first, for APIs and tools; it goes through the Store like everything
// else, so nothing outside this package reads the queue's tables.
//
// A graceful stop is Drain, then the end of Serve's context: Drain stops
// starting jobs and waits, up to its context's end, for the running ones
// to finish; Serve then interrupts what still runs and puts it back in the
// queue without counting the interrupted run as an attempt (a shutdown is
// not the job's fault, and MaxAttempts must not fail a job that several
// restarts happened to interrupt). A crash is different: the attempt was
// counted in the commit that started the run, and New, finding the job
// still running, ends that run as lost (Job.Crashes) and fails the job
// once it has used MaxAttempts, "crashed the scanner N times", so a disk
// whose bytes crash the process cannot run forever.
//
// # Fleet mode
//
// Several queues, one per appliance, may share one Store: queue/postgres
// for a fleet, queue/sqlite for processes on one host. Each holds its runs
// under a lease it renews every Config.SyncInterval (Store.Heartbeat,
// valid for Config.LeaseTTL by the store's clock). Starting a job commits
// the holder and a new epoch; every later report about the run carries
// both and is refused unless it is the job's current run (fencing), so an
// appliance that wakes up after its lease ended cannot complete a job
// another appliance has taken over.
//
// A lease that ends (its appliance died, hung or lost the database) is
// reaped by any queue of the fleet (a restarted appliance reaps its own
// earlier process at once): its runs end as lost and go back to the queue
// with their attempts counted, under the MaxAttempts rule above. The
// queues follow each other's writes through Store.Changes, in commit
// order, so each schedules from the fleet's queue: merge per VM (done by
// the store), classes and aging (from stored times), holds (the same rule
// over the same view), retries and cancel (a cancel asked of any
// appliance reaches the runner wherever it runs) keep their meaning. One
// run per VM holds over the fleet.
//
// A queue whose store stops answering starts nothing more; its running
// scans go on until its lease would end by its own clock, counted from
// when its last successful heartbeat was sent, which is before the store
// ends it; then it stops them, and the ends it could not write are
// dropped (another appliance redoes the runs). An end that could not be
// written while the lease lasts is retried until it is.
//
// # Budgets over the fleet
//
// A datastore's MaxScans counts the scans of the whole fleet: a start
// takes a slot row per datastore in the start's own transaction, refused
// with ErrNoSlot when another appliance took the last one. Its byte and
// op rates are shared out through the store (Store.Shares, every sync):
// each queue asks for its running scans' part of the budget, and the store
// grants it only out of what the other live leases leave free. A queue's
// limiter never runs above the share recorded for it (it lowers its
// limiter before the store frees the difference, and raises it only after
// a grant), and the recorded shares never add up to more than the budget.
// So a hand-over adds nothing over the budget: over any interval of
// length T a datastore receives at most Budget×(T + BurstWindow) plus 4 KiB
// per queue, the token buckets' bursts, as with one appliance; in a
// 1-second window at most 1.10× its budget plus 4 KiB per queue. What a
// hand-over costs is time: a share one queue gives up reaches another one
// sync later, and a dead appliance's share is unused until its lease ends.
// A read sized to the old, larger burst when its share is lowered is split
// to the new one, not held until the share grows back (with three
// appliances on a datastore of two slots it seldom did: bench/fleet.sh
// measured the makespan at 2.0× the budget's lower bound before, 1.017×
// after, at load 13).
//
// # Exactly once
//
// A runner may run more than once for one job: after a crash (the job was
// running, so it goes back to the queue on restart), or after a transient
// error. Completion is recorded once: Done is reached only through a
// conditional Running -> Done update. A runner should therefore write its
// results idempotently, keyed by job id.
package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Wrap returns r limited by the budget of the named datastore: every ReadAt
// waits for the datastore's byte and operation tokens, and fails with the
// job's context error when the job is cancelled. Runners wrap each disk's
// reader with the datastore of that disk (Disk.Datastore).
type Wrap func(datastore string, r io.ReaderAt) io.ReaderAt

// Runner scans one job. It reads every disk through wrap. It returns nil when
// the scan is complete (and its results are stored), an error marked with
// Permanent for a failure a retry cannot fix, and any other error for a
// transient failure. It must return soon after ctx is done; ctx carries the
// job's deadline.
type Runner func(ctx context.Context, job Job, wrap Wrap) error

// Config tunes a Queue. The zero value of each field picks its default.
type Config struct {
	// MaxScans is the global limit on running jobs (default 4).
	MaxScans int
	// DefaultBudget applies to datastores with no saved settings; its
	// MaxScans of 0 means 1.
	DefaultBudget Budget
	// AgingStep is how much waiting is worth one priority class
	// (default 10 minutes).
	AgingStep time.Duration
	// ReserveAfter is how long a job spanning datastores may be bypassed
	// before the datastores it could use are held for it (default
	// AgingStep). See the package documentation.
	ReserveAfter time.Duration
	// MaxAttempts bounds runs of a job that keeps failing transiently
	// (default 5).
	MaxAttempts int
	// BackoffBase and BackoffMax shape the retry delay: attempt n waits
	// a random time in [d/2, d) with d = min(BackoffMax, BackoffBase×2^(n-1))
	// (defaults 30 s and 30 min).
	BackoffBase, BackoffMax time.Duration
	// Logger receives warnings about store failures (default: discard).
	Logger *slog.Logger
	// Now is the clock for job times and aging (default time.Now). Rate
	// limiting always uses the real clock.
	Now func() time.Time
	// ObserveWait, if set, is called on each job start with the job's class
	// and how long it waited since its wait start (for a histogram).
	ObserveWait func(Class, time.Duration)
	// Appliance names this queue's appliance in the fleet (default
	// "local"). Each process holds its leases under Appliance plus a
	// random suffix; a restarted appliance ends its earlier process's
	// leases at once. Two appliances on one store must have different
	// names.
	Appliance string
	// LeaseTTL is how long a lease lasts without a heartbeat (default
	// 15 s): how long the jobs of an appliance that died wait before
	// another takes them, and how long an appliance that lost the
	// database keeps scanning.
	LeaseTTL time.Duration
	// SyncInterval is how often the queue renews its lease, takes its rate
	// shares, reaps expired leases and reads the fleet's changes (default
	// 1 s, at most LeaseTTL/4).
	SyncInterval time.Duration
	// OnFinish, if set, is called after a job's terminal state is
	// committed. It is called at most once per job by this process; a
	// crash just after the commit loses the call, never repeats it. It
	// runs on the scheduler's goroutine (or Cancel's caller): keep it short.
	OnFinish func(Job)
}

func (c *Config) setDefaults() {
	if c.MaxScans <= 0 {
		c.MaxScans = 4
	}
	if c.AgingStep <= 0 {
		c.AgingStep = 10 * time.Minute
	}
	if c.ReserveAfter <= 0 {
		c.ReserveAfter = c.AgingStep
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = 30 * time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 30 * time.Minute
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Appliance == "" {
		c.Appliance = "local"
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 15 * time.Second
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = time.Second
	}
	c.SyncInterval = min(c.SyncInterval, c.LeaseTTL/4)
}

// Queue is the scan queue. Its methods are safe for concurrent use.
type Queue struct {
	store Store
	run   Runner
	cfg   Config
	log   *slog.Logger
	wake  chan struct{}
	wg    sync.WaitGroup

	// mu guards the in-memory mirror below. The scheduler's writes (a
	// pass's Apply) run without it: the pass decides under mu, reserves
	// what it starts in memory (slots and VM taken, the job in starting),
	// writes, and commits or rolls back under mu again. The other writes
	// (Enqueue, Cancel, SetDatastore, reaping) hold mu across the store's
	// write and wait for the pass's write in flight first (applied), so
	// each sees the mirror as the store left it. See pass.
	mu       sync.Mutex
	applying bool       // a pass's Apply is in flight
	applied  *sync.Cond // on mu: broadcast when applying turns false
	// starting holds the jobs whose start is in the pass's write in
	// flight, with what the fleet's changes said of them meanwhile.
	starting map[int64]*startState
	// wgen counts this queue's job writes that reached the mirror, so a
	// read of the fleet's changes made without mu knows whether it may
	// be older than the mirror (see syncStore).
	wgen      uint64
	serving   bool
	draining  bool          // Drain was called: start nothing more
	drained   chan struct{} // closed when draining and nothing runs
	queued    map[int64]*entry
	running   map[int64]*runningJob // started, end not yet committed
	active    int                   // running jobs whose runner has not returned
	ended     []*runningJob         // runner returned, end not yet committed
	runningVM map[string]int
	fleet     // other holders' runs, the lease, the changes cursor
	sched     schedIndex
	ds        map[string]*datastore
	dsNames   []string // sorted, for round-robin
	rr        int      // round-robin cursor into dsNames
	stats     counters
	wait      [numClasses]WaitHistogram
}

// entry is a queued job in memory, with what the scheduler looks at on
// every pass computed once.
type entry struct {
	Job
	ds  []*datastore // distinct, by name
	key time.Time    // see Queue.key
	// noSlotUntil: the store refused a start for want of a slot (another
	// appliance took it) or of a live lease; wait for a sync.
	noSlotUntil time.Time
	due         bool // in its datastores' queues (see sched.go)
	gone        bool // forgotten: dropped from the heaps when met
}

type runningJob struct {
	job             Job
	ds              []*datastore
	cancel          context.CancelFunc
	cancelRequested bool
	leaseLost       bool // the lease ended: the run is no longer this queue's
	// Set when the runner returns.
	err          error
	pastDeadline bool
}

// startState is what the fleet's changes said of a job while its start
// was being written (see absorb).
type startState struct {
	cancel bool // a cancel was asked of the new run: cancel it at launch
	other  *Job // the job as another writer left it, if the start fails
}

type counters struct{ started, done, failed, cancelled, retried, leasesLost uint64 }

// New recovers the store (runs a crash left running are ended as lost: see
// the package documentation), loads queued jobs and datastore settings,
// and returns a queue ready to take requests. It does not run jobs until
// Serve. Only one Queue may use a store at a time.
func New(ctx context.Context, store Store, run Runner, cfg Config) (*Queue, error) {
	if store == nil || run == nil {
		return nil, fmt.Errorf("%w: New needs a store and a runner", ErrInvalid)
	}
	cfg.setDefaults()
	if err := cfg.DefaultBudget.validate(); err != nil {
		return nil, err
	}
	q := &Queue{
		store: store, run: run, cfg: cfg, log: cfg.Logger,
		wake:      make(chan struct{}, 1),
		queued:    map[int64]*entry{},
		running:   map[int64]*runningJob{},
		runningVM: map[string]int{},
		ds:        map[string]*datastore{},
		starting:  map[int64]*startState{},
	}
	q.applied = sync.NewCond(&q.mu)
	q.fleet.init()
	q.sched.init()
	for i := range q.wait {
		q.wait[i].Counts = make([]uint64, len(WaitBuckets)+1)
	}
	if err := q.register(ctx); err != nil {
		return nil, err
	}
	// The clock first: a change made while the rest is read is read again
	// from Changes, and mirroring is idempotent.
	clock, err := store.Clock(ctx)
	if err != nil {
		return nil, err
	}
	q.clock = clock
	saved, err := store.Datastores(ctx)
	if err != nil {
		return nil, err
	}
	for name, c := range saved {
		q.addDatastore(name, c)
	}
	jobs, err := store.Queued(ctx)
	if err != nil {
		return nil, err
	}
	for i := range jobs {
		q.mirror(jobs[i])
	}
	running, err := store.Running(ctx)
	if err != nil {
		return nil, err
	}
	for _, j := range running {
		q.mirrorRemote(j)
	}
	if err := q.reap(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// lostOutcome decides how a run that never reported its end (its process
// crashed) ends. queuedID is the VM's queued job, or 0.
func (q *Queue) lostOutcome(j Job, queuedID int64, now time.Time) Transition {
	t := Transition{ID: j.ID, From: Running, At: now, Lost: true, Holder: j.Holder, Epoch: j.Epoch}
	crashes := j.Crashes + 1
	switch {
	case j.CancelRequested:
		t.To, t.Err = Cancelled, "queue: cancelled (the run was lost to a crash)"
	case queuedID != 0 && queuedID != j.ID:
		t.To, t.MergeInto = Cancelled, queuedID
		t.Err = fmt.Sprintf("queue: superseded by job %d: the run was lost to a crash", queuedID)
	case j.Attempts >= q.cfg.MaxAttempts:
		t.To, t.Err = Failed, CrashError(j.Attempts, crashes)
	default:
		t.To, t.Err = Queued, fmt.Sprintf("queue: run %d was lost to a crash", j.Attempts)
		t.RetryAt = now.Add(q.backoff(j.Attempts))
	}
	return t
}

// CrashError is the error recorded on a job failed because its runs kept
// being lost to crashes: after attempts runs, crashes of them lost.
func CrashError(attempts, crashes int) string {
	return fmt.Sprintf("%v (%d): crashed the scanner %d times", ErrAttempts, attempts, crashes)
}

func (q *Queue) addDatastore(name string, c DatastoreConfig) *datastore {
	d := newDatastore(name, c)
	q.ds[name] = d
	i, _ := slices.BinarySearch(q.dsNames, name)
	q.dsNames = slices.Insert(q.dsNames, i, name)
	return d
}

// datastore returns the named datastore, creating it with the default
// budget. q.mu must be held.
func (q *Queue) datastore(name string) *datastore {
	if d := q.ds[name]; d != nil {
		return d
	}
	return q.addDatastore(name, DatastoreConfig{Budget: q.cfg.DefaultBudget})
}

// mirror records a queued job in memory. q.mu must be held.
func (q *Queue) mirror(j Job) {
	q.forget(j.ID)
	e := &entry{Job: j, key: q.key(&j)}
	for _, name := range j.Datastores() {
		e.ds = append(e.ds, q.datastore(name))
	}
	q.queued[j.ID] = e
	q.queuedVM[j.VM] = j.ID
	q.index(e, q.cfg.Now())
}

// waitApplied waits until no pass's write is in flight, so a write made
// under q.mu next is ordered after it, as the mirror is. q.mu must be
// held; it is released while waiting.
func (q *Queue) waitApplied() {
	for q.applying {
		q.applied.Wait()
	}
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Enqueue asks for a scan and returns the job, after it is committed.
//
// If the VM already has a queued job, the request merges into it and its id
// is returned: the disks are the union; the class is the higher one (and
// the reason comes with it); a non-empty SigVersion replaces the job's; the
// earlier deadline and the earlier NotBefore win; the enqueue time stays the
// first one, so the job keeps the age it has earned. A VM whose job is
// running gets a new queued job, which starts after the running one ends;
// if the running one then fails transiently it is not retried but ends
// Cancelled, "superseded" by the new job.
func (q *Queue) Enqueue(ctx context.Context, r Request) (Job, error) {
	jobs, err := q.EnqueueBatch(ctx, []Request{r})
	if err != nil {
		return Job{}, err
	}
	return jobs[0], nil
}

// EnqueueBatch enqueues several requests in one transaction (all or none)
// and returns the jobs in request order, merged as Enqueue describes.
func (q *Queue) EnqueueBatch(ctx context.Context, reqs []Request) ([]Job, error) {
	for i := range reqs {
		if err := reqs[i].validate(); err != nil {
			return nil, err
		}
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	q.mu.Lock()
	q.waitApplied()
	jobs, err := q.store.Enqueue(ctx, reqs, q.cfg.Now())
	q.wgen++
	if err == nil {
		for _, j := range jobs {
			q.mirror(j)
		}
	}
	q.mu.Unlock()
	if err != nil {
		return nil, err
	}
	q.signal()
	return jobs, nil
}

// EnqueueRescan enqueues a rescan of each VM for signature version at the
// Rescan class, with start times spread evenly over [now, now+spread). The
// VMs are interleaved by datastore first, so each datastore's share is
// spread over the whole window too. Every budget still applies: the spread
// smooths the load, the budgets bound it.
func (q *Queue) EnqueueRescan(ctx context.Context, vms []VM, version string, spread time.Duration) ([]Job, error) {
	groups := map[string][]VM{}
	var names []string
	for _, vm := range vms {
		key := ""
		if len(vm.Disks) > 0 {
			key = vm.Disks[0].Datastore
		}
		if _, ok := groups[key]; !ok {
			names = append(names, key)
		}
		groups[key] = append(groups[key], vm)
	}
	slices.Sort(names)
	reqs := make([]Request, 0, len(vms))
	for len(reqs) < len(vms) {
		for _, n := range names {
			if g := groups[n]; len(g) > 0 {
				reqs = append(reqs, Request{VM: g[0].Name, Disks: g[0].Disks, Class: Rescan,
					Reason: "signature update to " + version, SigVersion: version})
				groups[n] = g[1:]
			}
		}
	}
	now := q.cfg.Now()
	for i := range reqs {
		reqs[i].NotBefore = now.Add(time.Duration(float64(spread) * float64(i) / float64(len(reqs))))
	}
	return q.EnqueueBatch(ctx, reqs)
}

// Cancel cancels a job: a queued one at once; a running one has its context
// cancelled and is recorded as Cancelled when its runner returns, or Done
// if the runner completed anyway (the request is committed first, so a
// crash meanwhile still ends in Cancelled). Cancelling a finished job
// returns an error wrapping ErrFinished.
func (q *Queue) Cancel(ctx context.Context, id int64) error {
	q.mu.Lock()
	q.waitApplied()
	st, err := q.store.Cancel(ctx, id, q.cfg.Now())
	q.wgen++
	var done *Job
	if err == nil {
		switch st {
		case Cancelled:
			if e := q.queued[id]; e != nil {
				done = &e.Job
			}
			q.forget(id)
			q.stats.cancelled++
		case Running:
			if rj := q.running[id]; rj != nil {
				rj.cancelRequested = true
				rj.cancel()
			}
		}
	}
	q.mu.Unlock()
	if err != nil {
		return err
	}
	if done != nil && q.cfg.OnFinish != nil {
		j := *done
		j.State = Cancelled
		q.cfg.OnFinish(j)
	}
	q.signal()
	return nil
}

// Job returns a job as stored.
func (q *Queue) Job(ctx context.Context, id int64) (Job, error) { return q.store.Get(ctx, id) }

// List returns the stored jobs o selects, newest first unless
// o.Ascending. It fails with ErrInvalid on an unknown state or a limit
// above MaxList.
func (q *Queue) List(ctx context.Context, o ListOptions) ([]Job, error) {
	if err := o.normalize(); err != nil {
		return nil, err
	}
	return q.store.List(ctx, o)
}

// Drain stops the queue from starting jobs, for good, and waits until no
// job runs: every running job has returned and its end is committed. It
// returns nil then, or, if ctx ends first, an error wrapping ctx's that
// says how many still run. Enqueue, Cancel and the rest keep working, so
// requests accepted while shutting down stay queued for the next start.
//
// It is the first half of a graceful stop: call Drain with a grace period,
// then end Serve's context. Serve interrupts what still runs and puts it
// back in the queue without counting the interrupted run as an attempt.
// Ends are committed by Serve's scheduler: without Serve running, Drain
// waits for ctx unless nothing runs.
func (q *Queue) Drain(ctx context.Context) error {
	q.mu.Lock()
	if q.drained == nil {
		q.drained = make(chan struct{})
	}
	q.draining = true
	q.checkDrained()
	done := q.drained
	q.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		q.mu.Lock()
		n := len(q.running)
		q.mu.Unlock()
		if n == 0 {
			return nil
		}
		return fmt.Errorf("queue: drain: %d jobs still running: %w", n, ctx.Err())
	}
}

// checkDrained closes q.drained once draining and nothing runs. q.mu must
// be held.
func (q *Queue) checkDrained() {
	if !q.draining || len(q.running) > 0 || q.active > 0 {
		return
	}
	select {
	case <-q.drained:
	default:
		close(q.drained)
	}
}

// SetBudget changes a datastore's budget at run time and saves it. Running
// reads see the new rates at once; a lowered MaxScans lets running jobs
// finish and starts no new ones until below it.
func (q *Queue) SetBudget(ctx context.Context, datastore string, b Budget) error {
	if err := b.validate(); err != nil {
		return err
	}
	return q.configure(ctx, datastore, func(c *DatastoreConfig) { c.Budget = b })
}

// Pause stops new jobs from starting on a datastore (jobs that also use
// other datastores wait too); running jobs finish. It is saved, so it
// survives a restart.
func (q *Queue) Pause(ctx context.Context, datastore string) error {
	return q.configure(ctx, datastore, func(c *DatastoreConfig) { c.Paused = true })
}

// Resume undoes Pause.
func (q *Queue) Resume(ctx context.Context, datastore string) error {
	return q.configure(ctx, datastore, func(c *DatastoreConfig) { c.Paused = false })
}

func (q *Queue) configure(ctx context.Context, name string, f func(*DatastoreConfig)) error {
	if name == "" || len(name) > maxStringLen || !validText(name) {
		return fmt.Errorf("%w: datastore name empty or too long", ErrInvalid)
	}
	q.mu.Lock()
	q.waitApplied()
	d := q.datastore(name)
	c := d.cfg
	f(&c)
	err := q.store.SetDatastore(ctx, name, c)
	if err == nil {
		d.configure(c)
	}
	q.mu.Unlock()
	if err != nil {
		return err
	}
	q.signal()
	return nil
}

// Serve runs the scheduler until ctx ends, then cancels the running jobs,
// puts them back in the queue (the interrupted runs do not count as
// attempts) and returns nil once their runners have returned. For a
// graceful stop, call Drain first. It returns an error if the queue is
// already serving.
//
// The scheduler is one goroutine. Each pass records the ends of the runs
// that returned, fails queued jobs past their deadline and starts what can
// start, all in one store transaction: under load the batches grow, so a
// slow disk flush costs one wait per pass, not one per job.
func (q *Queue) Serve(ctx context.Context) error {
	q.mu.Lock()
	if q.serving {
		q.mu.Unlock()
		return fmt.Errorf("queue: Serve called twice")
	}
	q.serving = true
	q.mu.Unlock()

	// The fleet's side (lease, shares, reaping, others' changes) runs
	// beside the scheduler and ends with it.
	syncCtx, stopSync := context.WithCancel(ctx)
	synced := make(chan struct{})
	go func() { defer close(synced); q.syncLoop(syncCtx) }()
	defer func() { stopSync(); <-synced }()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		next := q.pass(ctx, ctx, true)
		d := time.Hour
		if !next.IsZero() {
			d = max(next.Sub(q.cfg.Now()), time.Millisecond)
		}
		timer.Reset(d)
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-timer.C:
		}
	}
	// The runners see ctx end; record their ends (back to the queue),
	// within finishGrace of the runners returning.
	q.wg.Wait()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishGrace)
	defer cancel()
	for {
		q.mu.Lock()
		left := len(q.ended)
		q.mu.Unlock()
		if left == 0 || wctx.Err() != nil {
			if left > 0 {
				q.log.Error("queue: job ends not recorded at shutdown; they run again on restart", "jobs", left)
			}
			return nil
		}
		if !q.pass(ctx, wctx, false).IsZero() {
			time.Sleep(50 * time.Millisecond) // the write failed: not in a tight loop
		}
	}
}

// key orders jobs for starting: see the package documentation.
func (q *Queue) key(j *Job) time.Time {
	return j.ageBase().Add(-time.Duration(j.Class) * q.cfg.AgingStep)
}

// level is the class plus one per AgingStep waited.
func (q *Queue) level(e *entry, now time.Time) int64 {
	return int64(now.Sub(e.key) / q.cfg.AgingStep)
}

// retryStoreAfter is how soon the scheduler tries again after a store
// write failed.
const retryStoreAfter = time.Second

// finishGrace bounds how long the ends of runs are retried after Serve's
// context ended.
const finishGrace = 10 * time.Second

// change is one transition of a pass and what to do once it is committed.
type change struct {
	t     Transition
	rj    *runningJob // an end
	e     *entry      // an expiry or a start
	start bool
}

// pass is one scheduling pass (see Serve). serveCtx is what runners derive
// from, wctx bounds the store write; startNew is false while shutting
// down. It returns when it next has to look again for a reason other than
// a wake-up (a job becoming due or reaching its deadline), or the zero
// time.
//
// It decides under q.mu, then writes without it, so the store's round
// trips and commit do not stall the runners reporting their ends, the
// fleet's sync or the API. What it decided is reserved meanwhile: the
// ends are taken out of q.ended, each start holds its slots and its VM
// (q.take) and is in q.starting, out of its datastores' queues. Once the
// write returns, under q.mu again, each change is committed to the mirror
// or rolled back. Only one pass runs at a time (Serve's goroutine), and
// the other writers wait for its write (waitApplied), so no write of this
// queue overtakes another: the store's order is the mirror's.
func (q *Queue) pass(serveCtx, wctx context.Context, startNew bool) time.Time {
	q.mu.Lock()
	now := q.cfg.Now()
	var next time.Time
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	var changes []change
	for _, rj := range q.ended {
		if rj.leaseLost {
			// The lease ended under the run: it is no longer this
			// queue's to report (the store would refuse it); whoever
			// reaps the lease ends it as lost.
			delete(q.running, rj.job.ID)
			continue
		}
		changes = append(changes, change{t: q.outcome(serveCtx, rj, now), rj: rj})
	}
	q.ended = nil
	q.checkDrained()
	expired, at := q.advance(now)
	if !at.IsZero() {
		soonest(at)
	}
	for _, e := range expired {
		changes = append(changes, change{e: e, t: Transition{ID: e.ID, From: Queued, To: Failed, At: now,
			Err: fmt.Sprintf("%v while queued (deadline %s)", ErrDeadline, e.Deadline.Format(time.RFC3339))}})
	}
	// Slots are taken now and given back if the write fails.
	for startNew && !q.draining && q.leaseOK() && q.active < q.cfg.MaxScans {
		e := q.pick(now)
		if e == nil {
			break
		}
		q.unDue(e)
		q.take(e.ds, e.VM, 1)
		q.starting[e.ID] = &startState{}
		slots := make(map[string]int, len(e.ds))
		for _, d := range e.ds {
			slots[d.name] = d.cfg.Budget.maxScans()
		}
		changes = append(changes, change{e: e, start: true, t: Transition{ID: e.ID, From: Queued, To: Running, At: now,
			Holder: q.holder, Slots: slots}})
	}
	if len(changes) == 0 {
		q.mu.Unlock()
		return next
	}
	ts := make([]Transition, len(changes))
	for i, c := range changes {
		ts[i] = c.t
	}
	q.applying = true
	q.mu.Unlock()
	results, err := q.store.Apply(wctx, ts)
	q.mu.Lock()
	q.wgen++
	q.applying = false
	q.applied.Broadcast()
	if err != nil {
		var ends []*runningJob
		for _, c := range changes {
			switch {
			case c.rj != nil:
				ends = append(ends, c.rj)
			case c.start:
				delete(q.starting, c.e.ID)
				q.take(c.e.ds, c.e.VM, -1)
				q.makeDue(c.e)
			default: // an expiry: look again next time
				heap.Push(&q.sched.deadlines, c.e)
			}
		}
		// The ends go back in front of those that came meanwhile.
		q.ended = append(ends, q.ended...)
		q.checkDrained()
		q.mu.Unlock()
		if wctx.Err() == nil {
			q.log.Warn("queue: store write failed, retrying", "changes", len(changes), "err", err)
		}
		return now.Add(retryStoreAfter)
	}
	var finished []Job
	for i, c := range changes {
		r := results[i]
		switch {
		case c.rj != nil:
			delete(q.running, c.rj.job.ID)
			if r.Err != nil {
				q.log.Warn("queue: end of run not recorded", "job", c.rj.job.ID, "err", r.Err)
				continue
			}
			switch c.t.To {
			case Done:
				q.stats.done++
			case Failed:
				q.stats.failed++
			case Cancelled:
				q.stats.cancelled++
				if e := q.queued[c.t.MergeInto]; e != nil {
					// The store absorbed the run into the VM's queued
					// job: the mirror does the same.
					e.Job.Absorb(&c.rj.job)
					q.mirror(e.Job)
				}
			case Queued:
				if !c.t.RetryAt.IsZero() {
					q.stats.retried++
				}
				q.mirror(r.Job)
				if r := r.Job.readyAt(); r.After(now) {
					soonest(r)
				} else {
					soonest(now) // due at once: look again right away
				}
			}
			if c.t.To.Terminal() {
				finished = append(finished, r.Job)
			}
		case c.start:
			st := q.starting[c.e.ID]
			delete(q.starting, c.e.ID)
			if r.Err != nil {
				q.take(c.e.ds, c.e.VM, -1)
				switch {
				case errors.Is(r.Err, ErrNoSlot), errors.Is(r.Err, ErrLeaseLost):
					// Another appliance took the slot, or our lease is
					// being renewed: look again after the next sync.
					c.e.noSlotUntil = now.Add(q.cfg.SyncInterval)
					soonest(c.e.noSlotUntil)
					q.makeDue(c.e)
					q.syncSoon()
				default:
					// Another appliance started it, or it changed: the
					// store knows better, and the next sync says what
					// (or the sync already did, while the start was
					// written).
					q.forget(c.e.ID)
					if st.other != nil {
						q.absorb([]Job{*st.other})
					}
					q.syncSoon()
				}
				continue
			}
			q.forget(c.e.ID)
			if q.holder != c.t.Holder {
				// The lease ended while the start was written: the
				// run is the old lease's, which the fleet reaps.
				q.take(c.e.ds, c.e.VM, -1)
				continue
			}
			rj := q.launch(serveCtx, c.e, r.Job, now)
			if st.cancel {
				rj.cancelRequested = true
				rj.cancel()
			}
		default: // expiry
			q.forget(c.e.ID)
			if r.Err == nil {
				q.stats.failed++
				finished = append(finished, r.Job)
			}
		}
	}
	q.checkDrained()
	q.mu.Unlock()
	if q.cfg.OnFinish != nil {
		for _, j := range finished {
			q.cfg.OnFinish(j)
		}
	}
	return next
}

// take adds n (1 or -1) running jobs to the datastores and the VM.
// q.mu must be held.
func (q *Queue) take(ds []*datastore, vm string, n int) {
	for _, d := range ds {
		if d.running += n; d.running == 0 {
			d.idleAt = time.Now()
		}
		q.log.Debug("queue: scan slot", "datastore", d.name, "vm", vm, "n", n, "running", d.running, "remote", d.remote)
	}
	q.active += n
	if q.runningVM[vm] += n; q.runningVM[vm] <= 0 {
		delete(q.runningVM, vm)
	}
}

func (q *Queue) paused(e *entry) bool {
	for _, d := range e.ds {
		if d.cfg.Paused {
			return true
		}
	}
	return false
}

// launch starts the runner of a job whose start is committed; its slots
// are already taken. q.mu must be held.
func (q *Queue) launch(serveCtx context.Context, e *entry, j Job, now time.Time) *runningJob {
	rj := &runningJob{job: j, ds: e.ds}
	q.running[j.ID] = rj
	q.stats.started++
	w := now.Sub(j.ageBase())
	q.wait[j.Class].observe(w)
	if q.cfg.ObserveWait != nil {
		q.cfg.ObserveWait(j.Class, w)
	}
	jctx, cancel := context.WithCancel(serveCtx)
	if !j.Deadline.IsZero() {
		var c2 context.CancelFunc
		jctx, c2 = context.WithDeadline(jctx, j.Deadline)
		c1 := cancel
		cancel = func() { c2(); c1() }
	}
	rj.cancel = cancel
	for _, d := range e.ds {
		if d.needsShare() {
			q.syncSoon() // its reads wait for a rate share
		}
	}
	q.wg.Add(1)
	go q.runJob(jctx, rj)
	return rj
}

func (q *Queue) runJob(jctx context.Context, rj *runningJob) {
	defer q.wg.Done()
	wrap := func(name string, r io.ReaderAt) io.ReaderAt {
		var d *datastore
		for _, x := range rj.ds {
			if x.name == name {
				d = x
			}
		}
		if d == nil {
			q.mu.Lock()
			d = q.datastore(name)
			q.mu.Unlock()
		}
		return &limitedReader{ctx: jctx, ds: d, r: r}
	}
	err := q.safeRun(jctx, rj.job, wrap)
	past := errors.Is(jctx.Err(), context.DeadlineExceeded)
	rj.cancel()
	// The runner reads nothing more: its slots go back now, and the end is
	// committed by the next pass, together with whatever that pass starts.
	q.mu.Lock()
	rj.err, rj.pastDeadline = err, past
	q.take(rj.ds, rj.job.VM, -1)
	q.ended = append(q.ended, rj)
	q.mu.Unlock()
	q.signal()
}

func (q *Queue) safeRun(ctx context.Context, j Job, wrap Wrap) (err error) {
	defer func() {
		if p := recover(); p != nil {
			// A panic while parsing untrusted bytes is a bug the same bytes
			// will hit again: do not retry it.
			err = Permanent(fmt.Errorf("queue: runner panicked on job %d: %v", j.ID, p))
		}
	}()
	return q.run(ctx, j, wrap)
}

// outcome decides how a run ended. It runs under q.mu in the pass that
// writes it, so a Cancel acknowledged before is never overtaken by a retry.
func (q *Queue) outcome(serveCtx context.Context, rj *runningJob, now time.Time) Transition {
	j, runErr := rj.job, rj.err
	t := Transition{ID: j.ID, From: Running, At: now, Holder: j.Holder, Epoch: j.Epoch}
	switch {
	case runErr == nil:
		t.To = Done
	case rj.cancelRequested:
		t.To, t.Err = Cancelled, joinNonEmpty("queue: cancelled", runErr.Error())
	case serveCtx.Err() != nil:
		// Shutting down: not the job's fault, so back to the queue, and
		// the run does not count against MaxAttempts.
		t.To, t.Err, t.Interrupted = Queued, "queue: interrupted by shutdown", true
	case !j.Deadline.IsZero() && (rj.pastDeadline || errors.Is(runErr, context.DeadlineExceeded)):
		t.To, t.Err = Failed, fmt.Sprintf("%v (deadline %s): %v", ErrDeadline, j.Deadline.Format(time.RFC3339), runErr)
	case IsPermanent(runErr):
		t.To, t.Err = Failed, runErr.Error()
	case isDeferred(runErr):
		until, _ := IsDeferred(runErr)
		t.To, t.Err, t.RetryAt, t.Interrupted = Queued, runErr.Error(), until, true
	case j.Attempts >= q.cfg.MaxAttempts:
		t.To, t.Err = Failed, fmt.Sprintf("%v (%d): %v", ErrAttempts, j.Attempts, runErr)
	default:
		t.To, t.Err, t.RetryAt = Queued, runErr.Error(), now.Add(q.backoff(j.Attempts))
	}
	if t.To == Queued {
		// The VM was enqueued again while this run went on: that newer
		// job is the VM's one queued job, and it takes over.
		if id, ok := q.queuedVM[j.VM]; ok {
			t.To, t.RetryAt, t.MergeInto = Cancelled, time.Time{}, id
			t.Err = fmt.Sprintf("queue: superseded by job %d: %s", id, t.Err)
		}
	}
	return t
}

func isDeferred(err error) bool { _, ok := IsDeferred(err); return ok }

func (q *Queue) backoff(attempts int) time.Duration {
	d := q.cfg.BackoffBase
	for i := 1; i < attempts && d < q.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, q.cfg.BackoffMax)
	return d/2 + rand.N(d/2+1)
}
