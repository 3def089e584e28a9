package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"
)

// fleet is what a queue knows of the other queues on its store, and its
// own lease. Guarded by Queue.mu.
type fleet struct {
	holder     string    // this process's lease: Appliance + "/" + random
	leaseUntil time.Time // when the lease ends if no heartbeat succeeds (by the local clock, from the send time)
	dbOK       bool      // the last heartbeat succeeded
	clock      int64     // Changes cursor
	remote     map[int64]*remoteRun
	remoteVM   map[string]int
	queuedVM   map[string]int64 // the VM's queued job
	syncNow    chan struct{}
}

// remoteRun is a job running under another holder: it takes slots on
// its datastores and its VM runs.
type remoteRun struct {
	vm string
	ds []*datastore
}

func (f *fleet) init() {
	f.remote = map[int64]*remoteRun{}
	f.remoteVM = map[string]int{}
	f.queuedVM = map[string]int64{}
	f.syncNow = make(chan struct{}, 1)
}

func newHolder(appliance string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return appliance + "/" + hex.EncodeToString(b)
}

// register takes a lease under a new holder name.
func (q *Queue) register(ctx context.Context) error {
	q.holder = newHolder(q.cfg.Appliance)
	sent := time.Now()
	if err := q.store.Heartbeat(ctx, q.holder, q.cfg.Appliance, q.cfg.LeaseTTL); err != nil {
		return err
	}
	q.leaseUntil, q.dbOK = sent.Add(q.cfg.LeaseTTL), true
	return nil
}

// leaseOK reports whether the queue may start jobs: its lease is live and
// the store answered the last heartbeat. q.mu must be held.
func (q *Queue) leaseOK() bool { return q.dbOK && time.Now().Before(q.leaseUntil) }

func (q *Queue) syncSoon() {
	select {
	case q.syncNow <- struct{}{}:
	default:
	}
}

// forget drops what the mirror knows of job id. q.mu must be held.
func (q *Queue) forget(id int64) {
	if e := q.queued[id]; e != nil {
		e.gone = true
		q.unDue(e)
		delete(q.queued, id)
		if q.queuedVM[e.VM] == id {
			delete(q.queuedVM, e.VM)
		}
	}
	if r := q.remote[id]; r != nil {
		delete(q.remote, id)
		for _, d := range r.ds {
			d.remote--
		}
		if q.remoteVM[r.vm]--; q.remoteVM[r.vm] <= 0 {
			delete(q.remoteVM, r.vm)
		}
	}
}

// mirrorRemote records a job another holder runs. q.mu must be held.
func (q *Queue) mirrorRemote(j Job) {
	if j.Holder == q.holder {
		return
	}
	q.forget(j.ID)
	r := &remoteRun{vm: j.VM}
	for _, name := range j.Datastores() {
		d := q.datastore(name)
		d.remote++
		r.ds = append(r.ds, d)
	}
	q.remote[j.ID] = r
	q.remoteVM[j.VM]++
}

// absorb brings the mirror up to date with jobs read from Changes. q.mu
// must be held. What it is given is never older than a write of this
// queue the mirror shows (syncStore reads again under q.mu when one
// reached the mirror during the read); a job whose write is in flight
// (running here, or starting) is left to the pass that writes it.
func (q *Queue) absorb(jobs []Job) {
	for _, j := range jobs {
		if rj := q.running[j.ID]; rj != nil {
			// Ours: the scheduler keeps it. Another appliance may have
			// asked to cancel it.
			if j.CancelRequested && j.Epoch == rj.job.Epoch && !rj.cancelRequested {
				rj.cancelRequested = true
				rj.cancel()
			}
			continue
		}
		if st := q.starting[j.ID]; st != nil {
			// Its start is being written: the pass's result decides
			// the mirror. A cancel asked of the new run is kept for
			// its launch; what another writer did, for a start that
			// fails.
			if j.State == Running && j.Holder == q.holder {
				st.cancel = st.cancel || j.CancelRequested
			} else {
				st.other = &j
			}
			continue
		}
		switch {
		case j.State == Queued:
			q.mirror(j)
		case j.State == Running:
			q.mirrorRemote(j)
		default:
			q.forget(j.ID)
		}
	}
}

// loseLease stops every run of the queue: its lease ended (or could not
// be renewed before it expired), so another appliance may run them now.
// The queue comes back under a new holder name at the next heartbeat.
// q.mu must be held.
func (q *Queue) loseLease(why string) {
	q.log.Error("queue: lease lost: stopping this appliance's runs; they go back to the fleet's queue",
		"holder", q.holder, "runs", len(q.running), "why", why)
	q.stats.leasesLost++
	for _, rj := range q.running {
		rj.leaseLost = true
		rj.cancel()
	}
	for _, d := range q.ds {
		d.setShare(Share{})
		d.recorded = Share{}
		d.held = false // the store ends the old holder's shares with its lease
	}
	q.holder, q.leaseUntil, q.dbOK = newHolder(q.cfg.Appliance), time.Time{}, false
}

