// Package sqlite implements results.Store on the appliance's embedded
// SQLite database (modernc.org/sqlite, pure Go), beside the queue's tables
// in the same file. It writes portable SQL where it can (INSERT ... ON
// CONFLICT DO UPDATE rather than INSERT OR REPLACE), so a PostgreSQL
// implementation reads much the same.
//
// # Schema
//
// Times are unix nanoseconds (0 for the zero time); lists and maps are
// JSON text. In sqlite3: datetime(found_at/1e9, 'unixepoch').
//
//	scan_results   one row per job with a stored result: status, incomplete
//	               reasons ({"reason": count}), the signature set, totals,
//	               bytes read, the disks as the job named them.
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
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/sqlitedb"
)

// Store is results.Store on SQLite. Make it with New.
type Store struct {
	db *sql.DB
}

var _ results.Store = (*Store)(nil)

// schemaVersion is the version New leaves the database at.
const schemaVersion = 5

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
CREATE INDEX IF NOT EXISTS scan_findings_vm   ON scan_findings(vm, found_at);
CREATE INDEX IF NOT EXISTS scan_findings_rule ON scan_findings(rule, found_at);
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
`}

// notRecorded is the incomplete reason of results stored before statuses
// were: nobody can say now whether they read everything.
const notRecorded = "not_recorded"

// New creates the results tables in db, or migrates them, and returns the
// store. db must be an SQLite database opened with a busy timeout (the
// appliance opens it with internal/sqlitedb.Open); the caller keeps ownership of
// it and closes it after the store's Close.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
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

// Close implements results.Store; the database stays open.
func (s *Store) Close() error { return nil }

// tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection, so two
// writers never both read and then fail to upgrade their lock.
func (s *Store) tx(ctx context.Context, f func(c *sql.Conn) error) error {
	return sqlitedb.Tx(ctx, s.db, f)
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
	return time.Unix(0, n).UTC()
}

// jsonText marshals v, which is always marshalable here (maps, slices and
// structs of plain types).
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("results: sqlite: marshal %T: %v", v, err))
	}
	return string(b)
}

func wrap(what string, err error) error {
	return fmt.Errorf("results: sqlite: %s: %w", what, err)
}

// SaveScan implements results.Results.
func (s *Store) SaveScan(ctx context.Context, r *results.Scan) ([]results.Finding, error) {
	if err := results.CheckScan(r); err != nil {
		return nil, err
	}
	what := fmt.Sprintf("save job %d", r.JobID)
	var rows []results.Finding
	err := s.tx(ctx, func(c *sql.Conn) error {
		rows = rows[:0]
		if err := checkFence(ctx, c, r.Fence); err != nil {
			return err
		}
		for _, q := range []string{`DELETE FROM scan_findings WHERE job_id = ?`, `DELETE FROM scan_volumes WHERE job_id = ?`} {
			if _, err := c.ExecContext(ctx, q, r.JobID); err != nil {
				return err
			}
		}
		for _, v := range r.Volumes {
			errs, dropped := v.Errors, v.ErrorsDropped
			if len(errs) > results.MaxVolumeErrors {
				dropped += int64(len(errs) - results.MaxVolumeErrors)
				errs = errs[:results.MaxVolumeErrors]
			}
			_, err := c.ExecContext(ctx, `INSERT INTO scan_volumes (job_id, disk, volume, file_system, error, files, bytes, cached, skipped, errors, errors_dropped)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (job_id, disk, volume) DO UPDATE SET file_system = excluded.file_system, error = excluded.error,
					files = excluded.files, bytes = excluded.bytes, cached = excluded.cached, skipped = excluded.skipped,
					errors = excluded.errors, errors_dropped = excluded.errors_dropped`,
				r.JobID, v.Disk, v.Volume, v.FileSystem, v.Error, v.Files, v.Bytes, v.Cached,
				jsonText(nonNilMap(v.Skipped)), jsonText(nonNil(errs)), dropped)
			if err != nil {
				return fmt.Errorf("volume %s/%s: %w", v.Disk, v.Volume, err)
			}
		}
		for _, f := range r.Findings {
			f.JobID, f.VM, f.SigVersion = r.JobID, r.VM, r.SigVersion
			f.Tags, f.Meta = nonNil(f.Tags), nonNil(f.Meta)
			if f.FoundAt.IsZero() {
				f.FoundAt = r.FinishedAt
			}
			f.FoundAt = f.FoundAt.UTC()
			err := c.QueryRowContext(ctx, `INSERT INTO scan_findings (job_id, vm, datastore, disk, volume, path, size, sha256, namespace, rule, tags, meta, strings, sig_version, found_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				f.JobID, f.VM, f.Datastore, f.Disk, f.Volume, f.Path, f.Size, f.SHA256, f.Namespace, f.Rule,
				jsonText(f.Tags), jsonText(f.Meta), jsonText(nonNil(f.Strings)), int64(f.SigVersion), nanos(f.FoundAt)).Scan(&f.ID)
			if err != nil {
				return fmt.Errorf("finding %s: %w", f.Path, err)
			}
			rows = append(rows, f)
		}
		_, err := c.ExecContext(ctx, `INSERT INTO scan_results (job_id, vm, status, incomplete, sig_name, sig_version, rules_id, started_at, finished_at,
				files, bytes, cached, findings, bytes_read, read_ops, disks)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (job_id) DO UPDATE SET vm = excluded.vm, status = excluded.status, incomplete = excluded.incomplete,
				sig_name = excluded.sig_name, sig_version = excluded.sig_version, rules_id = excluded.rules_id,
				started_at = excluded.started_at, finished_at = excluded.finished_at, files = excluded.files,
				bytes = excluded.bytes, cached = excluded.cached, findings = excluded.findings,
				bytes_read = excluded.bytes_read, read_ops = excluded.read_ops, disks = excluded.disks`,
			r.JobID, r.VM, string(r.Status), jsonText(nonNilMap(r.Incomplete)), r.SigName, int64(r.SigVersion), r.RulesID,
			nanos(r.StartedAt), nanos(r.FinishedAt), r.Files, r.Bytes, r.Cached, len(rows), r.BytesRead, r.ReadOps, jsonText(nonNil(r.Disks)))
		if err != nil {
			return err
		}
		// The VM's last scan: a re-save of an older job (a re-run after a
		// crash, when a later job already finished) must not move it back.
		now := time.Now().UnixNano()
		_, err = c.ExecContext(ctx, `INSERT INTO scan_vms (vm, name, source, disks, updated_at, last_job, last_scanned, last_status, last_findings, last_sig_version, last_bytes_read)
			VALUES (?, ?, 'scan', ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (vm) DO UPDATE SET last_job = excluded.last_job, last_scanned = excluded.last_scanned,
				last_status = excluded.last_status, last_findings = excluded.last_findings,
				last_sig_version = excluded.last_sig_version, last_bytes_read = excluded.last_bytes_read
			WHERE scan_vms.last_job <= excluded.last_job`,
			r.VM, r.VM, jsonText(nonNil(r.Disks)), now, r.JobID, nanos(r.FinishedAt), string(r.Status), len(rows), int64(r.SigVersion), r.BytesRead)
		return err
	})
	if err != nil {
		return nil, wrap(what, err)
	}
	return rows, nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func nonNilMap(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}

