// Package sqlite implements results.Store on the appliance's embedded
// SQLite database (modernc.org/sqlite, pure Go), beside the queue's tables
// in the same file. It writes portable SQL where it can (INSERT ... ON
// CONFLICT DO UPDATE rather than INSERT OR REPLACE): the queries that read
// the same on PostgreSQL live once, in internal/sqlstore, shared with
// appliance/results/postgres; this package keeps the schema, migrations,
// transactions and the statements SQLite spells its own way.
//
// # Schema
//
// Times are unix nanoseconds (0 for the zero time); lists and maps are
// JSON text. In sqlite3: datetime(found_at/1e9, 'unixepoch').
//
//	scan_results   one row per job with a stored result: status, incomplete
//	               reasons ({"reason": count}), the signature set, totals,
//	               bytes read, the disks as the job named them, how each
//	               disk's scan was planned (plans: JSON, '' for results
//	               stored before version 8).
//	scan_volumes   one row per volume of each disk of a stored result.
//	scan_findings  one row per rule that matched a file.
//	scan_vms       the inventory: one row per VM, with its last scan.
//	verdict_cache  verdicts by content SHA-256, rule-set id and context hash.
//	io_history     per datastore and interval: bytes and operations read,
//	               the budget then, the scans running.
//	fleet_appliances the appliances announced: instance, signature set,
//	               start and last-seen times.
//	fleet_rescans  one row per signature version whose rescan was
//	               claimed: by whom, when, and when it was enqueued.
//	vm_freezes     one row per freeze a connector made (VM, snapshot name):
//	               its job, when taken and released, the stun times.
//	incremental_records the records of incremental scans, by chain
//	               identity and reuse key: the encoded record (zstd) and
//	               when it was stored (the trim's order).
//	incremental_paths the identity each chain top (path) was last
//	               recorded under, per reuse key.
//	results_schema the schema version (one row).
//
// Example: sqlite3 snapscan.db "SELECT vm, path, rule FROM scan_findings
// WHERE found_at > (strftime('%s','now')-86400)*1e9"
//
// New migrates a database written by an older version in place: version
// 1 (before the status, inventory and history) gains its columns; results
// stored then have no status and read back as incomplete with the reason
// "not_recorded", never as clean.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/internal/sqlstore"
	"github.com/snapscan/snapscan/internal/sqlitedb"
)

// Store is results.Store on SQLite. Make it with New.
type Store struct {
	*sqlstore.Store // the queries both SQL stores share
	db              *sql.DB
}

var _ results.Store = (*Store)(nil)

// schemaVersion is the version New leaves the database at.
const schemaVersion = 8

const schema = `
CREATE TABLE IF NOT EXISTS results_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS scan_results (
	job_id      INTEGER PRIMARY KEY,
	vm          TEXT    NOT NULL,
	sig_name    TEXT    NOT NULL,
	sig_version INTEGER NOT NULL,
	rules_id    TEXT    NOT NULL,
	started_at  INTEGER NOT NULL,
	finished_at INTEGER NOT NULL,
	files       INTEGER NOT NULL,
	bytes       INTEGER NOT NULL,
	cached      INTEGER NOT NULL,
	findings    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS scan_volumes (
	job_id         INTEGER NOT NULL,
	disk           TEXT    NOT NULL,
	volume         TEXT    NOT NULL,
	file_system    TEXT    NOT NULL,
	error          TEXT    NOT NULL,
	files          INTEGER NOT NULL,
	bytes          INTEGER NOT NULL,
	cached         INTEGER NOT NULL,
	skipped        TEXT    NOT NULL,
	errors         TEXT    NOT NULL,
	errors_dropped INTEGER NOT NULL,
	PRIMARY KEY (job_id, disk, volume)
);
CREATE TABLE IF NOT EXISTS scan_findings (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	job_id      INTEGER NOT NULL,
	vm          TEXT    NOT NULL,
	disk        TEXT    NOT NULL,
	volume      TEXT    NOT NULL,
	path        TEXT    NOT NULL,
	size        INTEGER NOT NULL,
	sha256      TEXT    NOT NULL,
	namespace   TEXT    NOT NULL,
	rule        TEXT    NOT NULL,
	tags        TEXT    NOT NULL,
	meta        TEXT    NOT NULL,
	sig_version INTEGER NOT NULL,
	found_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scan_findings_job  ON scan_findings(job_id);
CREATE INDEX IF NOT EXISTS scan_findings_time ON scan_findings(found_at);
CREATE TABLE IF NOT EXISTS scan_vms (
	vm           TEXT    PRIMARY KEY,
	disks        TEXT    NOT NULL,
	last_job     INTEGER NOT NULL,
	last_scanned INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdict_cache (
	content   BLOB    NOT NULL,
	rules     TEXT    NOT NULL,
	context   BLOB    NOT NULL,
	matches   TEXT    NOT NULL,
	stored_at INTEGER NOT NULL,
	PRIMARY KEY (content, rules, context)
) WITHOUT ROWID;
`

