// Package sqlite is the queue.Store kept in an SQLite database through
// modernc.org/sqlite (pure Go), for one appliance. It is handed the
// database (see internal/sqlitedb.Open for the settings it relies on),
// creates and migrates only its own tables (named queue_*, so other parts
// of the appliance can keep theirs in the same file), and never closes it.
//
// Every write is one BEGIN IMMEDIATE transaction: SQLite serialises
// writers, so the conditional updates the contract asks for need no
// further locking.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/snapscan/snapscan/queue"
)

// Store is the queue.Store in SQLite. Its methods are safe for concurrent
// use.
type Store struct {
	db *sql.DB
}

var _ queue.Store = (*Store)(nil)

// New creates or migrates the queue's tables in db and returns the store.
// db should be opened with the settings of internal/sqlitedb.Open (WAL,
// busy timeout, synchronous=FULL); the store starts its write transactions
// with BEGIN IMMEDIATE itself, so it does not depend on _txlock. The
// caller keeps ownership of db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
	if err := s.tx(ctx, func(c *sql.Conn) error { return migrate(ctx, c) }); err != nil {
		return nil, fmt.Errorf("queue: create or migrate tables: %w", err)
	}
	return s, nil
}

// schemaVersion is the version of the tables this code writes. Each step
// of migrations takes a database from the version before it to its own.
const schemaVersion = 2

var migrations = map[int]string{
	// v2: runs lost to crashes are counted (issue 10.4).
	2: `ALTER TABLE queue_jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;`,
}

// migrate brings the queue's tables to schemaVersion. A database made
// before versions were recorded has queue_jobs and no queue_schema: that
// is version 1.
func migrate(ctx context.Context, c *sql.Conn) error {
	if _, err := c.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS queue_schema (version INTEGER NOT NULL)`); err != nil {
		return err
	}
	var v int
	err := c.QueryRowContext(ctx, `SELECT version FROM queue_schema`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var n int
		if err := c.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'queue_jobs'`).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			if _, err := c.ExecContext(ctx, schema); err != nil {
				return err
			}
			v = schemaVersion
		} else {
			v = 1
		}
		if _, err := c.ExecContext(ctx, `INSERT INTO queue_schema (version) VALUES (?)`, v); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	if v > schemaVersion {
		return fmt.Errorf("tables are at version %d, newer than this snapscan (%d)", v, schemaVersion)
	}
	for ; v < schemaVersion; v++ {
		if _, err := c.ExecContext(ctx, migrations[v+1]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if _, err := c.ExecContext(ctx, `UPDATE queue_schema SET version = ?`, v+1); err != nil {
			return err
		}
	}
	return nil
}

// Times are unix nanoseconds, 0 for the zero time; disks are a JSON array.
// The partial unique index makes "one queued job per VM" a property of the
// data, not only of the code.
const schema = `
CREATE TABLE IF NOT EXISTS queue_jobs (
	id               INTEGER PRIMARY KEY AUTOINCREMENT,
	vm               TEXT    NOT NULL,
	disks            TEXT    NOT NULL,
	class            INTEGER NOT NULL,
	reason           TEXT    NOT NULL DEFAULT '',
	sig_version      TEXT    NOT NULL DEFAULT '',
	deadline         INTEGER NOT NULL DEFAULT 0,
	state            TEXT    NOT NULL,
	attempts         INTEGER NOT NULL DEFAULT 0,
	error            TEXT    NOT NULL DEFAULT '',
	enqueued_at      INTEGER NOT NULL,
	not_before       INTEGER NOT NULL DEFAULT 0,
	retry_at         INTEGER NOT NULL DEFAULT 0,
	started_at       INTEGER NOT NULL DEFAULT 0,
	finished_at      INTEGER NOT NULL DEFAULT 0,
	cancel_requested INTEGER NOT NULL DEFAULT 0,
	crashes          INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_jobs_one_queued ON queue_jobs(vm) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS queue_jobs_state ON queue_jobs(state);
CREATE INDEX IF NOT EXISTS queue_jobs_vm ON queue_jobs(vm);
CREATE TABLE IF NOT EXISTS queue_datastores (
	name          TEXT PRIMARY KEY,
	max_scans     INTEGER NOT NULL,
	bytes_per_sec REAL    NOT NULL,
	ops_per_sec   REAL    NOT NULL,
	paused        INTEGER NOT NULL
);
`

const jobColumns = `id, vm, disks, class, reason, sig_version, deadline, state, attempts, error,
	enqueued_at, not_before, retry_at, started_at, finished_at, cancel_requested, crashes`

// tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection: immediate,
// so two writers never both read and then fail to upgrade their lock.
func (s *Store) tx(ctx context.Context, f func(c *sql.Conn) error) (err error) {
	c, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// A cancelled ctx must not keep the rollback from running.
			_, _ = c.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	if err := f(c); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, "COMMIT")
	return err
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
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