// Scan implements results.Results.
func (s *Store) Scan(ctx context.Context, jobID int64) (*results.Scan, error) {
	r := &results.Scan{JobID: jobID}
	var status, incomplete, disks string
	var v, st, fin int64
	err := s.db.QueryRowContext(ctx, `SELECT vm, status, incomplete, sig_name, sig_version, rules_id, started_at, finished_at,
			files, bytes, cached, findings, bytes_read, read_ops, disks
		FROM scan_results WHERE job_id = ?`, jobID).Scan(&r.VM, &status, &incomplete, &r.SigName, &v, &r.RulesID, &st, &fin,
		&r.Files, &r.Bytes, &r.Cached, &r.FindingCount, &r.BytesRead, &r.ReadOps, &disks)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: job %d has no stored result", results.ErrNotFound, jobID)
	}
	if err != nil {
		return nil, wrap(fmt.Sprintf("job %d", jobID), err)
	}
	r.SigVersion, r.StartedAt, r.FinishedAt = uint64(v), fromNanos(st), fromNanos(fin)
	r.Status = results.Status(status)
	if err := json.Unmarshal([]byte(incomplete), &r.Incomplete); err != nil {
		return nil, wrap(fmt.Sprintf("job %d: incomplete", jobID), err)
	}
	if err := json.Unmarshal([]byte(disks), &r.Disks); err != nil {
		return nil, wrap(fmt.Sprintf("job %d: disks", jobID), err)
	}
	if r.Status == "" { // stored before statuses were
		r.Incomplete[notRecorded] = 1
		r.Status = results.StatusOf(int(r.FindingCount), r.Incomplete)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT disk, volume, file_system, error, files, bytes, cached, skipped, errors, errors_dropped
		FROM scan_volumes WHERE job_id = ? ORDER BY disk, volume`, jobID)
	if err != nil {
		return nil, wrap(fmt.Sprintf("job %d volumes", jobID), err)
	}
	defer rows.Close()
	r.Volumes = []results.Volume{}
	for rows.Next() {
		var vol results.Volume
		var skipped, errs string
		if err := rows.Scan(&vol.Disk, &vol.Volume, &vol.FileSystem, &vol.Error, &vol.Files, &vol.Bytes, &vol.Cached, &skipped, &errs, &vol.ErrorsDropped); err != nil {
			return nil, wrap(fmt.Sprintf("job %d volumes", jobID), err)
		}
		if err := errors.Join(json.Unmarshal([]byte(skipped), &vol.Skipped), json.Unmarshal([]byte(errs), &vol.Errors)); err != nil {
			return nil, wrap(fmt.Sprintf("job %d volume %s", jobID, vol.Volume), err)
		}
		r.Volumes = append(r.Volumes, vol)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap(fmt.Sprintf("job %d volumes", jobID), err)
	}
	return r, nil
}

// Findings implements results.Results.
func (s *Store) Findings(ctx context.Context, q results.FindingQuery) ([]results.Finding, error) {
	limit, err := results.CheckLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	var where []string
	var args []any
	add := func(cond string, v any) { where = append(where, cond); args = append(args, v) }
	if q.JobID != 0 {
		add("job_id = ?", q.JobID)
	}
	if q.VM != "" {
		add("vm = ?", q.VM)
	}
	if q.Datastore != "" {
		add("datastore = ?", q.Datastore)
	}
	if q.Rule != "" {
		add("rule = ?", q.Rule)
	}
	if q.Tag != "" {
		add("EXISTS (SELECT 1 FROM json_each(scan_findings.tags) WHERE json_each.value = ?)", q.Tag)
	}
	if !q.Since.IsZero() {
		add("found_at >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("found_at < ?", q.Until.UnixNano())
	}
	add("id > ?", q.After)
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT id, job_id, vm, datastore, disk, volume, path, size, sha256, namespace, rule, tags, meta, strings, sig_version, found_at
		FROM scan_findings WHERE `+strings.Join(where, " AND ")+` ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, wrap("findings", err)
	}
	defer rows.Close()
	out := []results.Finding{}
	for rows.Next() {
		var f results.Finding
		var tags, meta, strs string
		var v, at int64
		if err := rows.Scan(&f.ID, &f.JobID, &f.VM, &f.Datastore, &f.Disk, &f.Volume, &f.Path, &f.Size, &f.SHA256, &f.Namespace, &f.Rule,
			&tags, &meta, &strs, &v, &at); err != nil {
			return nil, wrap("findings", err)
		}
		f.SigVersion, f.FoundAt = uint64(v), fromNanos(at)
		if f.Meta, err = decodeMeta([]byte(meta)); err != nil {
			return nil, wrap(fmt.Sprintf("finding %d meta", f.ID), err)
		}
		if err := errors.Join(json.Unmarshal([]byte(tags), &f.Tags), json.Unmarshal([]byte(strs), &f.Strings)); err != nil {
			return nil, wrap(fmt.Sprintf("finding %d", f.ID), err)
		}
		if len(f.Strings) == 0 {
			f.Strings = nil
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("findings", err)
	}
	return out, nil
}

// decodeMeta restores meta values as the scanner makes them: string,
// int64 or bool (plain JSON decoding would turn ints into float64).
func decodeMeta(b []byte) ([]results.Meta, error) {
	var raw []struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := make([]results.Meta, len(raw))
	for i, r := range raw {
		d := json.NewDecoder(bytes.NewReader(r.Value))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("meta %s: %w", r.Key, err)
		}
		if n, ok := v.(json.Number); ok {
			iv, err := n.Int64()
			if err != nil {
				return nil, fmt.Errorf("meta %s: %w", r.Key, err)
			}
			v = iv
		}
		out[i] = results.Meta{Key: r.Key, Value: v}
	}
	return out, nil
}

// decodeMatches is decodeMeta for a verdict's matches.
func decodeMatches(b []byte) ([]results.Match, error) {
	var raw []struct {
		Rule      string                `json:"rule"`
		Namespace string                `json:"namespace"`
		Tags      []string              `json:"tags"`
		Meta      json.RawMessage       `json:"meta"`
		Strings   []results.StringMatch `json:"strings"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	var out []results.Match
	for _, r := range raw {
		meta := []results.Meta{}
		if len(r.Meta) > 0 && string(r.Meta) != "null" {
			var err error
			if meta, err = decodeMeta(r.Meta); err != nil {
				return nil, fmt.Errorf("rule %s: %w", r.Rule, err)
			}
		}
		out = append(out, results.Match{Rule: r.Rule, Namespace: r.Namespace, Tags: nonNil(r.Tags), Meta: meta, Strings: r.Strings})
	}
	return out, nil
}