// migrations take the schema from version i+1 to i+2. Version 1 is the
// schema above as the first appliance release wrote it.
var migrations = []string{`
ALTER TABLE scan_results ADD COLUMN status     TEXT    NOT NULL DEFAULT '';
ALTER TABLE scan_results ADD COLUMN incomplete TEXT    NOT NULL DEFAULT '{}';
ALTER TABLE scan_results ADD COLUMN bytes_read INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scan_results ADD COLUMN read_ops   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scan_results ADD COLUMN disks      TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE scan_findings ADD COLUMN datastore TEXT    NOT NULL DEFAULT '';
ALTER TABLE scan_findings ADD COLUMN strings   TEXT    NOT NULL DEFAULT '[]';
CREATE INDEX IF NOT EXISTS scan_findings_datastore ON scan_findings(datastore, found_at);
ALTER TABLE scan_vms ADD COLUMN name             TEXT    NOT NULL DEFAULT '';
ALTER TABLE scan_vms ADD COLUMN source           TEXT    NOT NULL DEFAULT 'scan';
ALTER TABLE scan_vms ADD COLUMN updated_at       INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scan_vms ADD COLUMN last_status      TEXT    NOT NULL DEFAULT '';
ALTER TABLE scan_vms ADD COLUMN last_findings    INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scan_vms ADD COLUMN last_sig_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scan_vms ADD COLUMN last_bytes_read  INTEGER NOT NULL DEFAULT 0;
UPDATE scan_vms SET name = vm WHERE name = '';
CREATE TABLE io_history (
	datastore    TEXT    NOT NULL,
	at           INTEGER NOT NULL,
	interval_ns  INTEGER NOT NULL,
	bytes        INTEGER NOT NULL,
	ops          INTEGER NOT NULL,
	budget_bytes REAL    NOT NULL,
	budget_ops   REAL    NOT NULL,
	running      INTEGER NOT NULL,
	PRIMARY KEY (datastore, at)
) WITHOUT ROWID;
CREATE INDEX io_history_at ON io_history(at);
`, `
CREATE TABLE fleet_appliances (
	name        TEXT    PRIMARY KEY,
	instance    TEXT    NOT NULL,
	version     TEXT    NOT NULL,
	sig_name    TEXT    NOT NULL,
	sig_version INTEGER NOT NULL,
	rules_id    TEXT    NOT NULL,
	started_at  INTEGER NOT NULL,
	seen_at     INTEGER NOT NULL
);
`, `
CREATE TABLE fleet_rescans (
	set_name   TEXT    NOT NULL,
	version    INTEGER NOT NULL,
	claimed_by TEXT    NOT NULL,
	claimed_at INTEGER NOT NULL,
	done_at    INTEGER NOT NULL DEFAULT 0,
	jobs       INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (set_name, version)
);
`, `
CREATE TABLE vm_freezes (
	vm           TEXT    NOT NULL,
	id           TEXT    NOT NULL,
	connector    TEXT    NOT NULL,
	job_id       INTEGER NOT NULL,
	taken        INTEGER NOT NULL,
	freeze_stun  INTEGER NOT NULL,
	quiesced     INTEGER NOT NULL,
	released     INTEGER NOT NULL,
	release_stun INTEGER NOT NULL,
	release_took INTEGER NOT NULL,
	held         INTEGER NOT NULL,
	stale        INTEGER NOT NULL,
	repaired     INTEGER NOT NULL,
	error        TEXT    NOT NULL,
	PRIMARY KEY (vm, id)
);
CREATE INDEX vm_freezes_taken ON vm_freezes(vm, taken);
CREATE INDEX vm_freezes_job ON vm_freezes(job_id);
`, `
DROP INDEX IF EXISTS scan_findings_vm;
DROP INDEX IF EXISTS scan_findings_rule;
DROP INDEX IF EXISTS scan_findings_datastore;
CREATE INDEX scan_findings_vm_id ON scan_findings(vm, id);
CREATE INDEX scan_findings_rule_id ON scan_findings(rule, id);
CREATE INDEX scan_findings_datastore_id ON scan_findings(datastore, id);
CREATE TABLE scan_finding_tags (
	tag        TEXT    NOT NULL,
	finding_id INTEGER NOT NULL,
	PRIMARY KEY (tag, finding_id)
) WITHOUT ROWID;
CREATE INDEX scan_finding_tags_finding ON scan_finding_tags(finding_id);
INSERT OR IGNORE INTO scan_finding_tags (tag, finding_id)
	SELECT json_each.value, scan_findings.id FROM scan_findings, json_each(scan_findings.tags) WHERE json_each.type = 'text';
`, `
ALTER TABLE scan_volumes ADD COLUMN reused INTEGER NOT NULL DEFAULT 0;
CREATE TABLE incremental_records (
	identity    TEXT    NOT NULL,
	rules       TEXT    NOT NULL,
	path        TEXT    NOT NULL,
	recorded_at INTEGER NOT NULL,
	stored_at   INTEGER NOT NULL,
	data        BLOB    NOT NULL,
	PRIMARY KEY (identity, rules)
);
CREATE INDEX incremental_records_rules ON incremental_records(rules, stored_at);
CREATE TABLE incremental_paths (
	path        TEXT    NOT NULL,
	rules       TEXT    NOT NULL,
	identity    TEXT    NOT NULL,
	recorded_at INTEGER NOT NULL,
	PRIMARY KEY (path, rules)
) WITHOUT ROWID;
CREATE INDEX incremental_paths_rules ON incremental_paths(rules);
`, `
ALTER TABLE scan_results ADD COLUMN plans TEXT NOT NULL DEFAULT '';
`}

