// Package sqlstore holds what the SQL results stores share: the queries
// and row decoding of results.Store that read the same on SQLite
// (appliance/results/sqlite) and PostgreSQL (appliance/results/postgres).
// Each store keeps its own schema, migrations, transactions and the
// statements whose SQL differs (upserts of batches, the fleet's clock);
// what differs inside a shared query is named by a Dialect.
//
// Queries are written with ? placeholders; a store whose driver numbers
// them ($1, $2) hands in a Querier that rebinds.
package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
)

// Querier is what the shared queries run on: a database, a connection
// or a transaction (*sql.DB, *sql.Conn and *sql.Tx all are one), with
// ? placeholders as the driver wants them.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Dialect names the SQL a store's engine spells its own way.
type Dialect struct {
	// Name is the engine's name in errors: "sqlite", "postgres".
	Name string
	// Position is the function that gives the 1-based position of its
	// second argument in its first, 0 when absent (instr, strpos).
	Position string
	// LockJob, when set, is run first in a save's transaction with the
	// job id as text, so that two saves of one job never interleave.
	LockJob string
	// LockRecords, when set, is run first in a PutIncrementalRecord's
	// transaction, so that two puts' trims never deadlock.
	LockRecords string
}

// Store is the shared part of a results.Store: the stores embed it.
type Store struct {
	d  Dialect
	q  Querier
	tx func(ctx context.Context, f func(c Querier) error) error
}

// New returns the shared part of a store that reads through q and runs
// its writes in transactions tx makes (tx hands f a Querier inside the
// transaction, and commits when f returns nil).
func New(d Dialect, q Querier, tx func(ctx context.Context, f func(c Querier) error) error) *Store {
	return &Store{d: d, q: q, tx: tx}
}

// NotRecorded is the incomplete reason of results stored before statuses
// were: nobody can say now whether they read everything.
const NotRecorded = "not_recorded"

// Nanos is t in unix nanoseconds, 0 for the zero time.
func Nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromNanos is the time n unix nanoseconds stand for (UTC), zero for 0.
func FromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// JSON marshals v, which is always marshalable here (maps, slices and
// structs of plain types).
func JSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("results: marshal %T: %v", v, err))
	}
	return string(b)
}

func (s *Store) wrap(what string, err error) error {
	return fmt.Errorf("results: %s: %s: %w", s.d.Name, what, err)
}