// Verdict implements results.Verdicts.
func (s *Store) Verdict(ctx context.Context, k results.VerdictKey) (results.Verdict, error) {
	var matches string
	err := s.db.QueryRowContext(ctx, `SELECT matches FROM verdict_cache WHERE content = ? AND rules = ? AND context = ?`,
		k.Content[:], k.Rules, k.Context[:]).Scan(&matches)
	if errors.Is(err, sql.ErrNoRows) {
		return results.Verdict{}, results.ErrNotFound
	}
	if err != nil {
		return results.Verdict{}, wrap("verdict", err)
	}
	m, err := decodeMatches([]byte(matches))
	if err != nil {
		return results.Verdict{}, wrap("verdict", err)
	}
	return results.Verdict{Matches: m}, nil
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
			if _, err := stmt.ExecContext(ctx, e.Key.Content[:], e.Key.Rules, e.Key.Context[:], jsonText(nonNil(e.Verdict.Matches)), now); err != nil {
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

const vmColumns = `vm, name, source, disks, updated_at, last_job, last_scanned, last_status, last_findings, last_sig_version, last_bytes_read`

func scanVM(row interface{ Scan(...any) error }) (results.VM, error) {
	var v results.VM
	var disks, status string
	var upd, last int64
	var sig int64
	if err := row.Scan(&v.ID, &v.Name, &v.Source, &disks, &upd, &v.LastJob, &last, &status, &v.LastFindings, &sig, &v.LastBytesRead); err != nil {
		return v, err
	}
	v.UpdatedAt, v.LastScanned, v.LastStatus, v.LastSigVersion = fromNanos(upd), fromNanos(last), results.Status(status), uint64(sig)
	if v.LastJob != 0 && v.LastStatus == "" { // scanned before statuses were
		v.LastStatus = results.StatusOf(int(v.LastFindings), map[string]int64{notRecorded: 1})
	}
	if err := json.Unmarshal([]byte(disks), &v.Disks); err != nil {
		return v, fmt.Errorf("vm %s disks: %w", v.ID, err)
	}
	return v, nil
}

// PutVM implements results.Inventory.
func (s *Store) PutVM(ctx context.Context, v results.VM) error {
	if v.ID == "" {
		return fmt.Errorf("%w: VM without an id", results.ErrInvalid)
	}
	if v.Name == "" {
		v.Name = v.ID
	}
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = time.Now()
	}
	err := s.tx(ctx, func(c *sql.Conn) error {
		_, err := c.ExecContext(ctx, `INSERT INTO scan_vms (vm, name, source, disks, updated_at, last_job, last_scanned)
			VALUES (?, ?, ?, ?, ?, 0, 0)
			ON CONFLICT (vm) DO UPDATE SET name = excluded.name, source = excluded.source, disks = excluded.disks, updated_at = excluded.updated_at`,
			v.ID, v.Name, v.Source, jsonText(nonNil(v.Disks)), nanos(v.UpdatedAt))
		return err
	})
	if err != nil {
		return wrap("vm "+v.ID, err)
	}
	return nil
}

// VM implements results.Inventory.
func (s *Store) VM(ctx context.Context, id string) (results.VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM scan_vms WHERE vm = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%w: no VM %q", results.ErrNotFound, id)
	}
	if err != nil {
		return v, wrap("vm "+id, err)
	}
	return v, nil
}