// syncLoop renews the lease, takes rate shares, reaps expired leases and
// reads the fleet's changes, every SyncInterval and when asked, until ctx
// ends.
//
// Between two full syncs it looks at the fleet's changes and at the rate
// shares fastSyncs times: a share one queue gives up, or one another
// queue waits for, moves in a tenth of a sync, not a whole one.
func (q *Queue) syncLoop(ctx context.Context) {
	t := time.NewTicker(q.cfg.SyncInterval / fastSyncs)
	defer t.Stop()
	last := time.Time{}
	for ctx.Err() == nil {
		if time.Since(last) >= q.cfg.SyncInterval*9/10 {
			last = time.Now()
			q.syncOnce(ctx)
		} else {
			q.fastSync(ctx)
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-q.syncNow:
			last = time.Time{} // asked for: a full sync
		}
	}
}

// fastSyncs is how many quick looks a sync interval holds.
const fastSyncs = 40

// fastSync reads the fleet's changes and moves the rate shares that must
// move now.
func (q *Queue) fastSync(ctx context.Context) {
	q.mu.Lock()
	ok := q.leaseOK()
	q.mu.Unlock()
	if !ok {
		return
	}
	octx, cancel := q.syncCtx(ctx)
	defer cancel()
	if err := q.syncStore(octx, false); err != nil {
		// The full sync says so: a quick look fails forty times a
		// second while the store is away.
		q.log.Debug("queue: reading the fleet's changes failed", "err", err)
		return
	}
	q.syncShares(octx, false)
	q.signal()
}

// syncCtx bounds one sync's calls to the store: LeaseTTL/2, and never
// past the end of the lease by this queue's clock, so a call that hangs
// (a network cut) does not keep the queue from stopping its runs when the
// lease ends, before another appliance may reap and restart them.
func (q *Queue) syncCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	q.mu.Lock()
	until := q.leaseUntil
	q.mu.Unlock()
	d := time.Now().Add(q.cfg.LeaseTTL / 2)
	if !until.IsZero() && until.Before(d) {
		d = until
	}
	return context.WithDeadline(ctx, d)
}

func (q *Queue) syncOnce(ctx context.Context) {
	octx, cancel := q.syncCtx(ctx)
	defer cancel()
	q.mu.Lock()
	holder := q.holder
	q.mu.Unlock()
	sent := time.Now()
	err := q.store.Heartbeat(octx, holder, q.cfg.Appliance, q.cfg.LeaseTTL)
	q.mu.Lock()
	switch {
	case q.holder != holder:
	case err == nil:
		if !q.dbOK {
			q.log.Info("queue: store reachable again", "holder", holder)
		}
		q.leaseUntil, q.dbOK = sent.Add(q.cfg.LeaseTTL), true
	case errors.Is(err, ErrLeaseLost):
		q.loseLease(err.Error())
		q.syncSoon()
	default:
		if q.dbOK && ctx.Err() == nil {
			q.log.Warn("queue: heartbeat failed: starting nothing until the store answers; running scans go on within their lease",
				"err", err, "lease_left", time.Until(q.leaseUntil).Round(time.Millisecond))
		}
		q.dbOK = false
		if !time.Now().Before(q.leaseUntil) {
			q.loseLease("store unreachable for the whole lease")
		}
	}
	ok := q.dbOK
	q.mu.Unlock()
	q.signal()
	if !ok {
		return
	}
	q.syncShares(octx, true)
	if err := q.reap(octx); err != nil && ctx.Err() == nil {
		q.log.Warn("queue: reaping expired leases failed", "err", err)
	}
	if err := q.syncStore(octx, true); err != nil && ctx.Err() == nil {
		q.log.Warn("queue: reading the fleet's changes failed", "err", err)
	}
	q.signal()
}

// syncStore reads the datastore settings and the jobs changed since the
// last look.
func (q *Queue) syncStore(ctx context.Context, settings bool) error {
	var saved map[string]DatastoreConfig
	if settings {
		var err error
		if saved, err = q.store.Datastores(ctx); err != nil {
			return err
		}
	}
	q.mu.Lock()
	for name, c := range saved {
		if d := q.datastore(name); d.cfg != c {
			d.configure(c)
		}
	}
	q.mu.Unlock()
	// The changes are read without q.mu, so a pass or an enqueue need
	// not wait for the round trip. What is read is absorbed only if no
	// write of this queue reached the mirror meanwhile: else the page
	// could predate a write the mirror already shows, and it is read
	// again under q.mu (a write in flight then is one whose result the
	// mirror takes later, over what absorb did; see absorb).
	const page = 1000
	for {
		q.mu.Lock()
		gen, cursor := q.wgen, q.clock
		q.mu.Unlock()
		jobs, next, err := q.store.Changes(ctx, cursor, page)
		if err != nil {
			return err
		}
		q.mu.Lock()
		if q.wgen != gen {
			jobs, next, err = q.store.Changes(ctx, q.clock, page)
			if err != nil {
				q.mu.Unlock()
				return err
			}
		}
		q.absorb(jobs)
		q.clock = next
		q.mu.Unlock()
		if len(jobs) < page {
			return nil
		}
	}
}