// SaveScan implements results.Results.
func (s *Store) SaveScan(ctx context.Context, r *results.Scan) ([]results.Finding, error) {
	if err := results.CheckScan(r); err != nil {
		return nil, err
	}
	what := fmt.Sprintf("save job %d", r.JobID)
	var rows []results.Finding
	err := s.tx(ctx, func(c Querier) error {
		rows = rows[:0]
		if s.d.LockJob != "" {
			// One save of a job at a time.
			if _, err := c.ExecContext(ctx, s.d.LockJob, strconv.FormatInt(r.JobID, 10)); err != nil {
				return err
			}
		}
		if err := checkFence(ctx, c, r.Fence); err != nil {
			return err
		}
		for _, q := range []string{`DELETE FROM scan_finding_tags WHERE finding_id IN (SELECT id FROM scan_findings WHERE job_id = ?)`,
			`DELETE FROM scan_findings WHERE job_id = ?`, `DELETE FROM scan_volumes WHERE job_id = ?`} {
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
			_, err := c.ExecContext(ctx, `INSERT INTO scan_volumes (job_id, disk, volume, file_system, error, files, bytes, cached, reused, skipped, errors, errors_dropped)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (job_id, disk, volume) DO UPDATE SET file_system = excluded.file_system, error = excluded.error,
					files = excluded.files, bytes = excluded.bytes, cached = excluded.cached, reused = excluded.reused, skipped = excluded.skipped,
					errors = excluded.errors, errors_dropped = excluded.errors_dropped`,
				r.JobID, v.Disk, v.Volume, v.FileSystem, v.Error, v.Files, v.Bytes, v.Cached, v.Reused,
				JSON(NonNilMap(v.Skipped)), JSON(NonNil(errs)), dropped)
			if err != nil {
				return fmt.Errorf("volume %s/%s: %w", v.Disk, v.Volume, err)
			}
		}
		for _, f := range r.Findings {
			f.JobID, f.VM, f.SigVersion = r.JobID, r.VM, r.SigVersion
			f.Tags, f.Meta = NonNil(f.Tags), NonNil(f.Meta)
			if f.FoundAt.IsZero() {
				f.FoundAt = r.FinishedAt
			}
			f.FoundAt = f.FoundAt.UTC()
			err := c.QueryRowContext(ctx, `INSERT INTO scan_findings (job_id, vm, datastore, disk, volume, path, size, sha256, namespace, rule, tags, meta, strings, sig_version, found_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				f.JobID, f.VM, f.Datastore, f.Disk, f.Volume, f.Path, f.Size, f.SHA256, f.Namespace, f.Rule,
				JSON(f.Tags), JSON(f.Meta), JSON(NonNil(f.Strings)), int64(f.SigVersion), Nanos(f.FoundAt)).Scan(&f.ID)
			if err != nil {
				return fmt.Errorf("finding %s: %w", f.Path, err)
			}
			for _, tag := range f.Tags {
				if _, err := c.ExecContext(ctx, `INSERT INTO scan_finding_tags (tag, finding_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, tag, f.ID); err != nil {
					return fmt.Errorf("finding %s: tag %q: %w", f.Path, tag, err)
				}
			}
			rows = append(rows, f)
		}
		_, err := c.ExecContext(ctx, `INSERT INTO scan_results (job_id, vm, status, incomplete, sig_name, sig_version, rules_id, started_at, finished_at,
				files, bytes, cached, findings, bytes_read, read_ops, disks, plans)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (job_id) DO UPDATE SET vm = excluded.vm, status = excluded.status, incomplete = excluded.incomplete,
				sig_name = excluded.sig_name, sig_version = excluded.sig_version, rules_id = excluded.rules_id,
				started_at = excluded.started_at, finished_at = excluded.finished_at, files = excluded.files,
				bytes = excluded.bytes, cached = excluded.cached, findings = excluded.findings,
				bytes_read = excluded.bytes_read, read_ops = excluded.read_ops, disks = excluded.disks, plans = excluded.plans`,
			r.JobID, r.VM, string(r.Status), JSON(NonNilMap(r.Incomplete)), r.SigName, int64(r.SigVersion), r.RulesID,
			Nanos(r.StartedAt), Nanos(r.FinishedAt), r.Files, r.Bytes, r.Cached, len(rows), r.BytesRead, r.ReadOps, JSON(NonNil(r.Disks)),
			plansJSON(r.Plans))
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
			r.VM, r.VM, JSON(NonNil(r.Disks)), now, r.JobID, Nanos(r.FinishedAt), string(r.Status), len(rows), int64(r.SigVersion), r.BytesRead)
		return err
	})
	if err != nil {
		return nil, s.wrap(what, err)
	}
	return rows, nil
}

// plansJSON is a scan's plans as stored: bounded (results.BoundPlan);
// "" for nil (no plan recorded), as for the results stored before plans
// were (the column's default), "[]" for none.
func plansJSON(ps []results.Plan) string {
	if ps == nil {
		return ""
	}
	out := make([]results.Plan, len(ps))
	for i, p := range ps {
		out[i] = results.BoundPlan(p)
	}
	return JSON(out)
}

// NonNil is s, or an empty slice for nil (JSON [] rather than null).
func NonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// NonNilMap is m, or an empty map for nil.
func NonNilMap(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}

