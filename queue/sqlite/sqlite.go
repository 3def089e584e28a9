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

	"github.com/snapscan/snapscan/internal/sqlitedb"
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
const schemaVersion = 3

var migrations = map[int]string{
	// v2: runs lost to crashes are counted (issue 10.4).
	2: `ALTER TABLE queue_jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;`,
	// v3: leases (holders, epochs), fleet-wide scan slots and rate
	// shares, and the clock that orders changes (issue 13). Jobs left
	// running by v2 have no holder: the first Reap ends them as lost.
	3: `
ALTER TABLE queue_jobs ADD COLUMN holder TEXT NOT NULL DEFAULT '';
ALTER TABLE queue_jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_jobs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX queue_jobs_seq ON queue_jobs(seq);
CREATE TABLE queue_clock (seq INTEGER NOT NULL);
INSERT INTO queue_clock VALUES (0);
CREATE TABLE queue_holders (
	name       TEXT    PRIMARY KEY,
	appliance  TEXT    NOT NULL,
	expires_at INTEGER NOT NULL,
	ended      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE queue_slots (
	datastore TEXT    NOT NULL,
	job_id    INTEGER NOT NULL,
	PRIMARY KEY (datastore, job_id)
);
CREATE INDEX queue_slots_job ON queue_slots(job_id);
CREATE TABLE queue_shares (
	holder        TEXT    NOT NULL,
	datastore     TEXT    NOT NULL,
	scans         INTEGER NOT NULL,
	bytes_per_sec REAL    NOT NULL,
	ops_per_sec   REAL    NOT NULL,
	PRIMARY KEY (holder, datastore)
);`,
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
		}
		v = 1
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
	cancel_requested INTEGER NOT NULL DEFAULT 0
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
	enqueued_at, not_before, retry_at, started_at, finished_at, cancel_requested, crashes, holder, epoch`

// wtx runs f in a write transaction that changes jobs: seq is the clock
// value the changed rows get.
func (s *Store) wtx(ctx context.Context, f func(c *sql.Conn, seq int64) error) error {
	return s.tx(ctx, func(c *sql.Conn) error {
		var seq int64
		if err := c.QueryRowContext(ctx, `UPDATE queue_clock SET seq = seq + 1 RETURNING seq`).Scan(&seq); err != nil {
			return err
		}
		return f(c, seq)
	})
}

// tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection: immediate,
// so two writers never both read and then fail to upgrade their lock.
func (s *Store) tx(ctx context.Context, f func(c *sql.Conn) error) error {
	return sqlitedb.Tx(ctx, s.db, f)
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
		&j.Attempts, &j.Error, &enq, &nb, &retry, &started, &finished, &cancel, &j.Crashes, &j.Holder, &j.Epoch)
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
func saveMerged(ctx context.Context, c *sql.Conn, seq int64, j *queue.Job) error {
	disks, err := json.Marshal(j.Disks)
	if err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET disks = ?, class = ?, reason = ?, sig_version = ?,
		deadline = ?, not_before = ?, enqueued_at = ?, seq = ? WHERE id = ? AND state = 'queued'`,
		string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(j.NotBefore), nanos(j.EnqueuedAt), seq, j.ID)
	if err != nil {
		return fmt.Errorf("merge into job %d: %w", j.ID, err)
	}
	return nil
}

