// Package postgres implements results.Store on PostgreSQL, for a fleet of
// appliances sharing one database beside the queue's tables
// (queue/postgres): any appliance answers for any job, and the verdict
// cache is shared, so a file one appliance scanned is not scanned again by
// another under the same rules.
//
// The tables and their meaning are those of the SQLite store
// (appliance/results/sqlite): times are unix nanoseconds, lists and maps
// JSON text. It goes through database/sql with pgx's driver
// (github.com/jackc/pgx/v5/stdlib), so its code reads as the SQLite
// store's does; queries are written with ? and numbered for PostgreSQL.
//
// Writers on several appliances: SaveScan takes a per-job advisory lock,
// so two saves of one job (a re-run after a lease moved) never interleave;
// batches of verdicts and I/O samples are written in key order, so two
// batches never deadlock; puts of incremental records (shared by the
// fleet: a golden image one appliance scanned spares the others' clones)
// take one advisory lock, so two trims never deadlock.
package postgres

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/internal/sqlstore"
)

// Store is results.Store on PostgreSQL. Make it with New.
type Store struct {
	*sqlstore.Store // the queries both SQL stores share
	db              *sql.DB
	r               rebind // db, with ? numbered
}

var _ results.Store = (*Store)(nil)

// schemaVersion is the version New leaves the database at.
const schemaVersion = 8

