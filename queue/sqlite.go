package queue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver, pure Go
)

// SQLiteStore is the Store kept in an SQLite database through
// modernc.org/sqlite. Its tables are named queue_* so the appliance's
// results store can share the database file.
type SQLiteStore struct {
	db *sql.DB
}

// BusyTimeout is how long a write waits for another connection's lock.
const BusyTimeout = 10 * time.Second

// OpenSQLite opens (creating it if needed) the SQLite database at path with
// the settings the queue relies on: WAL journal, synchronous=FULL (a commit
// is on disk when it returns, so an acknowledged enqueue survives power
// loss, not only a crash), foreign keys, and a busy timeout. The caller
// closes the returned *sql.DB; other packages may share it.
func OpenSQLite(path string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	return db, nil
}

// NewSQLiteStore creates the queue's tables in db if missing and returns the
// store. db should come from OpenSQLite, or be opened with the same
// settings (WAL, busy timeout, synchronous=FULL); the store starts its write
// transactions with BEGIN IMMEDIATE itself, so it does not depend on
// _txlock. The caller keeps ownership of db.
func NewSQLiteStore(ctx context.Context, db *sql.DB) (*SQLiteStore, error) {
	s := &SQLiteStore{db: db}
	err := s.tx(ctx, func(c *sql.Conn) error {
		_, err := c.ExecContext(ctx, schema)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("queue: create tables: %w", err)
	}
	return s, nil
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
	enqueued_at, not_before, retry_at, started_at, finished_at, cancel_requested`

// tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection: immediate,
// so two writers never both read and then fail to upgrade their lock.
func (s *SQLiteStore) tx(ctx context.Context, f func(c *sql.Conn) error) (err error) {
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

func scanJob(row interface{ Scan(...any) error }) (Job, error) {
	var (
		j                                           Job
		disks, state                                string
		deadline, enq, nb, retry, started, finished int64
		cancel                                      int
	)
	err := row.Scan(&j.ID, &j.VM, &disks, &j.Class, &j.Reason, &j.SigVersion, &deadline, &state,
		&j.Attempts, &j.Error, &enq, &nb, &retry, &started, &finished, &cancel)
	if err != nil {
		return Job{}, err
	}
	if err := json.Unmarshal([]byte(disks), &j.Disks); err != nil {
		return Job{}, fmt.Errorf("queue: job %d: disks column: %w", j.ID, err)
	}
	j.State = State(state)
	j.Deadline, j.EnqueuedAt, j.NotBefore = fromNanos(deadline), fromNanos(enq), fromNanos(nb)
	j.RetryAt, j.StartedAt, j.FinishedAt = fromNanos(retry), fromNanos(started), fromNanos(finished)
	j.CancelRequested = cancel != 0
	return j, nil
}

func getJob(ctx context.Context, q querier, id int64) (Job, error) {
	j, err := scanJob(q.QueryRowContext(ctx, "SELECT "+jobColumns+" FROM queue_jobs WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	return j, err
}

// Enqueue implements Store.
func (s *SQLiteStore) Enqueue(ctx context.Context, reqs []Request, now time.Time) ([]Job, error) {
	out := make([]Job, 0, len(reqs))
	err := s.tx(ctx, func(c *sql.Conn) error {
		out = out[:0]
		for i := range reqs {
			r := &reqs[i]
			j, err := scanJob(c.QueryRowContext(ctx,
				"SELECT "+jobColumns+" FROM queue_jobs WHERE vm = ? AND state = 'queued'", r.VM))
			switch {
			case errors.Is(err, sql.ErrNoRows):
				j = Job{VM: r.VM, Disks: append([]Disk(nil), r.Disks...), Class: r.Class, Reason: r.Reason,
					SigVersion: r.SigVersion, Deadline: r.Deadline, State: Queued, EnqueuedAt: now,
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
				j.merge(r)
				disks, err := json.Marshal(j.Disks)
				if err != nil {
					return err
				}
				_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET disks = ?, class = ?, reason = ?,
					sig_version = ?, deadline = ?, not_before = ? WHERE id = ? AND state = 'queued'`,
					string(disks), j.Class, j.Reason, j.SigVersion, nanos(j.Deadline), nanos(j.NotBefore), j.ID)
				if err != nil {
					return fmt.Errorf("merge into job %d: %w", j.ID, err)
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

// Apply implements Store.
func (s *SQLiteStore) Apply(ctx context.Context, ts []Transition) ([]Result, error) {
	out := make([]Result, len(ts))
	err := s.tx(ctx, func(c *sql.Conn) error {
		for i, t := range ts {
			j, err := transition(ctx, c, t)
			if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
				return err
			}
			out[i] = Result{Job: j, Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: apply %d transitions: %w", len(ts), err)
	}
	return out, nil
}

func transition(ctx context.Context, c *sql.Conn, t Transition) (Job, error) {
	var res sql.Result
	var err error
	switch {
	case t.To == Running:
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'running', attempts = attempts + 1,
			started_at = ? WHERE id = ? AND state = ?`, nanos(t.At), t.ID, string(t.From))
	case t.To == Queued:
		uncount := 0
		if t.Interrupted {
			uncount = 1
		}
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'queued', retry_at = ?, error = ?,
			attempts = max(attempts - ?, 0) WHERE id = ? AND state = ?`,
			nanos(t.RetryAt), t.Err, uncount, t.ID, string(t.From))
	case t.To.Terminal():
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = ?, finished_at = ?, error = ?
			WHERE id = ? AND state = ?`, string(t.To), nanos(t.At), t.Err, t.ID, string(t.From))
	default:
		return Job{}, fmt.Errorf("%w: transition to %q", ErrInvalid, t.To)
	}
	if err != nil {
		return Job{}, fmt.Errorf("job %d %s -> %s: %w", t.ID, t.From, t.To, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return Job{}, err
	}
	j, err := getJob(ctx, c, t.ID)
	if err != nil {
		return Job{}, err
	}
	if n != 1 {
		return j, fmt.Errorf("%w: job %d is %s, not %s", ErrConflict, t.ID, j.State, t.From)
	}
	return j, nil
}

// Cancel implements Store.
func (s *SQLiteStore) Cancel(ctx context.Context, id int64, now time.Time) (State, error) {
	var st State
	err := s.tx(ctx, func(c *sql.Conn) error {
		j, err := getJob(ctx, c, id)
		if err != nil {
			return err
		}
		st = j.State
		switch j.State {
		case Queued:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = ?
				WHERE id = ? AND state = 'queued'`, nanos(now), id)
			st = Cancelled
		case Running:
			_, err = c.ExecContext(ctx, `UPDATE queue_jobs SET cancel_requested = 1 WHERE id = ?`, id)
		default:
			return fmt.Errorf("%w: job %d is %s", ErrFinished, id, j.State)
		}
		return err
	})
	if err != nil {
		return st, fmt.Errorf("queue: cancel: %w", err)
	}
	return st, nil
}