// Enqueue implements queue.Store.
func (s *Store) Enqueue(ctx context.Context, reqs []queue.Request, now time.Time) ([]queue.Job, error) {
	out := make([]queue.Job, 0, len(reqs))
	err := s.wtx(ctx, func(c *sql.Conn, seq int64) error {
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
					(vm, disks, class, reason, sig_version, deadline, state, enqueued_at, not_before, seq)
					VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)`,
					j.VM, string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(now), nanos(j.NotBefore), seq)
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
				if err := saveMerged(ctx, c, seq, &j); err != nil {
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
	err := s.wtx(ctx, func(c *sql.Conn, seq int64) error {
		now := time.Now().UnixNano()
		for i, t := range ts {
			j, err := transition(ctx, c, seq, now, t)
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

// fence checks a transition against the job's lease (see
// queue.Transition); now is the store's clock.
func fence(ctx context.Context, c *sql.Conn, now int64, t queue.Transition) (queue.Job, error) {
	j, err := getJob(ctx, c, t.ID)
	if err != nil {
		return queue.Job{}, err
	}
	if j.State != t.From {
		return j, fmt.Errorf("%w: job %d is %s, not %s", queue.ErrConflict, t.ID, j.State, t.From)
	}
	switch t.From {
	case queue.Running:
		if j.Holder != t.Holder || j.Epoch != t.Epoch {
			return j, fmt.Errorf("%w: job %d runs under %s epoch %d, not %s epoch %d", queue.ErrConflict,
				t.ID, j.Holder, j.Epoch, t.Holder, t.Epoch)
		}
		if !t.Lost {
			var ended int
			err := c.QueryRowContext(ctx, `SELECT ended FROM queue_holders WHERE name = ?`, t.Holder).Scan(&ended)
			if errors.Is(err, sql.ErrNoRows) || err == nil && ended != 0 {
				return j, fmt.Errorf("%w: %s, reporting on job %d", queue.ErrLeaseLost, t.Holder, t.ID)
			} else if err != nil {
				return j, err
			}
		}
	}
	if t.To == queue.Running {
		var exp int64
		var ended int
		err := c.QueryRowContext(ctx, `SELECT expires_at, ended FROM queue_holders WHERE name = ?`, t.Holder).Scan(&exp, &ended)
		if errors.Is(err, sql.ErrNoRows) || err == nil && (ended != 0 || exp <= now) {
			return j, fmt.Errorf("%w: %s cannot start job %d", queue.ErrLeaseLost, t.Holder, t.ID)
		} else if err != nil {
			return j, err
		}
		for _, ds := range j.Datastores() {
			var n int
			if err := c.QueryRowContext(ctx, `SELECT count(*) FROM queue_slots WHERE datastore = ?`, ds).Scan(&n); err != nil {
				return j, err
			}
			if n >= max(t.Slots[ds], 1) {
				return j, fmt.Errorf("%w: %s runs %d scans, job %d", queue.ErrNoSlot, ds, n, t.ID)
			}
		}
	}
	return j, nil
}

func transition(ctx context.Context, c *sql.Conn, seq, now int64, t queue.Transition) (queue.Job, error) {
	if t.To != queue.Running && t.To != queue.Queued && !t.To.Terminal() {
		return queue.Job{}, fmt.Errorf("%w: transition to %q", queue.ErrInvalid, t.To)
	}
	j, err := fence(ctx, c, now, t)
	if err != nil {
		return j, err
	}
	if t.MergeInto != 0 {
		if t.To != queue.Cancelled || t.From != queue.Running {
			return queue.Job{}, fmt.Errorf("%w: MergeInto on %s -> %s", queue.ErrInvalid, t.From, t.To)
		}
		into, err := getJob(ctx, c, t.MergeInto)
		if err != nil {
			return j, err
		}
		if into.State != queue.Queued || into.VM != j.VM {
			return j, fmt.Errorf("%w: job %d to merge into is %s, for VM %q", queue.ErrConflict, into.ID, into.State, into.VM)
		}
		into.Absorb(&j)
		if err := saveMerged(ctx, c, seq, &into); err != nil {
			return j, err
		}
	}
	lost := 0
	if t.Lost {
		lost = 1
	}
	switch {
	case t.To == queue.Running:
		_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'running', attempts = attempts + 1,
			started_at = ?, holder = ?, epoch = epoch + 1, seq = ? WHERE id = ?`, nanos(t.At), t.Holder, seq, t.ID)
		for _, ds := range j.Datastores() {
			if err == nil {
				_, err = c.ExecContext(ctx, `INSERT INTO queue_slots (datastore, job_id) VALUES (?, ?)`, ds, t.ID)
			}
		}
	case t.To == queue.Queued:
		uncount := 0
		if t.Interrupted {
			uncount = 1
		}
		_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'queued', retry_at = ?, error = ?,
			attempts = max(attempts - ?, 0), crashes = crashes + ?, seq = ? WHERE id = ?`,
			nanos(t.RetryAt), t.Err, uncount, lost, seq, t.ID)
	default:
		_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = ?, finished_at = ?, error = ?,
			crashes = crashes + ?, seq = ? WHERE id = ?`, string(t.To), nanos(t.At), t.Err, lost, seq, t.ID)
	}
	if err == nil && t.From == queue.Running {
		_, err = c.ExecContext(ctx, `DELETE FROM queue_slots WHERE job_id = ?`, t.ID)
	}
	if err != nil {
		return queue.Job{}, fmt.Errorf("job %d %s -> %s: %w", t.ID, t.From, t.To, err)
	}
	return getJob(ctx, c, t.ID)
}