func scanJob(row interface{ Scan(...any) error }) (queue.Job, error) {
	var (
		j                                           queue.Job
		disks, state                                string
		deadline, enq, nb, retry, started, finished int64
		cancel                                      int
	)
	err := row.Scan(&j.ID, &j.VM, &disks, &j.Class, &j.Reason, &j.SigVersion, &deadline, &state,
		&j.Attempts, &j.Error, &enq, &nb, &retry, &started, &finished, &cancel, &j.Crashes)
	if err != nil {
		return queue.Job{}, err
	}
	if err := json.Unmarshal([]byte(disks), &j.Disks); err != nil {
		return queue.Job{}, fmt.Errorf("job %d: disks column: %w", j.ID, err)
	}
	j.State = queue.State(state)
	j.Deadline, j.EnqueuedAt, j.NotBefore = fromNanos(deadline), fromNanos(enq), fromNanos(nb)
	j.RetryAt, j.StartedAt, j.FinishedAt = fromNanos(retry), fromNanos(started), fromNanos(finished)
	j.CancelRequested = cancel != 0
	return j, nil
}

func getJob(ctx context.Context, q querier, id int64) (queue.Job, error) {
	j, err := scanJob(q.QueryRowContext(ctx, "SELECT "+jobColumns+" FROM queue_jobs WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return queue.Job{}, fmt.Errorf("%w: id %d", queue.ErrNotFound, id)
	}
	return j, err
}

func queryJobs(ctx context.Context, q querier, query string, args ...any) ([]queue.Job, error) {
	rows, err := q.QueryContext(ctx, query, args...)
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
func saveMerged(ctx context.Context, c *sql.Conn, j *queue.Job) error {
	disks, err := json.Marshal(j.Disks)
	if err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET disks = ?, class = ?, reason = ?, sig_version = ?,
		deadline = ?, not_before = ?, enqueued_at = ? WHERE id = ? AND state = 'queued'`,
		string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(j.NotBefore), nanos(j.EnqueuedAt), j.ID)
	if err != nil {
		return fmt.Errorf("merge into job %d: %w", j.ID, err)
	}
	return nil
}

// Enqueue implements queue.Store.
func (s *Store) Enqueue(ctx context.Context, reqs []queue.Request, now time.Time) ([]queue.Job, error) {
	out := make([]queue.Job, 0, len(reqs))
	err := s.tx(ctx, func(c *sql.Conn) error {
		out = out[:0]
		for i := range reqs {
			r := &reqs[i]
			j, err := scanJob(c.QueryRowContext(ctx,
				"SELECT "+jobColumns+" FROM queue_jobs WHERE vm = ? AND state = 'queued'", r.VM))
			switch {
			case errors.Is(err, sql.ErrNoRows):
				j = queue.Job{VM: r.VM, Disks: append([]queue.Disk(nil), r.Disks...), Class: r.Class, Reason: r.Reason,
					SigVersion: r.SigVersion, Deadline: r.Deadline, State: queue.Queued, EnqueuedAt: now,
					NotBefore: r.NotBefore}
				disks, err := json.Marshal(j.Disks)
				if err != nil {
					return err
				}
				res, err := c.ExecContext(ctx, `INSERT INTO queue_jobs
					(vm, disks, class, reason, sig_version, deadline, state, enqueued_at, not_before)
					VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)`,
					j.VM, string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(now), nanos(j.NotBefore))
				if err != nil {
					return fmt.Errorf("insert job for VM %q: %w", r.VM, err)
				}
				if j.ID, err = res.LastInsertId(); err != nil {
					return err
				}
			case err != nil:
				return fmt.Errorf("look up queued job of VM %q: %w", r.VM, err)
			default:
				j.Merge(r)
				if err := saveMerged(ctx, c, &j); err != nil {
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
	out := make([]queue.Result, len(ts))
	err := s.tx(ctx, func(c *sql.Conn) error {
		for i, t := range ts {
			j, err := transition(ctx, c, t)
			if err != nil && !errors.Is(err, queue.ErrConflict) && !errors.Is(err, queue.ErrNotFound) {
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

func transition(ctx context.Context, c *sql.Conn, t queue.Transition) (queue.Job, error) {
	if t.MergeInto != 0 {
		if t.To != queue.Cancelled || t.From != queue.Running {
			return queue.Job{}, fmt.Errorf("%w: MergeInto on %s -> %s", queue.ErrInvalid, t.From, t.To)
		}
		j, err := getJob(ctx, c, t.ID)
		if err != nil {
			return queue.Job{}, err
		}
		if j.State != t.From {
			return j, fmt.Errorf("%w: job %d is %s, not %s", queue.ErrConflict, t.ID, j.State, t.From)
		}
		into, err := getJob(ctx, c, t.MergeInto)
		if err != nil {
			return j, err
		}
		if into.State != queue.Queued || into.VM != j.VM {
			return j, fmt.Errorf("%w: job %d to merge into is %s, for VM %q", queue.ErrConflict, into.ID, into.State, into.VM)
		}
		into.Absorb(&j)
		if err := saveMerged(ctx, c, &into); err != nil {
			return j, err
		}
	}
	lost := 0
	if t.Lost {
		lost = 1
	}
	var res sql.Result
	var err error
	switch {
	case t.To == queue.Running:
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'running', attempts = attempts + 1,
			started_at = ? WHERE id = ? AND state = ?`, nanos(t.At), t.ID, string(t.From))
	case t.To == queue.Queued:
		uncount := 0
		if t.Interrupted {
			uncount = 1
		}
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'queued', retry_at = ?, error = ?,
			attempts = max(attempts - ?, 0), crashes = crashes + ? WHERE id = ? AND state = ?`,
			nanos(t.RetryAt), t.Err, uncount, lost, t.ID, string(t.From))
	case t.To.Terminal():
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = ?, finished_at = ?, error = ?,
			crashes = crashes + ? WHERE id = ? AND state = ?`, string(t.To), nanos(t.At), t.Err, lost, t.ID, string(t.From))
	default:
		return queue.Job{}, fmt.Errorf("%w: transition to %q", queue.ErrInvalid, t.To)
	}
	if err != nil {
		return queue.Job{}, fmt.Errorf("job %d %s -> %s: %w", t.ID, t.From, t.To, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return queue.Job{}, err
	}
	j, err := getJob(ctx, c, t.ID)
	if err != nil {
		return queue.Job{}, err
	}
	if n != 1 {
		return j, fmt.Errorf("%w: job %d is %s, not %s", queue.ErrConflict, t.ID, j.State, t.From)
	}
	return j, nil
}