// Recover implements Store.
func (s *SQLiteStore) Recover(ctx context.Context, now time.Time) (int, error) {
	var n int64
	err := s.tx(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = ?
			WHERE state = 'running' AND cancel_requested = 1`, nanos(now))
		if err != nil {
			return err
		}
		a, _ := res.RowsAffected()
		// A VM may have a queued job beside its running one (enqueued while
		// it ran): fold the running job's disks into it rather than
		// breaking the one-queued-job rule.
		rows, err := c.QueryContext(ctx, "SELECT "+jobColumns+` FROM queue_jobs r WHERE state = 'running'
			AND EXISTS (SELECT 1 FROM queue_jobs q WHERE q.vm = r.vm AND q.state = 'queued')`)
		if err != nil {
			return err
		}
		var dup []Job
		for rows.Next() {
			j, err := scanJob(rows)
			if err != nil {
				rows.Close()
				return err
			}
			dup = append(dup, j)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range dup {
			q, err := scanJob(c.QueryRowContext(ctx, "SELECT "+jobColumns+
				" FROM queue_jobs WHERE vm = ? AND state = 'queued'", r.VM))
			if err != nil {
				return err
			}
			q.merge(&Request{Disks: r.Disks, Class: r.Class, Reason: r.Reason, Deadline: r.Deadline, NotBefore: r.NotBefore})
			disks, _ := json.Marshal(q.Disks)
			if r.EnqueuedAt.Before(q.EnqueuedAt) {
				q.EnqueuedAt = r.EnqueuedAt
			}
			if _, err := c.ExecContext(ctx, `UPDATE queue_jobs SET disks = ?, class = ?, reason = ?, deadline = ?,
				not_before = ?, enqueued_at = ? WHERE id = ?`, string(disks), q.Class, q.Reason, nanos(q.Deadline),
				nanos(q.NotBefore), nanos(q.EnqueuedAt), q.ID); err != nil {
				return err
			}
			if _, err := c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'cancelled', finished_at = ?,
				error = ? WHERE id = ?`, nanos(now), fmt.Sprintf("queue: merged into job %d after restart", q.ID), r.ID); err != nil {
				return err
			}
			a++
		}
		res, err = c.ExecContext(ctx, `UPDATE queue_jobs SET state = 'queued' WHERE state = 'running'`)
		if err != nil {
			return err
		}
		b, _ := res.RowsAffected()
		n = a + b
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("queue: recover running jobs: %w", err)
	}
	return int(n), nil
}

// Queued implements Store.
func (s *SQLiteStore) Queued(ctx context.Context) ([]Job, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+jobColumns+" FROM queue_jobs WHERE state = 'queued' ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("queue: list queued jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("queue: list queued jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue: list queued jobs: %w", err)
	}
	return out, nil
}

// List implements Store.
func (s *SQLiteStore) List(ctx context.Context, o ListOptions) ([]Job, error) {
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
	rows, err := s.db.QueryContext(ctx, q, append(args, o.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("queue: list jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("queue: list jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue: list jobs: %w", err)
	}
	return out, nil
}

// Get implements Store.
func (s *SQLiteStore) Get(ctx context.Context, id int64) (Job, error) {
	j, err := getJob(ctx, s.db, id)
	if err != nil {
		return Job{}, fmt.Errorf("queue: get: %w", err)
	}
	return j, nil
}

// Datastores implements Store.
func (s *SQLiteStore) Datastores(ctx context.Context) (map[string]DatastoreConfig, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT name, max_scans, bytes_per_sec, ops_per_sec, paused FROM queue_datastores")
	if err != nil {
		return nil, fmt.Errorf("queue: list datastores: %w", err)
	}
	defer rows.Close()
	out := map[string]DatastoreConfig{}
	for rows.Next() {
		var name string
		var c DatastoreConfig
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

// SetDatastore implements Store.
func (s *SQLiteStore) SetDatastore(ctx context.Context, name string, c DatastoreConfig) error {
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