// Cancel implements queue.Store.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (queue.State, error) {
	var st queue.State
	err := s.wtx(ctx, func(c *sql.Conn, seq int64) error {
		j, err := getJob(ctx, c, id)
		if err != nil {
			return err
		}
		st = j.State
		switch j.State {
		case queue.Queued:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = ?, seq = ?
				WHERE id = ? AND state = 'queued'`, nanos(now), seq, id)
			st = queue.Cancelled
		case queue.Running:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET cancel_requested = 1, seq = ? WHERE id = ?`, seq, id)
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

// Heartbeat implements queue.Store. The clock is this machine's: an SQLite
// database is shared only by processes on one host.
func (s *Store) Heartbeat(ctx context.Context, holder, appliance string, ttl time.Duration) error {
	lost := false
	err := s.tx(ctx, func(c *sql.Conn) error {
		now := time.Now()
		var exp int64
		var ended int
		err := c.QueryRowContext(ctx, `SELECT expires_at, ended FROM queue_holders WHERE name = ?`, holder).Scan(&exp, &ended)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = c.ExecContext(ctx, `INSERT INTO queue_holders (name, appliance, expires_at) VALUES (?, ?, ?)`,
				holder, appliance, now.Add(ttl).UnixNano())
			return err
		case err != nil:
			return err
		case ended != 0 || exp <= now.UnixNano():
			if _, err := c.ExecContext(ctx, `UPDATE queue_holders SET ended = 1 WHERE name = ?`, holder); err != nil {
				return err
			}
			lost = true
			return nil
		}
		_, err = c.ExecContext(ctx, `UPDATE queue_holders SET expires_at = ? WHERE name = ?`, now.Add(ttl).UnixNano(), holder)
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
	// Most calls find nothing to end: look first, without taking the
	// write lock every holder's heartbeat needs.
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM queue_holders WHERE ended = 0 AND (expires_at <= ?
		OR (name != ? AND appliance = (SELECT appliance FROM queue_holders WHERE name = ?))))
		+ (SELECT count(*) FROM queue_jobs j WHERE state = 'running' AND NOT EXISTS
			(SELECT 1 FROM queue_holders h WHERE h.name = j.holder AND h.ended = 0))`,
		time.Now().UnixNano(), self, self).Scan(&n)
	if err != nil {
		return nil, fmt.Errorf("queue: reap expired leases: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	var out []queue.Job
	err = s.tx(ctx, func(c *sql.Conn) error {
		_, err := c.ExecContext(ctx, `UPDATE queue_holders SET ended = 1 WHERE ended = 0 AND (expires_at <= ?
			OR (name != ? AND appliance = (SELECT appliance FROM queue_holders WHERE name = ?)))`,
			time.Now().UnixNano(), self, self)
		if err != nil {
			return err
		}
		// Ended holders keep no shares; their rows go once nothing
		// they held still runs.
		if _, err := c.ExecContext(ctx, `DELETE FROM queue_shares WHERE holder IN (SELECT name FROM queue_holders WHERE ended = 1)`); err != nil {
			return err
		}
		if _, err := c.ExecContext(ctx, `DELETE FROM queue_holders WHERE ended = 1 AND expires_at < ?
			AND name NOT IN (SELECT holder FROM queue_jobs WHERE state = 'running')`, time.Now().Add(-time.Hour).UnixNano()); err != nil {
			return err
		}
		out, err = queryJobs(ctx, c, "SELECT "+jobColumns+` FROM queue_jobs j WHERE state = 'running' AND NOT EXISTS
			(SELECT 1 FROM queue_holders h WHERE h.name = j.holder AND h.ended = 0) ORDER BY id`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("queue: reap expired leases: %w", err)
	}
	return out, nil
}

// Changes implements queue.Store.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]queue.Job, int64, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+jobColumns+", seq FROM queue_jobs WHERE seq > ? ORDER BY seq LIMIT ?", after, limit)
	if err != nil {
		return nil, after, fmt.Errorf("queue: read changes: %w", err)
	}
	defer rows.Close()
	var out []queue.Job
	next := after
	for rows.Next() {
		var j queue.Job
		j, next, err = scanJobSeq(rows)
		if err != nil {
			return nil, after, fmt.Errorf("queue: read changes: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, after, fmt.Errorf("queue: read changes: %w", err)
	}
	return out, next, nil
}

// scanJobSeq scans jobColumns followed by seq.
func scanJobSeq(rows *sql.Rows) (queue.Job, int64, error) {
	var seq int64
	j, err := scanJob(scanFunc(func(dest ...any) error { return rows.Scan(append(dest, &seq)...) }))
	return j, seq, err
}

type scanFunc func(...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// Clock implements queue.Store.
func (s *Store) Clock(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.db.QueryRowContext(ctx, `SELECT seq FROM queue_clock`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("queue: read clock: %w", err)
	}
	return seq, nil
}

// Shares implements queue.Store.
func (s *Store) Shares(ctx context.Context, holder string, reqs []queue.ShareRequest) ([]queue.Share, error) {
	out := make([]queue.Share, len(reqs))
	err := s.tx(ctx, func(c *sql.Conn) error {
		for i, r := range reqs {
			var others queue.Share
			var scans int
			err := c.QueryRowContext(ctx, `SELECT coalesce(sum(s.scans), 0), coalesce(sum(s.bytes_per_sec), 0),
				coalesce(sum(s.ops_per_sec), 0) FROM queue_shares s JOIN queue_holders h ON h.name = s.holder
				WHERE s.datastore = ? AND s.holder != ? AND h.ended = 0 AND h.expires_at > ?`,
				r.Datastore, holder, time.Now().UnixNano()).Scan(&scans, &others.BytesPerSec, &others.OpsPerSec)
			if err != nil {
				return err
			}
			target, g := queue.FairShare(r, scans, others)
			out[i] = target
			var have queue.Share
			var haveScans int
			err = c.QueryRowContext(ctx, `SELECT scans, bytes_per_sec, ops_per_sec FROM queue_shares WHERE holder = ? AND datastore = ?`,
				holder, r.Datastore).Scan(&haveScans, &have.BytesPerSec, &have.OpsPerSec)
			switch {
			case err == nil && haveScans == r.Scans && have.BytesPerSec == g.BytesPerSec && have.OpsPerSec == g.OpsPerSec:
				continue // unchanged
			case err != nil && !errors.Is(err, sql.ErrNoRows):
				return err
			}
			if r.Scans == 0 && g.BytesPerSec == 0 && g.OpsPerSec == 0 {
				_, err = c.ExecContext(ctx, `DELETE FROM queue_shares WHERE holder = ? AND datastore = ?`, holder, r.Datastore)
			} else {
				_, err = c.ExecContext(ctx, `INSERT INTO queue_shares (holder, datastore, scans, bytes_per_sec, ops_per_sec)
					VALUES (?, ?, ?, ?, ?) ON CONFLICT (holder, datastore) DO UPDATE SET scans = excluded.scans,
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
// a row only then. Run inside the write's transaction (BEGIN IMMEDIATE
// holds every other writer off until the commit), nothing can come
// between the check and the write. Placeholders are ?, in Args' order.
func FenceQuery(id int64, holder string, epoch int64) (query string, args []any) {
	return `SELECT 1 FROM queue_jobs j JOIN queue_holders h ON h.name = j.holder
		WHERE j.id = ? AND j.state = 'running' AND j.holder = ? AND j.epoch = ? AND h.ended = 0`,
		[]any{id, holder, epoch}
}