const schema = `
CREATE TABLE IF NOT EXISTS results_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS scan_results (
	job_id      bigint  PRIMARY KEY,
	vm          text    NOT NULL,
	sig_name    text    NOT NULL,
	sig_version bigint  NOT NULL,
	rules_id    text    NOT NULL,
	started_at  bigint  NOT NULL,
	finished_at bigint  NOT NULL,
	files       bigint  NOT NULL,
	bytes       bigint  NOT NULL,
	cached      bigint  NOT NULL,
	findings    bigint  NOT NULL,
	status      text    NOT NULL DEFAULT '',
	incomplete  text    NOT NULL DEFAULT '{}',
	bytes_read  bigint  NOT NULL DEFAULT 0,
	read_ops    bigint  NOT NULL DEFAULT 0,
	disks       text    NOT NULL DEFAULT '[]',
	plans       text    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS scan_volumes (
	job_id         bigint NOT NULL,
	disk           text   NOT NULL,
	volume         text   NOT NULL,
	file_system    text   NOT NULL,
	error          text   NOT NULL,
	files          bigint NOT NULL,
	bytes          bigint NOT NULL,
	cached         bigint NOT NULL,
	skipped        text   NOT NULL,
	errors         text   NOT NULL,
	errors_dropped bigint NOT NULL,
	reused         bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (job_id, disk, volume)
);
CREATE TABLE IF NOT EXISTS incremental_records (
	identity    text   NOT NULL,
	rules       text   NOT NULL,
	path        text   NOT NULL,
	recorded_at bigint NOT NULL,
	stored_at   bigint NOT NULL,
	data        bytea  NOT NULL,
	PRIMARY KEY (identity, rules)
);
CREATE INDEX IF NOT EXISTS incremental_records_rules ON incremental_records(rules, stored_at);
CREATE TABLE IF NOT EXISTS incremental_paths (
	path        text   NOT NULL,
	rules       text   NOT NULL,
	identity    text   NOT NULL,
	recorded_at bigint NOT NULL,
	PRIMARY KEY (path, rules)
);
CREATE INDEX IF NOT EXISTS incremental_paths_rules ON incremental_paths(rules);
CREATE TABLE IF NOT EXISTS scan_findings (
	id          bigserial PRIMARY KEY,
	job_id      bigint NOT NULL,
	vm          text   NOT NULL,
	datastore   text   NOT NULL DEFAULT '',
	disk        text   NOT NULL,
	volume      text   NOT NULL,
	path        text   NOT NULL,
	size        bigint NOT NULL,
	sha256      text   NOT NULL,
	namespace   text   NOT NULL,
	rule        text   NOT NULL,
	tags        text   NOT NULL,
	meta        text   NOT NULL,
	strings     text   NOT NULL DEFAULT '[]',
	sig_version bigint NOT NULL,
	found_at    bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS scan_findings_job  ON scan_findings (job_id);
CREATE INDEX IF NOT EXISTS scan_findings_time ON scan_findings (found_at);
DROP INDEX IF EXISTS scan_findings_vm;
DROP INDEX IF EXISTS scan_findings_rule;
DROP INDEX IF EXISTS scan_findings_datastore;
CREATE INDEX IF NOT EXISTS scan_findings_vm_id ON scan_findings (vm, id);
CREATE INDEX IF NOT EXISTS scan_findings_rule_id ON scan_findings (rule, id);
CREATE INDEX IF NOT EXISTS scan_findings_datastore_id ON scan_findings (datastore, id);
CREATE TABLE IF NOT EXISTS scan_finding_tags (
	tag        text   NOT NULL,
	finding_id bigint NOT NULL,
	PRIMARY KEY (tag, finding_id)
);
CREATE INDEX IF NOT EXISTS scan_finding_tags_finding ON scan_finding_tags (finding_id);
CREATE TABLE IF NOT EXISTS scan_vms (
	vm               text   PRIMARY KEY,
	disks            text   NOT NULL,
	last_job         bigint NOT NULL,
	last_scanned     bigint NOT NULL,
	name             text   NOT NULL DEFAULT '',
	source           text   NOT NULL DEFAULT 'scan',
	updated_at       bigint NOT NULL DEFAULT 0,
	last_status      text   NOT NULL DEFAULT '',
	last_findings    bigint NOT NULL DEFAULT 0,
	last_sig_version bigint NOT NULL DEFAULT 0,
	last_bytes_read  bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS verdict_cache (
	content   bytea  NOT NULL,
	rules     text   NOT NULL,
	context   bytea  NOT NULL,
	matches   text   NOT NULL,
	stored_at bigint NOT NULL,
	PRIMARY KEY (content, rules, context)
);
CREATE TABLE IF NOT EXISTS io_history (
	datastore    text             NOT NULL,
	at           bigint           NOT NULL,
	interval_ns  bigint           NOT NULL,
	bytes        bigint           NOT NULL,
	ops          bigint           NOT NULL,
	budget_bytes double precision NOT NULL,
	budget_ops   double precision NOT NULL,
	running      bigint           NOT NULL,
	PRIMARY KEY (datastore, at)
);
CREATE INDEX IF NOT EXISTS io_history_at ON io_history (at);
CREATE TABLE IF NOT EXISTS fleet_appliances (
	name        text   PRIMARY KEY,
	instance    text   NOT NULL,
	version     text   NOT NULL,
	sig_name    text   NOT NULL,
	sig_version bigint NOT NULL,
	rules_id    text   NOT NULL,
	started_at  bigint NOT NULL,
	seen_at     bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_rescans (
	set_name   text   NOT NULL,
	version    bigint NOT NULL,
	claimed_by text   NOT NULL,
	claimed_at bigint NOT NULL,
	done_at    bigint NOT NULL DEFAULT 0,
	jobs       bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (set_name, version)
);
CREATE TABLE IF NOT EXISTS vm_freezes (
	vm           text    NOT NULL,
	id           text    NOT NULL,
	connector    text    NOT NULL,
	job_id       bigint  NOT NULL,
	taken        bigint  NOT NULL,
	freeze_stun  bigint  NOT NULL,
	quiesced     bigint  NOT NULL,
	released     bigint  NOT NULL,
	release_stun bigint  NOT NULL,
	release_took bigint  NOT NULL,
	held         bigint  NOT NULL,
	stale        bigint  NOT NULL,
	repaired     bigint  NOT NULL,
	error        text    NOT NULL,
	PRIMARY KEY (vm, id)
);
CREATE INDEX IF NOT EXISTS vm_freezes_taken ON vm_freezes(vm, taken);
CREATE INDEX IF NOT EXISTS vm_freezes_job ON vm_freezes(job_id);
`