// Cancel implements queue.Store.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (queue.State, error) {
	var st queue.State
	err := s.tx(ctx, func(c *sql.Conn) error {
		j, err := getJob(ctx, c, id)
		if err != nil {
			return err
		}
		st = j.State
		switch j.State {
		case queue.Queued:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = ?
				WHERE id = ? AND state = 'queued'`, nanos(now), id)
			st = queue.Cancelled
		case queue.Running:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET cancel_requested = 1 WHERE id = ?`, id)
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
	jobs, err := queryJobs(ctx, s.db, "SELECT "+jobColumns+" FROM queue_jobs WHERE state = 'queued' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("queue: list queued jobs: %w", err)
	}
	return jobs, nil
}

// Running implements queue.Store.
func (s *Store) Running(ctx context.Context) ([]queue.Job, error) {
	jobs, err := queryJobs(ctx, s.db, "SELECT "+jobColumns+" FROM queue_jobs WHERE state = 'running' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("queue: list running jobs: %w", err)
	}
	return jobs, nil
}

// List implements queue.Store.
func (s *Store) List(ctx context.Context, o queue.ListOptions) ([]queue.Job, error) {
	// The state and vm indexes hold the rowid (the id), so each filter is
	// an index range scan in id order.
	var where []string
	var args []any
	add := func(cond string, arg any) { where = append(where, cond); args = append(args, arg) }
	if o.State != "" {
		add("state = ?", string(o.State))
	}
	if o.VM != "" {
		add("vm = ?", o.VM)
	}
	if o.BeforeID > 0 {
		add("id < ?", o.BeforeID)
	}
	if o.AfterID > 0 {
		add("id > ?", o.AfterID)
	}
	if !o.Since.IsZero() {
		add("enqueued_at >= ?", o.Since.UnixNano())
	}
	if !o.Until.IsZero() {
		add("enqueued_at < ?", o.Until.UnixNano())
	}
	q := "SELECT " + jobColumns + " FROM queue_jobs"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if o.Ascending {
		q += " ORDER BY id ASC LIMIT ?"
	} else {
		q += " ORDER BY id DESC LIMIT ?"
	}
	jobs, err := queryJobs(ctx, s.db, q, append(args, o.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("queue: list jobs: %w", err)
	}
	return jobs, nil
}

// Get implements queue.Store.
func (s *Store) Get(ctx context.Context, id int64) (queue.Job, error) {
	j, err := getJob(ctx, s.db, id)
	if err != nil {
		return queue.Job{}, fmt.Errorf("queue: get: %w", err)
	}
	return j, nil
}

// Datastores implements queue.Store.
func (s *Store) Datastores(ctx context.Context) (map[string]queue.DatastoreConfig, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT name, max_scans, bytes_per_sec, ops_per_sec, paused FROM queue_datastores")
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
	err := s.tx(ctx, func(conn *sql.Conn) error {
		_, err := conn.ExecContext(ctx, `INSERT INTO queue_datastores (name, max_scans, bytes_per_sec, ops_per_sec, paused)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET max_scans = excluded.max_scans,
			bytes_per_sec = excluded.bytes_per_sec, ops_per_sec = excluded.ops_per_sec, paused = excluded.paused`,
			name, c.Budget.MaxScans, c.Budget.BytesPerSec, c.Budget.OpsPerSec, c.Paused)
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: save datastore %q: %w", name, err)
	}
	return nil
}