// Scan implements results.Results.
func (s *Store) Scan(ctx context.Context, jobID int64) (*results.Scan, error) {
	r := &results.Scan{JobID: jobID}
	var status, incomplete, disks, plans string
	var v, st, fin int64
	err := s.q.QueryRowContext(ctx, `SELECT vm, status, incomplete, sig_name, sig_version, rules_id, started_at, finished_at,
			files, bytes, cached, findings, bytes_read, read_ops, disks, plans
		FROM scan_results WHERE job_id = ?`, jobID).Scan(&r.VM, &status, &incomplete, &r.SigName, &v, &r.RulesID, &st, &fin,
		&r.Files, &r.Bytes, &r.Cached, &r.FindingCount, &r.BytesRead, &r.ReadOps, &disks, &plans)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: job %d has no stored result", results.ErrNotFound, jobID)
	}
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("job %d", jobID), err)
	}
	r.SigVersion, r.StartedAt, r.FinishedAt = uint64(v), FromNanos(st), FromNanos(fin)
	r.Status = results.Status(status)
	if err := json.Unmarshal([]byte(incomplete), &r.Incomplete); err != nil {
		return nil, s.wrap(fmt.Sprintf("job %d: incomplete", jobID), err)
	}
	if err := json.Unmarshal([]byte(disks), &r.Disks); err != nil {
		return nil, s.wrap(fmt.Sprintf("job %d: disks", jobID), err)
	}
	if plans != "" { // "": stored before plans were, none recorded
		if err := json.Unmarshal([]byte(plans), &r.Plans); err != nil {
			return nil, s.wrap(fmt.Sprintf("job %d: plans", jobID), err)
		}
	}
	if r.Status == "" { // stored before statuses were
		r.Incomplete[NotRecorded] = 1
		r.Status = results.StatusOf(int(r.FindingCount), r.Incomplete)
	}
	rows, err := s.q.QueryContext(ctx, `SELECT disk, volume, file_system, error, files, bytes, cached, reused, skipped, errors, errors_dropped
		FROM scan_volumes WHERE job_id = ? ORDER BY disk, volume`, jobID)
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("job %d volumes", jobID), err)
	}
	defer rows.Close()
	r.Volumes = []results.Volume{}
	for rows.Next() {
		var vol results.Volume
		var skipped, errs string
		if err := rows.Scan(&vol.Disk, &vol.Volume, &vol.FileSystem, &vol.Error, &vol.Files, &vol.Bytes, &vol.Cached, &vol.Reused, &skipped, &errs, &vol.ErrorsDropped); err != nil {
			return nil, s.wrap(fmt.Sprintf("job %d volumes", jobID), err)
		}
		if err := errors.Join(json.Unmarshal([]byte(skipped), &vol.Skipped), json.Unmarshal([]byte(errs), &vol.Errors)); err != nil {
			return nil, s.wrap(fmt.Sprintf("job %d volume %s", jobID, vol.Volume), err)
		}
		r.Volumes = append(r.Volumes, vol)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap(fmt.Sprintf("job %d volumes", jobID), err)
	}
	return r, nil
}

