// Package postgres is the queue.Store kept in PostgreSQL through
// github.com/jackc/pgx/v5, the shared state of a fleet of appliances. It
// is handed a connection pool the appliance owns, creates and migrates
// only its own tables (named queue_*), and never closes the pool.
//
// Every write transaction first bumps the one row of queue_clock. That
// row lock serialises the queue's writers across the fleet, so the
// read-then-write steps the contract needs (merge into the VM's queued
// job, conditional transitions) are atomic without retry loops, and the
// sequence number it hands out orders the writes as they committed. The
// writes are short (a few statements), so the lock is held for
// milliseconds; reads (Get, List, Queued) take no lock.
//
// A connection string may name several hosts with
// target_session_attrs=read-write: pgx then connects to the one that takes
// writes, which is how a failover to a promoted standby is followed. A
// write that fails because the server went away returns an error (the
// queue retries it); nothing is assumed committed.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/snapscan/snapscan/queue"
)

// Store is the queue.Store in PostgreSQL. Its methods are safe for
// concurrent use, by any number of processes sharing the database.
type Store struct {
	pool *pgxpool.Pool
}

var _ queue.Store = (*Store)(nil)

// New creates or migrates the queue's tables and returns the store. The
// caller keeps ownership of pool. Several appliances may call New on one
// database at once: the migration runs under an advisory lock.
func New(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	s := &Store{pool: pool}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7245001)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS queue_schema (version integer NOT NULL)`); err != nil {
			return err
		}
		var v int
		err := tx.QueryRow(ctx, `SELECT version FROM queue_schema`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, schema); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `INSERT INTO queue_schema (version) VALUES ($1)`, schemaVersion)
			return err
		case err != nil:
			return err
		case v > schemaVersion:
			return fmt.Errorf("tables are at version %d, newer than this snapscan (%d)", v, schemaVersion)
		}
		for ; v < schemaVersion; v++ {
			if _, err := tx.Exec(ctx, migrations[v+1]); err != nil {
				return fmt.Errorf("migrate to version %d: %w", v+1, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE queue_schema SET version = $1`, v+1); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: create or migrate tables: %w", err)
	}
	return s, nil
}

const schemaVersion = 1

var migrations = map[int]string{}

// Times are unix nanoseconds (0 for none), as in the SQLite store, so both
// keep them exactly; disks are a JSON array. seq is the queue_clock value
// of the job's last change.
const schema = `
CREATE TABLE queue_clock (seq bigint NOT NULL);
INSERT INTO queue_clock VALUES (0);
CREATE TABLE queue_jobs (
	id               bigserial PRIMARY KEY,
	vm               text      NOT NULL,
	disks            text      NOT NULL,
	class            integer   NOT NULL,
	reason           text      NOT NULL DEFAULT '',
	sig_version      text      NOT NULL DEFAULT '',
	deadline         bigint    NOT NULL DEFAULT 0,
	state            text      NOT NULL,
	attempts         integer   NOT NULL DEFAULT 0,
	error            text      NOT NULL DEFAULT '',
	enqueued_at      bigint    NOT NULL,
	not_before       bigint    NOT NULL DEFAULT 0,
	retry_at         bigint    NOT NULL DEFAULT 0,
	started_at       bigint    NOT NULL DEFAULT 0,
	finished_at      bigint    NOT NULL DEFAULT 0,
	cancel_requested boolean   NOT NULL DEFAULT false,
	crashes          integer   NOT NULL DEFAULT 0,
	holder           text      NOT NULL DEFAULT '',
	epoch            bigint    NOT NULL DEFAULT 0,
	seq              bigint    NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX queue_jobs_one_queued ON queue_jobs (vm) WHERE state = 'queued';
CREATE INDEX queue_jobs_state ON queue_jobs (state, id);
CREATE INDEX queue_jobs_vm ON queue_jobs (vm, id);
CREATE INDEX queue_jobs_seq ON queue_jobs (seq);
CREATE TABLE queue_datastores (
	name          text             PRIMARY KEY,
	max_scans     integer          NOT NULL,
	bytes_per_sec double precision NOT NULL,
	ops_per_sec   double precision NOT NULL,
	paused        boolean          NOT NULL
);
CREATE TABLE queue_holders (
	name       text        PRIMARY KEY,
	appliance  text        NOT NULL,
	expires_at timestamptz NOT NULL,
	ended      boolean     NOT NULL DEFAULT false
);
CREATE TABLE queue_slots (
	datastore text   NOT NULL,
	job_id    bigint NOT NULL,
	PRIMARY KEY (datastore, job_id)
);
CREATE INDEX queue_slots_job ON queue_slots (job_id);
CREATE TABLE queue_shares (
	holder        text             NOT NULL,
	datastore     text             NOT NULL,
	scans         integer          NOT NULL,
	bytes_per_sec double precision NOT NULL,
	ops_per_sec   double precision NOT NULL,
	PRIMARY KEY (holder, datastore)
);
`