// New creates the results tables in db, or migrates them, and returns the
// store. db must be an SQLite database opened with a busy timeout (the
// appliance opens it with internal/sqlitedb.Open); the caller keeps ownership of
// it and closes it after the store's Close.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
	s.Store = sqlstore.New(dialect, db, func(ctx context.Context, f func(c sqlstore.Querier) error) error {
		return s.tx(ctx, func(c *sql.Conn) error { return f(c) })
	})
	err := s.tx(ctx, func(c *sql.Conn) error {
		if _, err := c.ExecContext(ctx, schema); err != nil {
			return err
		}
		v := 1
		err := c.QueryRowContext(ctx, `SELECT version FROM results_schema`).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			if _, err := c.ExecContext(ctx, `INSERT INTO results_schema (version) VALUES (1)`); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if v > schemaVersion {
			return fmt.Errorf("schema version %d is newer than this snapscan's %d", v, schemaVersion)
		}
		for ; v < schemaVersion; v++ {
			if _, err := c.ExecContext(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("migrate to version %d: %w", v+1, err)
			}
		}
		_, err = c.ExecContext(ctx, `UPDATE results_schema SET version = ?`, schemaVersion)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("results: sqlite: %w", err)
	}
	return s, nil
}

// dialect is SQLite's spelling of what the shared queries need.
var dialect = sqlstore.Dialect{
	Name:     "sqlite",
	Position: "instr",
}

func wrap(what string, err error) error {
	return fmt.Errorf("results: sqlite: %s: %w", what, err)
}

// Close implements results.Store; the database stays open.
func (s *Store) Close() error { return nil }

// tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection, so two
// writers never both read and then fail to upgrade their lock.
func (s *Store) tx(ctx context.Context, f func(c *sql.Conn) error) error {
	return sqlitedb.Tx(ctx, s.db, f)
}

// PutVerdicts implements results.Verdicts.
func (s *Store) PutVerdicts(ctx context.Context, vs []results.VerdictEntry) error {
	if len(vs) == 0 {
		return nil
	}
	err := s.tx(ctx, func(c *sql.Conn) error {
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
	err := s.tx(ctx, func(c *sql.Conn) error {
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

// Announce implements results.Appliances.
func (s *Store) Announce(ctx context.Context, a results.Appliance, staleAfter time.Duration) error {
	now := time.Now().UnixNano()
	var n int64
	err := s.tx(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `INSERT INTO fleet_appliances (name, instance, version, sig_name, sig_version, rules_id, started_at, seen_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, version = excluded.version,
			sig_name = excluded.sig_name, sig_version = excluded.sig_version, rules_id = excluded.rules_id,
			started_at = excluded.started_at, seen_at = excluded.seen_at
			WHERE fleet_appliances.instance = excluded.instance OR fleet_appliances.seen_at < ?`,
			a.Name, a.Instance, a.Version, a.SigName, int64(a.SigVersion), a.RulesID, sqlstore.Nanos(a.StartedAt), now, now-staleAfter.Nanoseconds())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return wrap("announce appliance "+a.Name, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", results.ErrNameInUse, a.Name)
	}
	return nil
}

// ClaimRescan implements results.Rescans.
func (s *Store) ClaimRescan(ctx context.Context, set string, version uint64, appliance string, staleAfter time.Duration) (bool, error) {
	now := time.Now().UnixNano()
	var n int64
	err := s.tx(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `INSERT INTO fleet_rescans (set_name, version, claimed_by, claimed_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (set_name, version) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at
			WHERE fleet_rescans.done_at = 0 AND (fleet_rescans.claimed_by = excluded.claimed_by OR fleet_rescans.claimed_at < ?)`,
			set, int64(version), appliance, now, now-staleAfter.Nanoseconds())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, wrap(fmt.Sprintf("claim the rescan for %s version %d", set, version), err)
	}
	return n == 1, nil
}

// RescanDone implements results.Rescans.
func (s *Store) RescanDone(ctx context.Context, set string, version uint64, jobs int) error {
	_, err := s.db.ExecContext(ctx, `UPDATE fleet_rescans SET done_at = ?, jobs = ? WHERE set_name = ? AND version = ?`,
		time.Now().UnixNano(), jobs, set, int64(version))
	if err != nil {
		return wrap(fmt.Sprintf("record the rescan for %s version %d", set, version), err)
	}
	return nil
}