// findingWhere is the condition and arguments that select what q
// selects, its page (After, Limit) aside.
func (s *Store) findingWhere(q results.FindingQuery) (string, []any) {
	where := []string{"1 = 1"}
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
	switch {
	case q.Tag == "":
	case q.JobID != 0 || q.VM != "":
		// A job's or a VM's findings are few: each is checked.
		add("EXISTS (SELECT 1 FROM scan_finding_tags t WHERE t.tag = ? AND t.finding_id = scan_findings.id)", q.Tag)
	default:
		// The tag table's key (tag, finding_id) hands the ids in order:
		// a rare tag is found without reading every finding.
		add("id IN (SELECT finding_id FROM scan_finding_tags WHERE tag = ?)", q.Tag)
	}
	if !q.Since.IsZero() {
		add("found_at >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("found_at < ?", q.Until.UnixNano())
	}
	return strings.Join(where, " AND "), args
}

// CountFindings implements results.Results.
func (s *Store) CountFindings(ctx context.Context, q results.FindingQuery) (int64, error) {
	where, args := s.findingWhere(q)
	var n int64
	if err := s.q.QueryRowContext(ctx, `SELECT count(*) FROM scan_findings WHERE `+where, args...).Scan(&n); err != nil {
		return 0, s.wrap("count findings", err)
	}
	return n, nil
}

// Findings implements results.Results.
func (s *Store) Findings(ctx context.Context, q results.FindingQuery) ([]results.Finding, error) {
	limit, err := results.CheckLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	where, args := s.findingWhere(q)
	args = append(args, q.After, limit)
	rows, err := s.q.QueryContext(ctx, `SELECT id, job_id, vm, datastore, disk, volume, path, size, sha256, namespace, rule, tags, meta, strings, sig_version, found_at
		FROM scan_findings WHERE `+where+` AND id > ? ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, s.wrap("findings", err)
	}
	defer rows.Close()
	out := []results.Finding{}
	for rows.Next() {
		var f results.Finding
		var tags, meta, strs string
		var v, at int64
		if err := rows.Scan(&f.ID, &f.JobID, &f.VM, &f.Datastore, &f.Disk, &f.Volume, &f.Path, &f.Size, &f.SHA256, &f.Namespace, &f.Rule,
			&tags, &meta, &strs, &v, &at); err != nil {
			return nil, s.wrap("findings", err)
		}
		f.SigVersion, f.FoundAt = uint64(v), FromNanos(at)
		if f.Meta, err = decodeMeta([]byte(meta)); err != nil {
			return nil, s.wrap(fmt.Sprintf("finding %d meta", f.ID), err)
		}
		if err := errors.Join(json.Unmarshal([]byte(tags), &f.Tags), json.Unmarshal([]byte(strs), &f.Strings)); err != nil {
			return nil, s.wrap(fmt.Sprintf("finding %d", f.ID), err)
		}
		if len(f.Strings) == 0 {
			f.Strings = nil
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("findings", err)
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
		out = append(out, results.Match{Rule: r.Rule, Namespace: r.Namespace, Tags: NonNil(r.Tags), Meta: meta, Strings: r.Strings})
	}
	return out, nil
}

// Verdict implements results.Verdicts.
func (s *Store) Verdict(ctx context.Context, k results.VerdictKey) (results.Verdict, error) {
	var matches string
	err := s.q.QueryRowContext(ctx, `SELECT matches FROM verdict_cache WHERE content = ? AND rules = ? AND context = ?`,
		k.Content[:], k.Rules, k.Context[:]).Scan(&matches)
	if errors.Is(err, sql.ErrNoRows) {
		return results.Verdict{}, results.ErrNotFound
	}
	if err != nil {
		return results.Verdict{}, s.wrap("verdict", err)
	}
	m, err := decodeMatches([]byte(matches))
	if err != nil {
		return results.Verdict{}, s.wrap("verdict", err)
	}
	return results.Verdict{Matches: m}, nil
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
	v.UpdatedAt, v.LastScanned, v.LastStatus, v.LastSigVersion = FromNanos(upd), FromNanos(last), results.Status(status), uint64(sig)
	if v.LastJob != 0 && v.LastStatus == "" { // scanned before statuses were
		v.LastStatus = results.StatusOf(int(v.LastFindings), map[string]int64{NotRecorded: 1})
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
	err := s.tx(ctx, func(c Querier) error {
		_, err := c.ExecContext(ctx, `INSERT INTO scan_vms (vm, name, source, disks, updated_at, last_job, last_scanned)
			VALUES (?, ?, ?, ?, ?, 0, 0)
			ON CONFLICT (vm) DO UPDATE SET name = excluded.name, source = excluded.source, disks = excluded.disks, updated_at = excluded.updated_at`,
			v.ID, v.Name, v.Source, JSON(NonNil(v.Disks)), Nanos(v.UpdatedAt))
		return err
	})
	if err != nil {
		return s.wrap("vm "+v.ID, err)
	}
	return nil
}

// VM implements results.Inventory.
func (s *Store) VM(ctx context.Context, id string) (results.VM, error) {
	v, err := scanVM(s.q.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM scan_vms WHERE vm = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%w: no VM %q", results.ErrNotFound, id)
	}
	if err != nil {
		return v, s.wrap("vm "+id, err)
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
		// A position on lower(): no LIKE, so % and _ in the search are plain.
		where = append(where, "("+s.d.Position+"(lower(vm), lower(?)) > 0 OR "+s.d.Position+"(lower(name), lower(?)) > 0)")
		args = append(args, q.Search, q.Search)
	}
	if q.Scanned {
		where = append(where, "last_job > 0")
	}
	args = append(args, limit)
	rows, err := s.q.QueryContext(ctx, `SELECT `+vmColumns+` FROM scan_vms WHERE `+strings.Join(where, " AND ")+` ORDER BY vm LIMIT ?`, args...)
	if err != nil {
		return nil, s.wrap("vms", err)
	}
	defer rows.Close()
	out := []results.VM{}
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, s.wrap("vms", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("vms", err)
	}
	return out, nil
}

// RemoveVM implements results.Inventory.
func (s *Store) RemoveVM(ctx context.Context, id string) error {
	err := s.tx(ctx, func(c Querier) error {
		_, err := c.ExecContext(ctx, `DELETE FROM scan_vms WHERE vm = ?`, id)
		return err
	})
	if err != nil {
		return s.wrap("remove vm "+id, err)
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
	rows, err := s.q.QueryContext(ctx, `SELECT datastore, at, interval_ns, bytes, ops, budget_bytes, budget_ops, running
		FROM io_history WHERE `+strings.Join(where, " AND ")+` ORDER BY at, datastore LIMIT ?`, args...)
	if err != nil {
		return nil, s.wrap("I/O history", err)
	}
	defer rows.Close()
	out := []results.IOSample{}
	for rows.Next() {
		var x results.IOSample
		var at, iv int64
		if err := rows.Scan(&x.Datastore, &at, &iv, &x.BytesRead, &x.ReadOps, &x.BudgetBytesPerSec, &x.BudgetOpsPerSec, &x.Running); err != nil {
			return nil, s.wrap("I/O history", err)
		}
		x.At, x.Interval = FromNanos(at), time.Duration(iv)
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("I/O history", err)
	}
	return out, nil
}

// PruneIOHistory implements results.History.
func (s *Store) PruneIOHistory(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(c Querier) error {
		res, err := c.ExecContext(ctx, `DELETE FROM io_history WHERE at < ?`, Nanos(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.wrap("prune I/O history", err)
	}
	return n, nil
}

// checkFence runs a save's fence inside its transaction (results.Fence).
func checkFence(ctx context.Context, c Querier, f *results.Fence) error {
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

// Appliances implements results.Appliances.
func (s *Store) Appliances(ctx context.Context) ([]results.Appliance, error) {
	rows, err := s.q.QueryContext(ctx, `SELECT name, instance, version, sig_name, sig_version, rules_id, started_at, seen_at
		FROM fleet_appliances ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list appliances", err)
	}
	defer rows.Close()
	var out []results.Appliance
	for rows.Next() {
		var a results.Appliance
		var v, started, seen int64
		if err := rows.Scan(&a.Name, &a.Instance, &a.Version, &a.SigName, &v, &a.RulesID, &started, &seen); err != nil {
			return nil, s.wrap("list appliances", err)
		}
		a.SigVersion, a.StartedAt, a.SeenAt = uint64(v), FromNanos(started), FromNanos(seen)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("list appliances", err)
	}
	return out, nil
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
	_, err := s.q.ExecContext(ctx, `INSERT INTO vm_freezes (`+freezeColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (vm, id) DO UPDATE SET connector = excluded.connector, job_id = excluded.job_id, taken = excluded.taken,
		freeze_stun = excluded.freeze_stun, quiesced = excluded.quiesced, released = excluded.released,
		release_stun = excluded.release_stun, release_took = excluded.release_took, held = excluded.held,
		stale = excluded.stale, repaired = excluded.repaired, error = excluded.error`,
		f.VM, f.ID, f.Connector, f.JobID, Nanos(f.Taken), int64(f.FreezeStun), bit(f.Quiesced), Nanos(f.Released),
		int64(f.ReleaseStun), int64(f.ReleaseTook), int64(f.Held), bit(f.Stale), bit(f.Repaired), f.Error)
	if err != nil {
		return s.wrap("put freeze", err)
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
		where, args = append(where, "taken < ?"), append(args, Nanos(q.Before))
	}
	args = append(args, limit)
	rows, err := s.q.QueryContext(ctx, `SELECT `+freezeColumns+` FROM vm_freezes WHERE `+strings.Join(where, " AND ")+
		` ORDER BY taken DESC, vm, id LIMIT ?`, args...)
	if err != nil {
		return nil, s.wrap("freezes", err)
	}
	defer rows.Close()
	out := []results.Freeze{}
	for rows.Next() {
		var f results.Freeze
		var taken, fstun, quiesced, released, rstun, rtook, held, stale, repaired int64
		if err := rows.Scan(&f.VM, &f.ID, &f.Connector, &f.JobID, &taken, &fstun, &quiesced, &released, &rstun, &rtook, &held, &stale, &repaired, &f.Error); err != nil {
			return nil, s.wrap("freezes", err)
		}
		f.Taken, f.FreezeStun, f.Quiesced, f.Released = FromNanos(taken), time.Duration(fstun), quiesced != 0, FromNanos(released)
		f.ReleaseStun, f.ReleaseTook, f.Held = time.Duration(rstun), time.Duration(rtook), time.Duration(held)
		f.Stale, f.Repaired = stale != 0, repaired != 0
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("freezes", err)
	}
	return out, nil
}

// IncrementalRecord implements results.Records.
func (s *Store) IncrementalRecord(ctx context.Context, identity, rules string) ([]byte, error) {
	var b []byte
	err := s.q.QueryRowContext(ctx, `SELECT data FROM incremental_records WHERE identity = ? AND rules = ?`, identity, rules).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no incremental record of %s", results.ErrNotFound, identity)
	}
	if err != nil {
		return nil, s.wrap("incremental record of "+identity, err)
	}
	return b, nil
}

// IncrementalRecordedAs implements results.Records.
func (s *Store) IncrementalRecordedAs(ctx context.Context, path, rules string) (string, time.Time, error) {
	var id string
	var at int64
	err := s.q.QueryRowContext(ctx, `SELECT identity, recorded_at FROM incremental_paths WHERE path = ? AND rules = ?`, path, rules).Scan(&id, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, fmt.Errorf("%w: no incremental record of %s", results.ErrNotFound, path)
	}
	if err != nil {
		return "", time.Time{}, s.wrap("incremental record of "+path, err)
	}
	return id, FromNanos(at), nil
}

// PutIncrementalRecord implements results.Records.
func (s *Store) PutIncrementalRecord(ctx context.Context, r results.IncrementalRecord, keep int) error {
	if err := results.CheckRecord(&r, keep); err != nil {
		return err
	}
	err := s.tx(ctx, func(c Querier) error {
		if s.d.LockRecords != "" {
			if _, err := c.ExecContext(ctx, s.d.LockRecords); err != nil {
				return err
			}
		}
		// stored_at orders the trim: the writer's clock, which in a fleet
		// may be a little off another's; a record dropped early only
		// costs a full scan.
		_, err := c.ExecContext(ctx, `INSERT INTO incremental_records (identity, rules, path, recorded_at, stored_at, data) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (identity, rules) DO UPDATE SET path = excluded.path, recorded_at = excluded.recorded_at,
				stored_at = excluded.stored_at, data = excluded.data`,
			r.Identity, r.Rules, r.Path, Nanos(r.Time), time.Now().UnixNano(), r.Data)
		if err != nil {
			return err
		}
		if r.Path != "" {
			if _, err := c.ExecContext(ctx, `INSERT INTO incremental_paths (path, rules, identity, recorded_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (path, rules) DO UPDATE SET identity = excluded.identity, recorded_at = excluded.recorded_at`,
				r.Path, r.Rules, r.Identity, Nanos(r.Time)); err != nil {
				return err
			}
		}
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`DELETE FROM incremental_records WHERE rules = ? AND identity NOT IN
				(SELECT identity FROM incremental_records WHERE rules = ? ORDER BY stored_at DESC, identity DESC LIMIT ?)`, []any{r.Rules, r.Rules, keep}},
			{`DELETE FROM incremental_records WHERE rules NOT IN
				(SELECT rules FROM incremental_records GROUP BY rules ORDER BY max(stored_at) DESC, rules DESC LIMIT ?)`, []any{results.MaxRecordRuleSets}},
			{`DELETE FROM incremental_paths WHERE rules NOT IN (SELECT rules FROM incremental_records)`, nil},
		} {
			if _, err := c.ExecContext(ctx, q.sql, q.args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.wrap("put incremental record of "+r.Identity, err)
	}
	return nil
}