const jobColumns = `id, vm, disks, class, reason, sig_version, deadline, state, attempts, error,
	enqueued_at, not_before, retry_at, started_at, finished_at, cancel_requested, crashes, holder, epoch`

// tx runs f in a write transaction, after taking the queue's clock (see
// the package documentation); seq is the value it got.
func (s *Store) tx(ctx context.Context, f func(tx pgx.Tx, seq int64) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var seq int64
		if err := tx.QueryRow(ctx, `UPDATE queue_clock SET seq = seq + 1 RETURNING seq`).Scan(&seq); err != nil {
			return err
		}
		return f(tx, seq)
	})
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func scanJob(row pgx.Row) (queue.Job, error) {
	var (
		j                                           queue.Job
		disks, state                                string
		deadline, enq, nb, retry, started, finished int64
	)
	err := row.Scan(&j.ID, &j.VM, &disks, &j.Class, &j.Reason, &j.SigVersion, &deadline, &state,
		&j.Attempts, &j.Error, &enq, &nb, &retry, &started, &finished, &j.CancelRequested, &j.Crashes, &j.Holder, &j.Epoch)
	if err != nil {
		return queue.Job{}, err
	}
	if err := json.Unmarshal([]byte(disks), &j.Disks); err != nil {
		return queue.Job{}, fmt.Errorf("job %d: disks column: %w", j.ID, err)
	}
	j.State = queue.State(state)
	j.Deadline, j.EnqueuedAt, j.NotBefore = fromNanos(deadline), fromNanos(enq), fromNanos(nb)
	j.RetryAt, j.StartedAt, j.FinishedAt = fromNanos(retry), fromNanos(started), fromNanos(finished)
	return j, nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// execer is a querier that also writes: a transaction, or a connection in
// one.
type execer interface {
	querier
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func getJob(ctx context.Context, q querier, id int64) (queue.Job, error) {
	j, err := scanJob(q.QueryRow(ctx, "SELECT "+jobColumns+" FROM queue_jobs WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return queue.Job{}, fmt.Errorf("%w: id %d", queue.ErrNotFound, id)
	}
	return j, err
}

func queryJobs(ctx context.Context, q querier, sql string, args ...any) ([]queue.Job, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []queue.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// saveMerged writes back the fields Job.Merge and Job.Absorb change.
func saveMerged(ctx context.Context, tx execer, seq int64, j *queue.Job) error {
	disks, err := json.Marshal(j.Disks)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE queue_jobs SET disks = $1, class = $2, reason = $3, sig_version = $4,
		deadline = $5, not_before = $6, enqueued_at = $7, seq = $8 WHERE id = $9 AND state = 'queued'`,
		string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(j.NotBefore), nanos(j.EnqueuedAt), seq, j.ID)
	if err != nil {
		return fmt.Errorf("merge into job %d: %w", j.ID, err)
	}
	return nil
}

// Enqueue implements queue.Store.
func (s *Store) Enqueue(ctx context.Context, reqs []queue.Request, now time.Time) ([]queue.Job, error) {
	var out []queue.Job
	err := s.tx(ctx, func(tx pgx.Tx, seq int64) error {
		out = make([]queue.Job, 0, len(reqs))
		for i := range reqs {
			r := &reqs[i]
			j, err := scanJob(tx.QueryRow(ctx, "SELECT "+jobColumns+" FROM queue_jobs WHERE vm = $1 AND state = 'queued'", r.VM))
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				j = queue.Job{VM: r.VM, Disks: append([]queue.Disk(nil), r.Disks...), Class: r.Class, Reason: r.Reason,
					SigVersion: r.SigVersion, Deadline: r.Deadline, State: queue.Queued, EnqueuedAt: now, NotBefore: r.NotBefore}
				disks, err := json.Marshal(j.Disks)
				if err != nil {
					return err
				}
				err = tx.QueryRow(ctx, `INSERT INTO queue_jobs
					(vm, disks, class, reason, sig_version, deadline, state, enqueued_at, not_before, seq)
					VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9) RETURNING id`,
					j.VM, string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(now), nanos(j.NotBefore), seq).Scan(&j.ID)
				if err != nil {
					return fmt.Errorf("insert job for VM %q: %w", r.VM, err)
				}
			case err != nil:
				return fmt.Errorf("look up queued job of VM %q: %w", r.VM, err)
			default:
				j.Merge(r)
				if err := saveMerged(ctx, tx, seq, &j); err != nil {
					return err
				}
			}
			out = append(out, j)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: enqueue: %w", err)
	}
	return out, nil
}

// Apply implements queue.Store.
func (s *Store) Apply(ctx context.Context, ts []queue.Transition) ([]queue.Result, error) {
	if pipelined(ts) {
		return s.applyPipelined(ctx, ts)
	}
	var out []queue.Result
	err := s.tx(ctx, func(tx pgx.Tx, seq int64) error {
		out = make([]queue.Result, len(ts))
		a := &applyTx{tx: tx, seq: seq, holders: map[string]holderState{}}
		for i, t := range ts {
			j, err := a.transition(ctx, t)
			if err != nil && !errors.Is(err, queue.ErrConflict) && !errors.Is(err, queue.ErrNotFound) &&
				!errors.Is(err, queue.ErrLeaseLost) && !errors.Is(err, queue.ErrNoSlot) {
				return err
			}
			out[i] = queue.Result{Job: j, Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: apply %d transitions: %w", len(ts), err)
	}
	return out, nil
}

// A pass of the scheduler is a batch of starts and ends (and expiries)
// of its own runs: applyPipelined sends them as one pipeline, the clock's
// bump and one conditional statement per transition, so a pass costs
// two round trips to the server (the pipeline, opened by BEGIN, and the
// commit) however
// many transitions it holds. Each statement carries the fence in its
// WHERE clause (state, holder and epoch, a live lease, free slots on
// every datastore of the job as stored) and changes nothing unless it
// holds; the slots change in CTEs of the job's update. A transition whose
// statement matched no row is then explained, in the same transaction, by
// the step-by-step checks (fence), which name the reason. Lost runs and
// merges (reaping, rare) take the step-by-step path.
func pipelined(ts []queue.Transition) bool {
	for _, t := range ts {
		if t.Lost || t.MergeInto != 0 || t.To != queue.Running && t.To != queue.Queued && !t.To.Terminal() ||
			t.To == queue.Running && t.From != queue.Queued {
			return false
		}
	}
	return len(ts) > 0
}

const (
	curSeq = `(SELECT seq FROM queue_clock)`
	// The job's distinct datastores, from its stored disks.
	jobDatastores = `(SELECT DISTINCT x->>'datastore' AS ds FROM json_array_elements(%s.disks::json) x)`
)

var (
	startSQL = `WITH u AS (
	UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, started_at = $2, holder = $3, epoch = epoch + 1, seq = ` + curSeq + `
	WHERE id = $1 AND state = 'queued'
		AND EXISTS (SELECT 1 FROM queue_holders WHERE name = $3 AND NOT ended AND expires_at > now())
		AND NOT EXISTS (SELECT 1 FROM ` + fmt.Sprintf(jobDatastores, "queue_jobs") + ` d
			WHERE (SELECT count(*) FROM queue_slots s WHERE s.datastore = d.ds) >= greatest(coalesce(($4::jsonb ->> d.ds)::int, 1), 1))
	RETURNING ` + jobColumns + `
), taken AS (
	INSERT INTO queue_slots (datastore, job_id) SELECT d.ds, u.id FROM u, LATERAL ` + fmt.Sprintf(jobDatastores, "u") + ` d
)
SELECT ` + jobColumns + ` FROM u`
	requeueSQL = `WITH u AS (
	UPDATE queue_jobs SET state = 'queued', retry_at = $2, error = $3, attempts = greatest(attempts - $4, 0),
		seq = ` + curSeq + ` WHERE id = $1` + endFence(5, 6) + `
	RETURNING ` + jobColumns + `
), freed AS (DELETE FROM queue_slots WHERE job_id IN (SELECT id FROM u))
SELECT ` + jobColumns + ` FROM u`
	finishSQL = `WITH u AS (
	UPDATE queue_jobs SET state = $2, finished_at = $3, error = $4, seq = ` + curSeq + ` WHERE id = $1` + endFence(5, 6) + `
	RETURNING ` + jobColumns + `
), freed AS (DELETE FROM queue_slots WHERE job_id IN (SELECT id FROM u))
SELECT ` + jobColumns + ` FROM u`
	expireSQL = `UPDATE queue_jobs SET state = $2, finished_at = $3, error = $4, seq = ` + curSeq + `
	WHERE id = $1 AND state = 'queued' RETURNING ` + jobColumns
)

// endFence is the condition of an end of a run (not a lost one): the
// job's current run, under a lease that was not ended. holder and epoch
// are the numbers of their parameters.
func endFence(holder, epoch int) string {
	return fmt.Sprintf(` AND state = 'running' AND holder = $%[1]d AND epoch = $%[2]d
		AND EXISTS (SELECT 1 FROM queue_holders WHERE name = $%[1]d AND NOT ended)`, holder, epoch)
}

func (s *Store) applyPipelined(ctx context.Context, ts []queue.Transition) ([]queue.Result, error) {
	out, err := s.applyPipelinedConn(ctx, ts)
	if err != nil {
		return nil, fmt.Errorf("queue: apply %d transitions: %w", len(ts), err)
	}
	return out, nil
}

// applyPipelinedConn opens the transaction in the pipeline itself (BEGIN
// is its first statement), so a pass costs two round trips: the
// pipeline, and the commit (after the explanations, if any).
func (s *Store) applyPipelinedConn(ctx context.Context, ts []queue.Transition) (out []queue.Result, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	inTx := false
	defer func() {
		if err != nil && inTx {
			// A connection left in a transaction is not handed out again.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, rerr := conn.Exec(rctx, "ROLLBACK"); rerr != nil {
				_ = conn.Conn().Close(rctx)
			}
		}
	}()
	out = make([]queue.Result, len(ts))
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`UPDATE queue_clock SET seq = seq + 1`)
	for _, t := range ts {
		switch {
		case t.To == queue.Running:
			slots, err := json.Marshal(t.Slots)
			if err != nil {
				return nil, err
			}
			b.Queue(startSQL, t.ID, nanos(t.At), t.Holder, string(slots))
		case t.From == queue.Queued:
			b.Queue(expireSQL, t.ID, string(t.To), nanos(t.At), t.Err)
		case t.To == queue.Queued:
			uncount := 0
			if t.Interrupted {
				uncount = 1
			}
			b.Queue(requeueSQL, t.ID, nanos(t.RetryAt), t.Err, uncount, t.Holder, t.Epoch)
		default:
			b.Queue(finishSQL, t.ID, string(t.To), nanos(t.At), t.Err, t.Holder, t.Epoch)
		}
	}
	inTx = true
	br := conn.SendBatch(ctx, b)
	for range 2 {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, err
		}
	}
	var missed []int
	for i := range ts {
		j, err := scanJob(br.QueryRow())
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			missed = append(missed, i)
		case err != nil:
			br.Close()
			return nil, fmt.Errorf("job %d %s -> %s: %w", ts[i].ID, ts[i].From, ts[i].To, err)
		default:
			out[i] = queue.Result{Job: j}
		}
	}
	if err := br.Close(); err != nil {
		return nil, err
	}
	// Explain the transitions that did not hold.
	a := &applyTx{tx: conn, holders: map[string]holderState{}}
	for _, i := range missed {
		j, err := a.fence(ctx, ts[i])
		if err == nil {
			err = fmt.Errorf("%w: job %d changed meanwhile", queue.ErrConflict, ts[i].ID)
		}
		if !errors.Is(err, queue.ErrConflict) && !errors.Is(err, queue.ErrNotFound) &&
			!errors.Is(err, queue.ErrLeaseLost) && !errors.Is(err, queue.ErrNoSlot) {
			return nil, err
		}
		out[i] = queue.Result{Job: j, Err: err}
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return nil, err
	}
	inTx = false
	return out, nil
}

// applyTx is one Apply's transaction. A pass's transitions are mostly of
// one holder, so its lease is read once per transaction (the answer
// cannot change within it: the transaction holds the clock's row lock,
// which every writer takes, and now() is the transaction's start): each
// statement is a round trip to the server, and on a loaded machine the
// round trips are what a pass costs.
type applyTx struct {
	tx      execer
	seq     int64
	holders map[string]holderState
}

type holderState struct{ found, ended, live bool }

func (a *applyTx) holder(ctx context.Context, name string) (holderState, error) {
	if h, ok := a.holders[name]; ok {
		return h, nil
	}
	h := holderState{found: true}
	err := a.tx.QueryRow(ctx, `SELECT ended, NOT ended AND expires_at > now() FROM queue_holders WHERE name = $1`, name).Scan(&h.ended, &h.live)
	if errors.Is(err, pgx.ErrNoRows) {
		h, err = holderState{}, nil
	}
	if err != nil {
		return h, err
	}
	a.holders[name] = h
	return h, nil
}

// fence checks a transition against the job's lease (see
// queue.Transition), by the database server's clock.
func (a *applyTx) fence(ctx context.Context, t queue.Transition) (queue.Job, error) {
	j, err := getJob(ctx, a.tx, t.ID)
	if err != nil {
		return queue.Job{}, err
	}
	if j.State != t.From {
		return j, fmt.Errorf("%w: job %d is %s, not %s", queue.ErrConflict, t.ID, j.State, t.From)
	}
	if t.From == queue.Running {
		if j.Holder != t.Holder || j.Epoch != t.Epoch {
			return j, fmt.Errorf("%w: job %d runs under %s epoch %d, not %s epoch %d", queue.ErrConflict,
				t.ID, j.Holder, j.Epoch, t.Holder, t.Epoch)
		}
		if !t.Lost {
			h, err := a.holder(ctx, t.Holder)
			if err != nil {
				return j, err
			}
			if !h.found || h.ended {
				return j, fmt.Errorf("%w: %s, reporting on job %d", queue.ErrLeaseLost, t.Holder, t.ID)
			}
		}
	}
	if t.To == queue.Running {
		h, err := a.holder(ctx, t.Holder)
		if err != nil {
			return j, err
		}
		if !h.live {
			return j, fmt.Errorf("%w: %s cannot start job %d", queue.ErrLeaseLost, t.Holder, t.ID)
		}
		dss := j.Datastores()
		rows, err := a.tx.Query(ctx, `SELECT datastore, count(*) FROM queue_slots WHERE datastore = ANY($1::text[]) GROUP BY datastore`, dss)
		if err != nil {
			return j, err
		}
		counts := map[string]int{}
		for rows.Next() {
			var ds string
			var n int
			if err := rows.Scan(&ds, &n); err != nil {
				rows.Close()
				return j, err
			}
			counts[ds] = n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return j, err
		}
		for _, ds := range dss {
			if n := counts[ds]; n >= max(t.Slots[ds], 1) {
				return j, fmt.Errorf("%w: %s runs %d scans, job %d", queue.ErrNoSlot, ds, n, t.ID)
			}
		}
	}
	return j, nil
}

func (a *applyTx) transition(ctx context.Context, t queue.Transition) (queue.Job, error) {
	tx, seq := a.tx, a.seq
	if t.To != queue.Running && t.To != queue.Queued && !t.To.Terminal() {
		return queue.Job{}, fmt.Errorf("%w: transition to %q", queue.ErrInvalid, t.To)
	}
	j, err := a.fence(ctx, t)
	if err != nil {
		return j, err
	}
	if t.MergeInto != 0 {
		if t.To != queue.Cancelled || t.From != queue.Running {
			return queue.Job{}, fmt.Errorf("%w: MergeInto on %s -> %s", queue.ErrInvalid, t.From, t.To)
		}
		into, err := getJob(ctx, tx, t.MergeInto)
		if err != nil {
			return j, err
		}
		if into.State != queue.Queued || into.VM != j.VM {
			return j, fmt.Errorf("%w: job %d to merge into is %s, for VM %q", queue.ErrConflict, into.ID, into.State, into.VM)
		}
		into.Absorb(&j)
		if err := saveMerged(ctx, tx, seq, &into); err != nil {
			return j, err
		}
	}
	lost := 0
	if t.Lost {
		lost = 1
	}
	// One statement per transition: the slots change in a CTE of the
	// job's update, which returns the job as it is now.
	slots := ""
	if t.From == queue.Running {
		slots = `WITH freed AS (DELETE FROM queue_slots WHERE job_id = $1) `
	}
	var row pgx.Row
	switch {
	case t.To == queue.Running:
		row = tx.QueryRow(ctx, `WITH taken AS (INSERT INTO queue_slots (datastore, job_id) SELECT unnest($5::text[]), $1)
			UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, started_at = $2,
			holder = $3, epoch = epoch + 1, seq = $4 WHERE id = $1 RETURNING `+jobColumns,
			t.ID, nanos(t.At), t.Holder, seq, j.Datastores())
	case t.To == queue.Queued:
		uncount := 0
		if t.Interrupted {
			uncount = 1
		}
		row = tx.QueryRow(ctx, slots+`UPDATE queue_jobs SET state = 'queued', retry_at = $2, error = $3,
			attempts = greatest(attempts - $4, 0), crashes = crashes + $5, seq = $6 WHERE id = $1 RETURNING `+jobColumns,
			t.ID, nanos(t.RetryAt), t.Err, uncount, lost, seq)
	default:
		row = tx.QueryRow(ctx, slots+`UPDATE queue_jobs SET state = $2, finished_at = $3, error = $4, crashes = crashes + $5,
			seq = $6 WHERE id = $1 RETURNING `+jobColumns, t.ID, string(t.To), nanos(t.At), t.Err, lost, seq)
	}
	if j, err = scanJob(row); err != nil {
		return queue.Job{}, fmt.Errorf("job %d %s -> %s: %w", t.ID, t.From, t.To, err)
	}
	return j, nil
}

// Cancel implements queue.Store.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (queue.State, error) {
	var st queue.State
	err := s.tx(ctx, func(tx pgx.Tx, seq int64) error {
		j, err := getJob(ctx, tx, id)
		if err != nil {
			return err
		}
		st = j.State
		switch j.State {
		case queue.Queued:
			_, err = tx.Exec(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = $1, seq = $2
				WHERE id = $3 AND state = 'queued'`, nanos(now), seq, id)
			st = queue.Cancelled
		case queue.Running:
			_, err = tx.Exec(ctx, `UPDATE queue_jobs SET cancel_requested = true, seq = $1 WHERE id = $2`, seq, id)
		default:
			return fmt.Errorf("%w: job %d is %s", queue.ErrFinished, id, j.State)
		}
		return err
	})
	if err != nil {
		return st, fmt.Errorf("queue: cancel: %w", err)
	}
	return st, nil
}

