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
// The interface is kept narrow so a PostgreSQL implementation can follow:
// Enqueue is one transaction (SELECT ... FOR UPDATE of the VM's queued row,
// then UPDATE or INSERT, guarded by a partial unique index on vm WHERE
// state = 'queued'); Transition is a single conditional
// UPDATE ... WHERE id = $1 AND state = $2 RETURNING * per item of Apply. Several appliances
// sharing one PostgreSQL store would in addition need leases on running
// jobs in place of Recover; that is not part of this contract.
//
// Contract, for every implementation:
//   - Methods are safe for concurrent use.
//   - At most one job per VM is Queued at any time; Enqueue merges into it
//     (the rule is documented on Queue.Enqueue) and returns its id.
//   - Transitions are conditional on the From state and are the only way a
//     job changes state after Enqueue (except Cancel and Recover). Done is
//     only reached through Running -> Done, so completion is recorded once
//     even if a runner runs twice after a crash: the second run's
//     transition is refused with ErrConflict.
//   - Errors other than ErrNotFound and ErrConflict mean the write may not
//     have happened; the caller retries or gives up, never assumes.
type Store interface {
	// Enqueue inserts each request as a new queued job or merges it into
	// its VM's queued job, all in one transaction, and returns the
	// resulting jobs in request order. now is the enqueue time.
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
	// terminal job it returns the state and ErrFinished.
	Cancel(ctx context.Context, id int64, now time.Time) (State, error)

	// Recover runs once when a queue starts on the store, before anything
	// else: running jobs go back to Queued with their attempt count kept,
	// or to Cancelled when CancelRequested is set. A running job whose VM
	// also has a queued job is merged into that one (as Enqueue merges)
	// and ends Cancelled, naming it, so one job per VM stays queued. It
	// returns how many jobs it moved.
	Recover(ctx context.Context, now time.Time) (int, error)

	// Queued returns every queued job.
	Queued(ctx context.Context) ([]Job, error)

	// Get returns one job.
	Get(ctx context.Context, id int64) (Job, error)

	// List returns the jobs matching every set field of o, ordered by id
	// (descending unless o.Ascending), at most o.Limit of them. The queue
	// validates o before the call: Limit is in [1, MaxList], State is
	// empty or a known state, ids are not negative. A read only; it
	// needs no transaction, and a job changing state meanwhile may be seen
	// in either state. For PostgreSQL it is one
	// SELECT ... WHERE ... ORDER BY id LIMIT $n.
	List(ctx context.Context, o ListOptions) ([]Job, error)

	// Datastores returns the saved settings of every datastore that has
	// any; SetDatastore saves one.
	Datastores(ctx context.Context) (map[string]DatastoreConfig, error)
	SetDatastore(ctx context.Context, name string, cfg DatastoreConfig) error
}

// Transition is a conditional state change.
//
//   - To Running: Attempts is incremented, StartedAt = At, Error kept.
//   - To Queued (from Running: a retry or a shutdown): RetryAt is set, Error
//     = Err; with Interrupted, the run is not counted (Attempts is
//     decremented, never below 0), because the queue stopped it, not the
//     job.
//   - To Done, Failed, Cancelled: FinishedAt = At, Error = Err.
type Transition struct {
	ID       int64
	From, To State
	Err      string
	RetryAt  time.Time
	At       time.Time
	// Interrupted, on a Running -> Queued transition, says the run was
	// stopped by a shutdown and must not count as an attempt.
	Interrupted bool
}

// Result is the outcome of one Transition in Apply: the job as stored
// afterwards, or why the transition did not apply.
type Result struct {
	Job Job
	Err error // nil, or wraps ErrConflict or ErrNotFound
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
