package queue

import (
	"context"
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

	// Datastores returns the saved settings of every datastore that has
	// any; SetDatastore saves one.
	Datastores(ctx context.Context) (map[string]DatastoreConfig, error)
	SetDatastore(ctx context.Context, name string, cfg DatastoreConfig) error
}

// Transition is a conditional state change.
//
//   - To Running: Attempts is incremented, StartedAt = At, Error kept.
//   - To Queued (from Running: a retry or a shutdown): RetryAt is set, Error
//     = Err.
//   - To Done, Failed, Cancelled: FinishedAt = At, Error = Err.
type Transition struct {
	ID       int64
	From, To State
	Err      string
	RetryAt  time.Time
	At       time.Time
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