// Queued implements queue.Store.
func (s *Store) Queued(ctx context.Context) ([]queue.Job, error) {
	jobs, err := queryJobs(ctx, s.pool, "SELECT "+jobColumns+" FROM queue_jobs WHERE state = 'queued' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("queue: list queued jobs: %w", err)
	}
	return jobs, nil
}

// Running implements queue.Store.
func (s *Store) Running(ctx context.Context) ([]queue.Job, error) {
	jobs, err := queryJobs(ctx, s.pool, "SELECT "+jobColumns+" FROM queue_jobs WHERE state = 'running' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("queue: list running jobs: %w", err)
	}
	return jobs, nil
}

// List implements queue.Store.
func (s *Store) List(ctx context.Context, o queue.ListOptions) ([]queue.Job, error) {
	var where []string
	var args []any
	add := func(cond string, arg any) {
		args = append(args, arg)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if o.State != "" {
		add("state = $%d", string(o.State))
	}
	if o.VM != "" {
		add("vm = $%d", o.VM)
	}
	if o.BeforeID > 0 {
		add("id < $%d", o.BeforeID)
	}
	if o.AfterID > 0 {
		add("id > $%d", o.AfterID)
	}
	if !o.Since.IsZero() {
		add("enqueued_at >= $%d", o.Since.UnixNano())
	}
	if !o.Until.IsZero() {
		add("enqueued_at < $%d", o.Until.UnixNano())
	}
	q := "SELECT " + jobColumns + " FROM queue_jobs"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, o.Limit)
	if o.Ascending {
		q += fmt.Sprintf(" ORDER BY id ASC LIMIT $%d", len(args))
	} else {
		q += fmt.Sprintf(" ORDER BY id DESC LIMIT $%d", len(args))
	}
	jobs, err := queryJobs(ctx, s.pool, q, args...)
	if err != nil {
		return nil, fmt.Errorf("queue: list jobs: %w", err)
	}
	return jobs, nil
}