// VMs implements results.Inventory.
func (s *Store) VMs(ctx context.Context, q results.VMQuery) ([]results.VM, error) {
	limit, err := results.CheckLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	where, args := []string{"vm > ?"}, []any{q.After}
	if q.Search != "" {
		// instr on lower(): no LIKE, so % and _ in the search are plain.
		where = append(where, "(instr(lower(vm), lower(?)) > 0 OR instr(lower(name), lower(?)) > 0)")
		args = append(args, q.Search, q.Search)
	}
	if q.Scanned {
		where = append(where, "last_job > 0")
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM scan_vms WHERE `+strings.Join(where, " AND ")+` ORDER BY vm LIMIT ?`, args...)
	if err != nil {
		return nil, wrap("vms", err)
	}
	defer rows.Close()
	out := []results.VM{}
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, wrap("vms", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("vms", err)
	}
	return out, nil
}

// RemoveVM implements results.Inventory.
func (s *Store) RemoveVM(ctx context.Context, id string) error {
	err := s.tx(ctx, func(c *sql.Conn) error {
		_, err := c.ExecContext(ctx, `DELETE FROM scan_vms WHERE vm = ?`, id)
		return err
	})
	if err != nil {
		return wrap("remove vm "+id, err)
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
			if _, err := stmt.ExecContext(ctx, x.Datastore, nanos(x.At), int64(x.Interval), x.BytesRead, x.ReadOps,
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

// IOHistory implements results.History.
func (s *Store) IOHistory(ctx context.Context, q results.IOQuery) ([]results.IOSample, error) {
	limit, err := results.CheckLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	where, args := []string{"1 = 1"}, []any{}
	if q.Datastore != "" {
		where, args = append(where, "datastore = ?"), append(args, q.Datastore)
	}
	if !q.Since.IsZero() {
		where, args = append(where, "at >= ?"), append(args, q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		where, args = append(where, "at < ?"), append(args, q.Until.UnixNano())
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT datastore, at, interval_ns, bytes, ops, budget_bytes, budget_ops, running
		FROM io_history WHERE `+strings.Join(where, " AND ")+` ORDER BY at, datastore LIMIT ?`, args...)
	if err != nil {
		return nil, wrap("I/O history", err)
	}
	defer rows.Close()
	out := []results.IOSample{}
	for rows.Next() {
		var x results.IOSample
		var at, iv int64
		if err := rows.Scan(&x.Datastore, &at, &iv, &x.BytesRead, &x.ReadOps, &x.BudgetBytesPerSec, &x.BudgetOpsPerSec, &x.Running); err != nil {
			return nil, wrap("I/O history", err)
		}
		x.At, x.Interval = fromNanos(at), time.Duration(iv)
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("I/O history", err)
	}
	return out, nil
}

