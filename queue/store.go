package queue

import (
	"context"
	"fmt"
	"time"
)

// Store keeps jobs and datastore settings durably. The queue writes every
// state change through it before acknowledging it, so a Store method that
// returns nil must have committed.
//
// An implementation lives in a package of its own (queue/sqlite, …) and
// must pass the conformance suite in queue/storetest. The rules a Store
// needs that are not about storage live here, in the contract: how a
// request merges into its VM's queued job ([Job.Merge], [Job.Absorb]), and
// what each Transition writes. A Store is handed the database it keeps its
// tables in; it creates and migrates only its own tables, and never closes
// the database.
//
// Contract, for every implementation:
//   - Methods are safe for concurrent use.
//   - At most one job per VM is Queued at any time; Enqueue merges into it
//     with Job.Merge and returns its id.
//   - Transitions are conditional on the From state and are the only way a
//     job changes state after Enqueue (except Cancel). Done is only
//     reached through Running -> Done, so completion is recorded once even
//     if a runner runs twice after a crash: the second run's transition is
//     refused with ErrConflict.
//   - Errors other than ErrNotFound, ErrConflict and ErrFinished mean the
//     write may not have happened; the caller retries or gives up, never
//     assumes.
type Store interface {
	// Enqueue inserts each request as a new queued job or merges it into
	// its VM's queued job (Job.Merge), all in one transaction, and returns
	// the resulting jobs in request order. now is the enqueue time.
	Enqueue(ctx context.Context, reqs []Request, now time.Time) ([]Job, error)

	// Apply makes the transitions in one transaction, in order, and
	// returns one result per transition. Each is conditional: a job not
	// in t.From (or missing) is left alone and its result carries
	// ErrConflict (or ErrNotFound); the others still apply. A non-nil
	// error means nothing was committed. See Transition for the fields
	// each target state sets. Batching is what lets the queue pay one
	// commit (one fsync) for all the starts and ends of a scheduling pass.
	Apply(ctx context.Context, ts []Transition) ([]Result, error)

	// Cancel cancels a queued job at once (returning Cancelled), or sets
	// CancelRequested on a running one (returning Running). On a
	// terminal job it returns the state and an error wrapping ErrFinished.
	Cancel(ctx context.Context, id int64, now time.Time) (State, error)

	// Queued returns every queued job, by id.
	Queued(ctx context.Context) ([]Job, error)

	// Running returns every running job, by id. A queue starting on the
	// store calls it to find the runs a crash left behind, and ends each
	// with a Transition marked Lost.
	Running(ctx context.Context) ([]Job, error)

	// Get returns one job.
	Get(ctx context.Context, id int64) (Job, error)

	// List returns the jobs matching every set field of o, ordered by id
	// (descending unless o.Ascending), at most o.Limit of them. The queue
	// validates o before the call: Limit is in [1, MaxList], State is
	// empty or a known state, ids are not negative. A read only; it
	// needs no transaction, and a job changing state meanwhile may be seen
	// in either state.
	List(ctx context.Context, o ListOptions) ([]Job, error)

	// Datastores returns the saved settings of every datastore that has
	// any; SetDatastore saves one.
	Datastores(ctx context.Context) (map[string]DatastoreConfig, error)
	SetDatastore(ctx context.Context, name string, cfg DatastoreConfig) error

	// Heartbeat takes or renews holder's lease until ttl from now, by the
	// store's clock (the database server's, for a shared database). A
	// holder seen for the first time is registered, under appliance. A
	// holder whose lease expired, or that Reap ended, gets an error
	// wrapping ErrLeaseLost: it must stop its runs and come back under
	// another name.
	Heartbeat(ctx context.Context, holder, appliance string, ttl time.Duration) error

	// Reap ends the leases that expired, and those of the other holders
	// of self's appliance (its earlier processes: a restart ends them at
	// once rather than when they expire), and returns every running job
	// whose holder's lease is ended, for the caller to end as lost with
	// Transitions marked Lost. Several callers may reap at once; the
	// transitions are conditional, so each lost run is ended once.
	Reap(ctx context.Context, self string) ([]Job, error)

	// Changes returns the jobs changed by writes after the clock value
	// after (a new job, a merge, any transition, a cancel request), in
	// commit order, at most limit of them, and the clock value of the last
	// one returned (after itself when none). The clock counts committed
	// writes; Clock returns its value now. A fleet's queues follow each
	// other's writes through it.
	Changes(ctx context.Context, after int64, limit int) ([]Job, int64, error)
	Clock(ctx context.Context) (int64, error)

	// Shares takes holder's shares of the datastores' byte and op
	// budgets; see ShareRequest.
	Shares(ctx context.Context, holder string, reqs []ShareRequest) ([]Share, error)
}

// ShareRequest asks for a share of one datastore's rate budget for the
// holder running Scans scans on it. In one transaction over the fleet's
// live shares (those of holders whose lease has not ended or expired), the
// store computes with FairShare
//
//	target  = min(Budget × Scans / (Scans + others' scans), Budget − others' shares)
//	written = max(target, Keep)
//
// for bytes and ops alike, records written as the holder's share and
// returns target. Keep is the rate the holder's limiter runs at when it
// asks; it sets its limiter to target only after the call. So a holder's
// limiter never runs above the share recorded for it, the recorded shares
// never add up to more than the budget, and a share a holder gives up is
// released in the database one call later than in its limiter. A zero
// Budget is unlimited (target 0, no limit). Scans and Keep of zero
// release the share.
type ShareRequest struct {
	Datastore string
	Budget    Budget
	Scans     int
	Keep      Share
}