// Get implements queue.Store.
func (s *Store) Get(ctx context.Context, id int64) (queue.Job, error) {
	j, err := getJob(ctx, s.pool, id)
	if err != nil {
		return queue.Job{}, fmt.Errorf("queue: get: %w", err)
	}
	return j, nil
}

// Datastores implements queue.Store.
func (s *Store) Datastores(ctx context.Context) (map[string]queue.DatastoreConfig, error) {
	rows, err := s.pool.Query(ctx, "SELECT name, max_scans, bytes_per_sec, ops_per_sec, paused FROM queue_datastores")
	if err != nil {
		return nil, fmt.Errorf("queue: list datastores: %w", err)
	}
	defer rows.Close()
	out := map[string]queue.DatastoreConfig{}
	for rows.Next() {
		var name string
		var c queue.DatastoreConfig
		if err := rows.Scan(&name, &c.Budget.MaxScans, &c.Budget.BytesPerSec, &c.Budget.OpsPerSec, &c.Paused); err != nil {
			return nil, fmt.Errorf("queue: list datastores: %w", err)
		}
		out[name] = c
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue: list datastores: %w", err)
	}
	return out, nil
}

// SetDatastore implements queue.Store.
func (s *Store) SetDatastore(ctx context.Context, name string, c queue.DatastoreConfig) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO queue_datastores (name, max_scans, bytes_per_sec, ops_per_sec, paused)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET max_scans = excluded.max_scans,
		bytes_per_sec = excluded.bytes_per_sec, ops_per_sec = excluded.ops_per_sec, paused = excluded.paused`,
		name, c.Budget.MaxScans, c.Budget.BytesPerSec, c.Budget.OpsPerSec, c.Paused)
	if err != nil {
		return fmt.Errorf("queue: save datastore %q: %w", name, err)
	}
	return nil
}

// Heartbeat implements queue.Store. Leases run on the database server's
// clock, so the appliances' clocks need not agree.
func (s *Store) Heartbeat(ctx context.Context, holder, appliance string, ttl time.Duration) error {
	lost := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var live bool
		err := tx.QueryRow(ctx, `SELECT NOT ended AND expires_at > now() FROM queue_holders WHERE name = $1 FOR UPDATE`,
			holder).Scan(&live)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			_, err = tx.Exec(ctx, `INSERT INTO queue_holders (name, appliance, expires_at)
				VALUES ($1, $2, now() + $3 * interval '1 microsecond')`, holder, appliance, ttl.Microseconds())
			return err
		case err != nil:
			return err
		case !live:
			if _, err := tx.Exec(ctx, `UPDATE queue_holders SET ended = true WHERE name = $1`, holder); err != nil {
				return err
			}
			lost = true
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE queue_holders SET expires_at = now() + $1 * interval '1 microsecond' WHERE name = $2`,
			ttl.Microseconds(), holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: heartbeat: %w", err)
	}
	if lost {
		// Committed: the lease stays ended whatever the holder does next.
		return fmt.Errorf("%w: %s", queue.ErrLeaseLost, holder)
	}
	return nil
}