// New creates the results tables in db if missing and returns the store.
// db is a PostgreSQL database opened through pgx's database/sql driver
// (stdlib.OpenDBFromPool); the caller keeps ownership of it. Several
// appliances may call New at once.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db, r: rebind{db}}
	s.Store = sqlstore.New(dialect, s.r, func(ctx context.Context, f func(c sqlstore.Querier) error) error {
		return s.tx(ctx, func(c rebind) error { return f(c) })
	})
	err := s.tx(ctx, func(c rebind) error {
		if _, err := c.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7245003)`); err != nil {
			return err
		}
		if _, err := c.ExecContext(ctx, schema); err != nil {
			return err
		}
		var v int
		err := c.QueryRowContext(ctx, `SELECT version FROM results_schema`).Scan(&v)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = c.ExecContext(ctx, `INSERT INTO results_schema (version) VALUES (?)`, schemaVersion)
			return err
		case err != nil:
			return err
		case v > schemaVersion:
			return fmt.Errorf("schema version %d is newer than this snapscan's %d", v, schemaVersion)
		case v < schemaVersion:
			// The schema above made what was missing; version 6's tag
			// table is filled from the findings stored before it.
			if v < 6 {
				if _, err := c.ExecContext(ctx, `INSERT INTO scan_finding_tags (tag, finding_id)
					SELECT DISTINCT t.v, f.id FROM scan_findings f, json_array_elements_text(f.tags::json) AS t(v)
					ON CONFLICT DO NOTHING`); err != nil {
					return err
				}
			}
			if v < 7 { // (only here: an ALTER locks the table, even when it has nothing to do)
				if _, err := c.ExecContext(ctx, `ALTER TABLE scan_volumes ADD COLUMN IF NOT EXISTS reused bigint NOT NULL DEFAULT 0`); err != nil {
					return err
				}
			}
			if v < 8 {
				if _, err := c.ExecContext(ctx, `ALTER TABLE scan_results ADD COLUMN IF NOT EXISTS plans text NOT NULL DEFAULT ''`); err != nil {
					return err
				}
			}
			_, err = c.ExecContext(ctx, `UPDATE results_schema SET version = ?`, schemaVersion)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("results: postgres: %w", err)
	}
	return s, nil
}

// querier is what a *sql.DB and a *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// rebind numbers the ? of each query ($1, $2, ...) for PostgreSQL. The
// queries here hold no ? inside string literals.
type rebind struct{ q querier }

func number(query string) string {
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (r rebind) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return r.q.ExecContext(ctx, number(query), args...)
}

func (r rebind) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return r.q.QueryContext(ctx, number(query), args...)
}

func (r rebind) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return r.q.QueryRowContext(ctx, number(query), args...)
}

func (r rebind) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return r.q.PrepareContext(ctx, number(query))
}

// dialect is PostgreSQL's spelling of what the shared queries need.
var dialect = sqlstore.Dialect{
	Name:     "postgres",
	Position: "strpos",
	LockJob:  "SELECT pg_advisory_xact_lock(7245004, hashtext(?::text))",
	// One put of an incremental record at a time in the fleet: two
	// trims deleting each other's old rows would otherwise deadlock.
	LockRecords: "SELECT pg_advisory_xact_lock(7245005)",
}

func wrap(what string, err error) error {
	return fmt.Errorf("results: postgres: %s: %w", what, err)
}

// Close implements results.Store; the database stays open.
func (s *Store) Close() error { return nil }

// tx runs f in one transaction.
func (s *Store) tx(ctx context.Context, f func(c rebind) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(rebind{tx}); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// PutVerdicts implements results.Verdicts.
func (s *Store) PutVerdicts(ctx context.Context, vs []results.VerdictEntry) error {
	if len(vs) == 0 {
		return nil
	}
	// In key order: two appliances' batches then lock rows in one order.
	vs = slices.Clone(vs)
	slices.SortFunc(vs, func(a, b results.VerdictEntry) int {
		if c := bytes.Compare(a.Key.Content[:], b.Key.Content[:]); c != 0 {
			return c
		}
		if c := strings.Compare(a.Key.Rules, b.Key.Rules); c != 0 {
			return c
		}
		return bytes.Compare(a.Key.Context[:], b.Key.Context[:])
	})
	err := s.tx(ctx, func(c rebind) error {
		stmt, err := c.PrepareContext(ctx, `INSERT INTO verdict_cache (content, rules, context, matches, stored_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (content, rules, context) DO UPDATE SET matches = excluded.matches, stored_at = excluded.stored_at`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		now := time.Now().UnixNano()
		for _, e := range vs {
			if _, err := stmt.ExecContext(ctx, e.Key.Content[:], e.Key.Rules, e.Key.Context[:], sqlstore.JSON(sqlstore.NonNil(e.Verdict.Matches)), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return wrap("verdict cache", err)
	}
	return nil
}

// AddIOSamples implements results.History.
func (s *Store) AddIOSamples(ctx context.Context, ss []results.IOSample) error {
	if len(ss) == 0 {
		return nil
	}
	for _, x := range ss {
		if x.Datastore == "" || x.At.IsZero() || x.Interval <= 0 || x.BytesRead < 0 || x.ReadOps < 0 {
			return fmt.Errorf("%w: I/O sample %+v: datastore, time and interval are required, counts not negative", results.ErrInvalid, x)
		}
	}
	ss = slices.Clone(ss)
	slices.SortFunc(ss, func(a, b results.IOSample) int {
		if c := strings.Compare(a.Datastore, b.Datastore); c != 0 {
			return c
		}
		return a.At.Compare(b.At)
	})
	err := s.tx(ctx, func(c rebind) error {
		stmt, err := c.PrepareContext(ctx, `INSERT INTO io_history (datastore, at, interval_ns, bytes, ops, budget_bytes, budget_ops, running)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (datastore, at) DO UPDATE SET interval_ns = excluded.interval_ns, bytes = excluded.bytes, ops = excluded.ops,
				budget_bytes = excluded.budget_bytes, budget_ops = excluded.budget_ops, running = excluded.running`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, x := range ss {
			if _, err := stmt.ExecContext(ctx, x.Datastore, sqlstore.Nanos(x.At), int64(x.Interval), x.BytesRead, x.ReadOps,
				x.BudgetBytesPerSec, x.BudgetOpsPerSec, x.Running); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return wrap("I/O history", err)
	}
	return nil
}

// nowNanos is the server's clock in unix nanoseconds.
const nowNanos = `(extract(epoch from clock_timestamp()) * 1000000000)::bigint`

// Announce implements results.Appliances, by the server's clock.
func (s *Store) Announce(ctx context.Context, a results.Appliance, staleAfter time.Duration) error {
	res, err := s.r.ExecContext(ctx, `INSERT INTO fleet_appliances (name, instance, version, sig_name, sig_version, rules_id, started_at, seen_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, `+nowNanos+`) ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, version = excluded.version,
		sig_name = excluded.sig_name, sig_version = excluded.sig_version, rules_id = excluded.rules_id,
		started_at = excluded.started_at, seen_at = excluded.seen_at
		WHERE fleet_appliances.instance = excluded.instance OR fleet_appliances.seen_at < excluded.seen_at - ?`,
		a.Name, a.Instance, a.Version, a.SigName, int64(a.SigVersion), a.RulesID, sqlstore.Nanos(a.StartedAt), staleAfter.Nanoseconds())
	if err != nil {
		return wrap("announce appliance "+a.Name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return wrap("announce appliance "+a.Name, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", results.ErrNameInUse, a.Name)
	}
	return nil
}

// ClaimRescan implements results.Rescans, by the server's clock: INSERT
// ... ON CONFLICT makes one claim win however many appliances ask at once.
func (s *Store) ClaimRescan(ctx context.Context, set string, version uint64, appliance string, staleAfter time.Duration) (bool, error) {
	res, err := s.r.ExecContext(ctx, `INSERT INTO fleet_rescans (set_name, version, claimed_by, claimed_at) VALUES (?, ?, ?, `+nowNanos+`)
		ON CONFLICT (set_name, version) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at
		WHERE fleet_rescans.done_at = 0 AND (fleet_rescans.claimed_by = excluded.claimed_by OR fleet_rescans.claimed_at < excluded.claimed_at - ?)`,
		set, int64(version), appliance, staleAfter.Nanoseconds())
	if err != nil {
		return false, wrap(fmt.Sprintf("claim the rescan for %s version %d", set, version), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, wrap(fmt.Sprintf("claim the rescan for %s version %d", set, version), err)
	}
	return n == 1, nil
}

// RescanDone implements results.Rescans.
func (s *Store) RescanDone(ctx context.Context, set string, version uint64, jobs int) error {
	_, err := s.r.ExecContext(ctx, `UPDATE fleet_rescans SET done_at = `+nowNanos+`, jobs = ? WHERE set_name = ? AND version = ?`,
		jobs, set, int64(version))
	if err != nil {
		return wrap(fmt.Sprintf("record the rescan for %s version %d", set, version), err)
	}
	return nil
}