// reap ends the runs of leases that ended (another appliance died, or
// this one's earlier process) as lost: see lostOutcome.
func (q *Queue) reap(ctx context.Context) error {
	q.mu.Lock()
	holder := q.holder
	q.mu.Unlock()
	lost, err := q.store.Reap(ctx, holder)
	if err != nil || len(lost) == 0 {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waitApplied()
	now := q.cfg.Now()
	ts := make([]Transition, len(lost))
	for i, j := range lost {
		ts[i] = q.lostOutcome(j, q.queuedVM[j.VM], now)
	}
	results, err := q.store.Apply(ctx, ts)
	q.wgen++
	if err != nil {
		return err
	}
	for i, r := range results {
		if r.Err != nil {
			continue // another appliance ended it first
		}
		q.log.Warn("queue: run lost with its holder's lease", "job", r.Job.ID, "vm", r.Job.VM, "holder", lost[i].Holder,
			"attempts", r.Job.Attempts, "crashes", r.Job.Crashes, "now", r.Job.State)
		q.forget(r.Job.ID)
		switch {
		case r.Job.State == Queued:
			q.mirror(r.Job)
		case ts[i].MergeInto != 0:
			if e := q.queued[ts[i].MergeInto]; e != nil {
				e.Job.Absorb(&lost[i])
				q.mirror(e.Job)
			}
		}
		if r.Job.State.Terminal() {
			switch r.Job.State {
			case Failed:
				q.stats.failed++
			case Cancelled:
				q.stats.cancelled++
			}
		}
	}
	return nil
}

// shareGrace is how many syncs a queue keeps a share of a datastore it
// stopped reading.
const shareGrace = 3

// syncShares takes this queue's shares of the budgets of the datastores
// it reads (see ShareRequest). A full sync renews every share (the fair
// split follows the fleet's scans); a quick one asks where reads wait for
// a share, where the share is off the fair split of the scans this queue
// knows of or the store still records more than the limiter allows (the
// second step of lowering a share; at most every tenth of a sync), and
// gives back the share of a datastore this queue no longer reads when
// another appliance scans it. So a share moves between appliances within
// a few quick looks, not one or two whole syncs.
//
// A share is kept for shareGrace syncs after the queue's last scan on the
// datastore ended, if no other appliance scans it, so back-to-back jobs do
// not wait for a grant each. Giving it back, the queue shuts its limiter
// first (no scan of its reads the datastore), so the store may free the
// share in the same call.
func (q *Queue) syncShares(ctx context.Context, full bool) {
	q.mu.Lock()
	holder := q.holder
	var reqs []ShareRequest
	var ds []*datastore
	for _, name := range q.dsNames {
		d := q.ds[name]
		if !d.cfg.Budget.rated() || d.running == 0 && !d.held {
			continue
		}
		if d.running == 0 {
			if d.remote == 0 && time.Since(d.idleAt) < shareGrace*q.cfg.SyncInterval {
				continue // idle a moment only, and nobody else wants it
			}
			d.setShare(Share{})
		} else if !full && !d.needsShare() && !(d.shareOff() && time.Since(d.askedAt) >= q.cfg.SyncInterval/10) {
			continue
		}
		d.askedAt = time.Now()
		reqs = append(reqs, ShareRequest{Datastore: name, Budget: d.cfg.Budget, Scans: d.running, Keep: d.share})
		ds = append(ds, d)
	}
	q.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	targets, err := q.store.Shares(ctx, holder, reqs)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Warn("queue: taking rate shares failed", "err", err)
		}
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.holder != holder {
		return // the lease ended meanwhile: the limiters stay shut
	}
	for i, d := range ds {
		if q.log.Enabled(ctx, slog.LevelDebug) {
			q.log.Debug("queue: rate share", "holder", holder, "datastore", d.name, "full", full,
				"scans", reqs[i].Scans, "remote", d.remote, "running", d.running,
				"keep", reqs[i].Keep.BytesPerSec, "target", targets[i].BytesPerSec)
		}
		d.setShare(targets[i])
		d.recorded = Share{BytesPerSec: max(targets[i].BytesPerSec, reqs[i].Keep.BytesPerSec),
			OpsPerSec: max(targets[i].OpsPerSec, reqs[i].Keep.OpsPerSec)}
		// What the store wrote: max(target, keep).
		d.held = reqs[i].Keep != (Share{}) || targets[i] != (Share{})
	}
}