// Reap implements queue.Store.
func (s *Store) Reap(ctx context.Context, self string) ([]queue.Job, error) {
	// Most calls find nothing to end: look first, without a write.
	var n int
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM queue_holders WHERE NOT ended AND (expires_at <= now()
		OR (name != $1 AND appliance = (SELECT appliance FROM queue_holders WHERE name = $1))))
		+ (SELECT count(*) FROM queue_jobs j WHERE state = 'running' AND NOT EXISTS
			(SELECT 1 FROM queue_holders h WHERE h.name = j.holder AND NOT h.ended))`, self).Scan(&n)
	if err != nil {
		return nil, fmt.Errorf("queue: reap expired leases: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	var out []queue.Job
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE queue_holders SET ended = true WHERE NOT ended AND (expires_at <= now()
			OR (name != $1 AND appliance = (SELECT appliance FROM queue_holders WHERE name = $1)))`, self)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM queue_shares WHERE holder IN (SELECT name FROM queue_holders WHERE ended)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM queue_holders WHERE ended AND expires_at < now() - interval '1 hour'
			AND name NOT IN (SELECT holder FROM queue_jobs WHERE state = 'running')`); err != nil {
			return err
		}
		out, err = queryJobs(ctx, tx, "SELECT "+jobColumns+` FROM queue_jobs j WHERE state = 'running' AND NOT EXISTS
			(SELECT 1 FROM queue_holders h WHERE h.name = j.holder AND NOT h.ended) ORDER BY id`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("queue: reap expired leases: %w", err)
	}
	return out, nil
}

// Changes implements queue.Store.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]queue.Job, int64, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+jobColumns+", seq FROM queue_jobs WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit)
	if err != nil {
		return nil, after, fmt.Errorf("queue: read changes: %w", err)
	}
	defer rows.Close()
	var out []queue.Job
	next := after
	for rows.Next() {
		var seq int64
		j, err := scanJob(seqRow{rows, &seq})
		if err != nil {
			return nil, after, fmt.Errorf("queue: read changes: %w", err)
		}
		out, next = append(out, j), seq
	}
	if err := rows.Err(); err != nil {
		return nil, after, fmt.Errorf("queue: read changes: %w", err)
	}
	return out, next, nil
}

// seqRow scans jobColumns followed by seq.
type seqRow struct {
	pgx.Row
	seq *int64
}

func (r seqRow) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.seq)...) }

// Clock implements queue.Store.
func (s *Store) Clock(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.pool.QueryRow(ctx, `SELECT seq FROM queue_clock`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("queue: read clock: %w", err)
	}
	return seq, nil
}

// Shares implements queue.Store. The shares of a datastore are computed
// under a lock on its rows, so two holders never both take what is left.
func (s *Store) Shares(ctx context.Context, holder string, reqs []queue.ShareRequest) ([]queue.Share, error) {
	out := make([]queue.Share, len(reqs))
	// Locks in datastore order, so two holders never wait on each other.
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(reqs[a].Datastore, reqs[b].Datastore) })
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, i := range order {
			r := reqs[i]
			// One advisory lock per datastore, held to commit: the
			// read of the others' shares and the write of ours are one
			// step for the fleet.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7245002, hashtext($1))`, r.Datastore); err != nil {
				return err
			}
			var others queue.Share
			var scans int
			err := tx.QueryRow(ctx, `SELECT coalesce(sum(s.scans), 0), coalesce(sum(s.bytes_per_sec), 0),
				coalesce(sum(s.ops_per_sec), 0) FROM queue_shares s JOIN queue_holders h ON h.name = s.holder
				WHERE s.datastore = $1 AND s.holder != $2 AND NOT h.ended AND h.expires_at > now()`,
				r.Datastore, holder).Scan(&scans, &others.BytesPerSec, &others.OpsPerSec)
			if err != nil {
				return err
			}
			target, g := queue.FairShare(r, scans, others)
			out[i] = target
			if r.Scans == 0 && g.BytesPerSec == 0 && g.OpsPerSec == 0 {
				_, err = tx.Exec(ctx, `DELETE FROM queue_shares WHERE holder = $1 AND datastore = $2`, holder, r.Datastore)
			} else {
				_, err = tx.Exec(ctx, `INSERT INTO queue_shares (holder, datastore, scans, bytes_per_sec, ops_per_sec)
					VALUES ($1, $2, $3, $4, $5) ON CONFLICT (holder, datastore) DO UPDATE SET scans = excluded.scans,
					bytes_per_sec = excluded.bytes_per_sec, ops_per_sec = excluded.ops_per_sec`,
					holder, r.Datastore, r.Scans, g.BytesPerSec, g.OpsPerSec)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: take rate shares: %w", err)
	}
	return out, nil
}

// FenceQuery is the check that makes a write elsewhere in the same
// database (the appliance's results) conditional on the run (holder,
// epoch) still being job id's current run, by the rule the queue applies
// to the run's own end (queue.Transition): the job runs under that holder
// and epoch, and the holder's lease has not been ended. The query returns
// a row only then. Run inside the write's transaction, it locks the job's
// row and the lease's (FOR SHARE) until the commit, so no reap and no
// takeover comes between the check and the write: they wait for it, and a
// check that waited for one sees its outcome. Placeholders are ?, in
// Args' order.
func FenceQuery(id int64, holder string, epoch int64) (query string, args []any) {
	return `SELECT 1 FROM queue_jobs j JOIN queue_holders h ON h.name = j.holder
		WHERE j.id = ? AND j.state = 'running' AND j.holder = ? AND j.epoch = ? AND NOT h.ended
		FOR SHARE OF j, h`, []any{id, holder, epoch}
}