// FairShare is the rule on ShareRequest, from the other live holders'
// scans and shares of the datastore.
func FairShare(r ShareRequest, otherScans int, others Share) (target, written Share) {
	one := func(budget, other, keep float64) (float64, float64) {
		if budget <= 0 {
			return 0, 0
		}
		var t float64
		if r.Scans > 0 {
			t = min(budget*float64(r.Scans)/float64(r.Scans+max(otherScans, 0)), max(budget-other, 0))
		}
		return t, max(t, keep)
	}
	target.Datastore, written.Datastore = r.Datastore, r.Datastore
	target.BytesPerSec, written.BytesPerSec = one(r.Budget.BytesPerSec, others.BytesPerSec, r.Keep.BytesPerSec)
	target.OpsPerSec, written.OpsPerSec = one(r.Budget.OpsPerSec, others.OpsPerSec, r.Keep.OpsPerSec)
	return target, written
}

// Share is a rate granted to one holder on one datastore.
type Share struct {
	Datastore   string
	BytesPerSec float64
	OpsPerSec   float64
}

// Transition is a conditional state change.
//
//   - To Running: Attempts is incremented, StartedAt = At, Error kept.
//   - To Queued (from Running: a retry or a shutdown): RetryAt is set, Error
//     = Err; with Interrupted, the run is not counted (Attempts is
//     decremented, never below 0), because the queue stopped it, not the
//     job.
//   - To Done, Failed, Cancelled: FinishedAt = At, Error = Err.
//   - Lost, on a transition from Running: the run never reported an end
//     (a crash): Crashes is incremented.
//   - MergeInto, on Running -> Cancelled: the job is folded into that
//     queued job of the same VM with Job.Absorb, in the same transaction;
//     if that job is no longer queued, the transition is refused with
//     ErrConflict.
//   - Leases. To Running, Holder names the taker: its lease must be live
//     (else ErrLeaseLost); Epoch is set to the job's epoch plus one, and a
//     scan slot is taken on each of the job's datastores if fewer than
//     Slots[datastore] (at least 1) are taken over the fleet (else
//     ErrNoSlot, and nothing changes). From Running, Holder and Epoch must
//     be the run's (else ErrConflict: the run is not this one), and the
//     holder's lease must not have been ended, unless Lost (else
//     ErrLeaseLost); the job's slots are given back.
type Transition struct {
	ID       int64
	From, To State
	Err      string
	RetryAt  time.Time
	At       time.Time
	// Interrupted, on a Running -> Queued transition, says the run was
	// stopped by a shutdown and must not count as an attempt.
	Interrupted bool
	// Lost, on a transition from Running, says the run was lost to a
	// crash: it counts in Job.Crashes.
	Lost bool
	// MergeInto, on Running -> Cancelled, names the VM's queued job that
	// takes this one over.
	MergeInto int64
	// Holder and Epoch fence the transition to one run (see above).
	Holder string
	Epoch  int64
	// Slots, on a start, is the max_scans of each datastore of the job.
	Slots map[string]int
}

// Result is the outcome of one Transition in Apply: the job as stored
// afterwards, or why the transition did not apply.
type Result struct {
	Job Job
	Err error // nil, or wraps ErrConflict, ErrNotFound, ErrLeaseLost or ErrNoSlot
}

// DatastoreConfig is what the store keeps about a datastore.
type DatastoreConfig struct {
	Budget Budget
	Paused bool
}

// MaxList bounds the jobs one List call returns.
const MaxList = 1000

// ListOptions selects jobs for Queue.List. Every set field narrows the
// selection; the zero value lists the newest MaxList jobs.
//
// To page, pass the last id of a page as BeforeID (newest first) or as
// AfterID with Ascending (oldest first).
type ListOptions struct {
	// State, when set, keeps jobs in that state.
	State State
	// VM, when set, keeps that VM's jobs.
	VM string
	// BeforeID and AfterID, when positive, keep jobs with id < BeforeID
	// and id > AfterID.
	BeforeID, AfterID int64
	// Since and Until, when not zero, keep jobs first enqueued at or after
	// Since and before Until.
	Since, Until time.Time
	// Limit is the most jobs returned: 0 means MaxList, and more than
	// MaxList is an error.
	Limit int
	// Ascending lists oldest first (ascending id) instead of newest first.
	Ascending bool
}

// normalize validates o and fills in the default limit.
func (o *ListOptions) normalize() error {
	switch o.State {
	case "", Queued, Running, Done, Failed, Cancelled:
	default:
		return fmt.Errorf("%w: list: unknown state %q", ErrInvalid, o.State)
	}
	if o.Limit < 0 || o.Limit > MaxList {
		return fmt.Errorf("%w: list: limit %d not in [0, %d]", ErrInvalid, o.Limit, MaxList)
	}
	if o.Limit == 0 {
		o.Limit = MaxList
	}
	if o.BeforeID < 0 || o.AfterID < 0 || len(o.VM) > maxStringLen {
		return fmt.Errorf("%w: list: negative id bound or VM name too long", ErrInvalid)
	}
	return nil
}