// PruneIOHistory implements results.History.
func (s *Store) PruneIOHistory(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `DELETE FROM io_history WHERE at < ?`, nanos(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, wrap("prune I/O history", err)
	}
	return n, nil
}

// checkFence runs a save's fence inside its transaction (results.Fence).
func checkFence(ctx context.Context, c *sql.Conn, f *results.Fence) error {
	if f == nil {
		return nil
	}
	var one int
	err := c.QueryRowContext(ctx, f.Query, f.Args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return results.ErrFenced
	}
	return err
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
			a.Name, a.Instance, a.Version, a.SigName, int64(a.SigVersion), a.RulesID, nanos(a.StartedAt), now, now-staleAfter.Nanoseconds())
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

// Appliances implements results.Appliances.
func (s *Store) Appliances(ctx context.Context) ([]results.Appliance, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, instance, version, sig_name, sig_version, rules_id, started_at, seen_at
		FROM fleet_appliances ORDER BY name`)
	if err != nil {
		return nil, wrap("list appliances", err)
	}
	defer rows.Close()
	var out []results.Appliance
	for rows.Next() {
		var a results.Appliance
		var v, started, seen int64
		if err := rows.Scan(&a.Name, &a.Instance, &a.Version, &a.SigName, &v, &a.RulesID, &started, &seen); err != nil {
			return nil, wrap("list appliances", err)
		}
		a.SigVersion, a.StartedAt, a.SeenAt = uint64(v), fromNanos(started), fromNanos(seen)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("list appliances", err)
	}
	return out, nil
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

const freezeColumns = `vm, id, connector, job_id, taken, freeze_stun, quiesced, released, release_stun, release_took, held, stale, repaired, error`

func bit(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// PutFreeze implements results.Freezes.
func (s *Store) PutFreeze(ctx context.Context, f results.Freeze) error {
	if f.VM == "" || f.ID == "" {
		return fmt.Errorf("%w: a freeze needs its VM and id", results.ErrInvalid)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO vm_freezes (`+freezeColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (vm, id) DO UPDATE SET connector = excluded.connector, job_id = excluded.job_id, taken = excluded.taken,
		freeze_stun = excluded.freeze_stun, quiesced = excluded.quiesced, released = excluded.released,
		release_stun = excluded.release_stun, release_took = excluded.release_took, held = excluded.held,
		stale = excluded.stale, repaired = excluded.repaired, error = excluded.error`,
		f.VM, f.ID, f.Connector, f.JobID, nanos(f.Taken), int64(f.FreezeStun), bit(f.Quiesced), nanos(f.Released),
		int64(f.ReleaseStun), int64(f.ReleaseTook), int64(f.Held), bit(f.Stale), bit(f.Repaired), f.Error)
	if err != nil {
		return wrap("put freeze", err)
	}
	return nil
}

// Freezes implements results.Freezes.
func (s *Store) Freezes(ctx context.Context, q results.FreezeQuery) ([]results.Freeze, error) {
	limit, err := results.CheckLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	where, args := []string{"1 = 1"}, []any{}
	if q.VM != "" {
		where, args = append(where, "vm = ?"), append(args, q.VM)
	}
	if q.JobID != 0 {
		where, args = append(where, "job_id = ?"), append(args, q.JobID)
	}
	if !q.Before.IsZero() {
		where, args = append(where, "taken < ?"), append(args, nanos(q.Before))
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT `+freezeColumns+` FROM vm_freezes WHERE `+strings.Join(where, " AND ")+
		` ORDER BY taken DESC, vm, id LIMIT ?`, args...)
	if err != nil {
		return nil, wrap("freezes", err)
	}
	defer rows.Close()
	out := []results.Freeze{}
	for rows.Next() {
		var f results.Freeze
		var taken, fstun, quiesced, released, rstun, rtook, held, stale, repaired int64
		if err := rows.Scan(&f.VM, &f.ID, &f.Connector, &f.JobID, &taken, &fstun, &quiesced, &released, &rstun, &rtook, &held, &stale, &repaired, &f.Error); err != nil {
			return nil, wrap("freezes", err)
		}
		f.Taken, f.FreezeStun, f.Quiesced, f.Released = fromNanos(taken), time.Duration(fstun), quiesced != 0, fromNanos(released)
		f.ReleaseStun, f.ReleaseTook, f.Held = time.Duration(rstun), time.Duration(rtook), time.Duration(held)
		f.Stale, f.Repaired = stale != 0, repaired != 0
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("freezes", err)
	}
	return out, nil
}
