package appliance

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
)

// Schema is the results store, kept in the queue's SQLite database (the
// queue's own tables are named queue_*). Times are unix nanoseconds, as
// in the queue's tables: in sqlite3, datetime(found_at/1e9, 'unixepoch').
//
//	scan_results   one row per completed job: the rule set used and totals.
//	               job_id is queue_jobs.id.
//	scan_volumes   one row per volume of each disk of a completed job: what
//	               was checked, cached and skipped (skipped and errors are
//	               JSON: {"reason": count}, [{"path","reason","error"}]).
//	scan_findings  one row per rule that matched a file: where (vm, disk,
//	               volume, path), what (sha256, size), which rule
//	               (namespace, rule, tags and meta as JSON) and which
//	               signature version found it.
//	scan_vms       every VM scanned, with its disks (JSON, as submitted):
//	               what a new signature version rescans.
//	verdict_cache  scanner verdicts by content SHA-256, rule-set id and
//	               context hash (see scanner.CacheKey); matches as JSON.
//
// Example: sqlite3 snapscan.db "SELECT vm, path, rule FROM scan_findings
// WHERE found_at > (strftime('%s','now')-86400)*1e9"
const Schema = `
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

// Store keeps scan results in the appliance's SQLite database. Its
// methods are safe for concurrent use.
type Store struct {
	db *sql.DB
}

// NewStore creates the results tables in db if missing. db should come
// from sqlitedb.Open; the caller keeps ownership of it.
func NewStore(ctx context.Context, db *sql.DB) (*Store, error) {
	if _, err := db.ExecContext(ctx, Schema); err != nil {
		return nil, fmt.Errorf("appliance: create result tables: %w", err)
	}
	return &Store{db: db}, nil
}

// DiskResult is the scan of one disk of a job.
type DiskResult struct {
	Disk   queue.Disk
	Format string
	Report *scanner.Report
}

// ScanResult is what a completed job found.
type ScanResult struct {
	JobID      int64
	VM         string
	SigName    string
	SigVersion uint64
	RulesID    string
	StartedAt  time.Time
	FinishedAt time.Time
	Disks      []DiskResult
}

// FindingRow is one rule that matched one file, as stored and served.
type FindingRow struct {
	ID         int64               `json:"id"`
	JobID      int64               `json:"job_id"`
	VM         string              `json:"vm"`
	Disk       string              `json:"disk"`
	Volume     string              `json:"volume"`
	Path       string              `json:"path"`
	Size       int64               `json:"size"`
	SHA256     string              `json:"sha256"`
	Namespace  string              `json:"namespace"`
	Rule       string              `json:"rule"`
	Tags       []string            `json:"tags"`
	Meta       []scanner.MetaEntry `json:"meta"`
	SigVersion uint64              `json:"sig_version"`
	FoundAt    time.Time           `json:"found_at"`
}

// VolumeRow is one volume's statistics.
type VolumeRow struct {
	Disk          string              `json:"disk"`
	Volume        string              `json:"volume"`
	FileSystem    string              `json:"file_system"`
	Error         string              `json:"error,omitempty"`
	Files         int64               `json:"files"`
	Bytes         int64               `json:"bytes"`
	Cached        int64               `json:"cached"`
	Skipped       map[string]int64    `json:"skipped"`
	Errors        []scanner.FileError `json:"-"`
	ErrorsJSON    json.RawMessage     `json:"errors"`
	ErrorsDropped int64               `json:"errors_dropped,omitempty"`
}

// ResultSummary is a completed job's totals.
type ResultSummary struct {
	SigName    string    `json:"sig_name"`
	SigVersion uint64    `json:"sig_version"`
	RulesID    string    `json:"rules_id"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Files      int64     `json:"files"`
	Bytes      int64     `json:"bytes"`
	Cached     int64     `json:"cached"`
	Findings   int64     `json:"findings"`
}

// maxStoredErrors bounds the per-volume error list kept in the database;
// the scanner's own bound (MaxErrors) is for memory, this one for rows.
const maxStoredErrors = 100

// Save stores a job's results, replacing any earlier results of the same
// job: a job run twice (after a crash) leaves one set of rows, so Save is
// idempotent by job id. It returns the findings as stored.
func (s *Store) Save(ctx context.Context, r *ScanResult) ([]FindingRow, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("appliance: save job %d: %w", r.JobID, err)
	}
	defer tx.Rollback()
	for _, q := range []string{"DELETE FROM scan_findings WHERE job_id = ?", "DELETE FROM scan_volumes WHERE job_id = ?"} {
		if _, err := tx.ExecContext(ctx, q, r.JobID); err != nil {
			return nil, fmt.Errorf("appliance: save job %d: %w", r.JobID, err)
		}
	}
	var files, nbytes, cached int64
	var rows []FindingRow
	for _, d := range r.Disks {
		for _, v := range d.Report.Volumes {
			files += v.Files
			nbytes += v.Bytes
			cached += v.Cached
			skipped, _ := json.Marshal(nonNil(v.Skipped))
			errs := v.Errors
			dropped := v.ErrorsDropped
			if len(errs) > maxStoredErrors {
				dropped += int64(len(errs) - maxStoredErrors)
				errs = errs[:maxStoredErrors]
			}
			if errs == nil {
				errs = []scanner.FileError{}
			}
			ej, _ := json.Marshal(errs)
			_, err := tx.ExecContext(ctx, `INSERT INTO scan_volumes (job_id, disk, volume, file_system, error, files, bytes, cached, skipped, errors, errors_dropped)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				r.JobID, d.Disk.Path, v.ID, v.FileSystem, v.Err, v.Files, v.Bytes, v.Cached, string(skipped), string(ej), dropped)
			if err != nil {
				return nil, fmt.Errorf("appliance: save job %d volume %s/%s: %w", r.JobID, d.Disk.Path, v.ID, err)
			}
		}
		for _, f := range d.Report.Findings {
			for _, m := range f.Matches {
				tags, _ := json.Marshal(nonNilS(m.Tags))
				meta, _ := json.Marshal(nonNilM(m.Meta))
				row := FindingRow{JobID: r.JobID, VM: r.VM, Disk: d.Disk.Path, Volume: f.Volume, Path: f.Path,
					Size: f.Size, SHA256: f.SHA256, Namespace: m.Namespace, Rule: m.Rule, Tags: nonNilS(m.Tags),
					Meta: nonNilM(m.Meta), SigVersion: r.SigVersion, FoundAt: r.FinishedAt}
				res, err := tx.ExecContext(ctx, `INSERT INTO scan_findings (job_id, vm, disk, volume, path, size, sha256, namespace, rule, tags, meta, sig_version, found_at)
					VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
					row.JobID, row.VM, row.Disk, row.Volume, row.Path, row.Size, row.SHA256, row.Namespace, row.Rule,
					string(tags), string(meta), int64(row.SigVersion), row.FoundAt.UnixNano())
				if err != nil {
					return nil, fmt.Errorf("appliance: save job %d finding %s: %w", r.JobID, f.Path, err)
				}
				row.ID, _ = res.LastInsertId()
				rows = append(rows, row)
			}
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO scan_results (job_id, vm, sig_name, sig_version, rules_id, started_at, finished_at, files, bytes, cached, findings)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.JobID, r.VM, r.SigName, int64(r.SigVersion), r.RulesID, r.StartedAt.UnixNano(), r.FinishedAt.UnixNano(), files, nbytes, cached, len(rows))
	if err != nil {
		return nil, fmt.Errorf("appliance: save job %d: %w", r.JobID, err)
	}
	disks := make([]queue.Disk, len(r.Disks))
	for i, d := range r.Disks {
		disks[i] = d.Disk
	}
	dj, _ := json.Marshal(disks)
	_, err = tx.ExecContext(ctx, `INSERT INTO scan_vms (vm, disks, last_job, last_scanned) VALUES (?, ?, ?, ?)
		ON CONFLICT(vm) DO UPDATE SET disks = excluded.disks, last_job = excluded.last_job, last_scanned = excluded.last_scanned`,
		r.VM, string(dj), r.JobID, r.FinishedAt.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("appliance: save job %d: %w", r.JobID, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("appliance: save job %d: %w", r.JobID, err)
	}
	return rows, nil
}

func nonNil(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}
func nonNilS(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
func nonNilM(s []scanner.MetaEntry) []scanner.MetaEntry {
	if s == nil {
		return []scanner.MetaEntry{}
	}
	return s
}

// Summary returns a completed job's totals, or nil if it has none.
func (s *Store) Summary(ctx context.Context, jobID int64) (*ResultSummary, error) {
	var r ResultSummary
	var v, st, fin int64
	err := s.db.QueryRowContext(ctx, `SELECT sig_name, sig_version, rules_id, started_at, finished_at, files, bytes, cached, findings
		FROM scan_results WHERE job_id = ?`, jobID).Scan(&r.SigName, &v, &r.RulesID, &st, &fin, &r.Files, &r.Bytes, &r.Cached, &r.Findings)
	if err == sql.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("appliance: job %d results: %w", jobID, err)
	}
	r.SigVersion, r.StartedAt, r.FinishedAt = uint64(v), time.Unix(0, st).UTC(), time.Unix(0, fin).UTC()
	return &r, nil
}

// Volumes returns a completed job's per-volume statistics.
func (s *Store) Volumes(ctx context.Context, jobID int64) ([]VolumeRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT disk, volume, file_system, error, files, bytes, cached, skipped, errors, errors_dropped
		FROM scan_volumes WHERE job_id = ? ORDER BY disk, volume`, jobID)
	if err != nil {
		return nil, fmt.Errorf("appliance: job %d volumes: %w", jobID, err)
	}
	defer rows.Close()
	out := []VolumeRow{}
	for rows.Next() {
		var v VolumeRow
		var skipped, errs string
		if err := rows.Scan(&v.Disk, &v.Volume, &v.FileSystem, &v.Error, &v.Files, &v.Bytes, &v.Cached, &skipped, &errs, &v.ErrorsDropped); err != nil {
			return nil, err
		}
		_ = json.Unmarshal([]byte(skipped), &v.Skipped)
		v.ErrorsJSON = json.RawMessage(errs)
		out = append(out, v)
	}
	return out, rows.Err()
}

// FindingQuery selects findings; zero fields do not filter. Results come
// in id order, after After, at most Limit of them.
type FindingQuery struct {
	JobID        int64
	VM, Rule     string
	Since, Until time.Time
	After        int64
	Limit        int
}

// Findings returns the findings a query selects.
func (s *Store) Findings(ctx context.Context, q FindingQuery) ([]FindingRow, error) {
	var where []string
	var args []any
	add := func(cond string, v any) { where = append(where, cond); args = append(args, v) }
	if q.JobID != 0 {
		add("job_id = ?", q.JobID)
	}
	if q.VM != "" {
		add("vm = ?", q.VM)
	}
	if q.Rule != "" {
		add("rule = ?", q.Rule)
	}
	if !q.Since.IsZero() {
		add("found_at >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("found_at < ?", q.Until.UnixNano())
	}
	add("id > ?", q.After)
	if q.Limit <= 0 || q.Limit > maxPage {
		q.Limit = maxPage
	}
	query := `SELECT id, job_id, vm, disk, volume, path, size, sha256, namespace, rule, tags, meta, sig_version, found_at
		FROM scan_findings WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`
	args = append(args, q.Limit)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("appliance: findings: %w", err)
	}
	defer rows.Close()
	out := []FindingRow{}
	for rows.Next() {
		var f FindingRow
		var tags, meta string
		var v, at int64
		if err := rows.Scan(&f.ID, &f.JobID, &f.VM, &f.Disk, &f.Volume, &f.Path, &f.Size, &f.SHA256, &f.Namespace, &f.Rule, &tags, &meta, &v, &at); err != nil {
			return nil, err
		}
		_ = json.Unmarshal([]byte(tags), &f.Tags)
		f.Meta = decodeMeta([]byte(meta))
		f.SigVersion, f.FoundAt = uint64(v), time.Unix(0, at).UTC()
		out = append(out, f)
	}
	return out, rows.Err()
}

// maxPage bounds one page of any list.
const maxPage = 1000

// decodeMeta restores meta values as the scanner makes them: string,
// int64 or bool (plain JSON decoding would turn ints into float64).
func decodeMeta(b []byte) []scanner.MetaEntry {
	var raw []struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	}
	if json.Unmarshal(b, &raw) != nil {
		return []scanner.MetaEntry{}
	}
	out := make([]scanner.MetaEntry, len(raw))
	for i, r := range raw {
		out[i].Key = r.Key
		d := json.NewDecoder(bytes.NewReader(r.Value))
		d.UseNumber()
		var v any
		_ = d.Decode(&v)
		if n, ok := v.(json.Number); ok {
			if iv, err := n.Int64(); err == nil {
				v = iv
			}
		}
		out[i].Value = v
	}
	return out
}

// KnownVMs returns every VM that was scanned, with its disks: the
// population a new signature version rescans.
func (s *Store) KnownVMs(ctx context.Context) ([]queue.VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT vm, disks FROM scan_vms ORDER BY vm`)
	if err != nil {
		return nil, fmt.Errorf("appliance: known VMs: %w", err)
	}
	defer rows.Close()
	var out []queue.VM
	for rows.Next() {
		var v queue.VM
		var disks string
		if err := rows.Scan(&v.Name, &disks); err != nil {
			return nil, err
		}
		if json.Unmarshal([]byte(disks), &v.Disks) != nil || len(v.Disks) == 0 {
			continue
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Cache is the scanner's verdict cache kept in the database, so that a
// file already scanned (in another VM, or before a restart) under the same
// rule set is not scanned again. Recent verdicts are also held in memory;
// new ones are written in batches (a lost batch only costs rescans).
// It implements scanner.Cache and is safe for concurrent use.
type Cache struct {
	db  *sql.DB
	mem *scanner.MemoryCache

	mu      sync.Mutex
	pending []cacheEntry
	flushMu sync.Mutex // one batch write at a time
}

type cacheEntry struct {
	key scanner.CacheKey
	v   scanner.Verdict
}

// Batch sizes: a write transaction per cacheBatch verdicts; beyond
// maxPending unwritten verdicts new ones are only kept in memory.
const (
	cacheBatch = 512
	maxPending = 8192
)

// NewCache returns a cache over the verdict_cache table of db (created by
// NewStore), with up to memEntries verdicts held in memory.
func NewCache(db *sql.DB, memEntries int) *Cache {
	return &Cache{db: db, mem: scanner.NewMemoryCache(memEntries)}
}

// Get implements scanner.Cache.
func (c *Cache) Get(k scanner.CacheKey) (scanner.Verdict, bool) {
	if v, ok := c.mem.Get(k); ok {
		return v, true
	}
	var matches string
	err := c.db.QueryRow(`SELECT matches FROM verdict_cache WHERE content = ? AND rules = ? AND context = ?`,
		k.Content[:], k.Rules, k.Context[:]).Scan(&matches)
	if err != nil {
		return scanner.Verdict{}, false
	}
	v, err := decodeVerdict(matches)
	if err != nil {
		return scanner.Verdict{}, false
	}
	c.mem.Put(k, v)
	return v, true
}

// Put implements scanner.Cache.
func (c *Cache) Put(k scanner.CacheKey, v scanner.Verdict) {
	c.mem.Put(k, v)
	c.mu.Lock()
	if len(c.pending) < maxPending {
		c.pending = append(c.pending, cacheEntry{k, v})
	}
	full := len(c.pending) >= cacheBatch
	c.mu.Unlock()
	if full {
		_ = c.Flush(context.Background())
	}
}

// Flush writes the verdicts not yet in the database.
func (c *Cache) Flush(ctx context.Context) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("appliance: verdict cache: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO verdict_cache (content, rules, context, matches, stored_at) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("appliance: verdict cache: %w", err)
	}
	defer stmt.Close()
	now := time.Now().UnixNano()
	for _, e := range batch {
		m := e.v.Matches
		if m == nil {
			m = []scanner.Match{}
		}
		b, _ := json.Marshal(m)
		if _, err := stmt.ExecContext(ctx, e.key.Content[:], e.key.Rules, e.key.Context[:], string(b), now); err != nil {
			return fmt.Errorf("appliance: verdict cache: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("appliance: verdict cache: %w", err)
	}
	return nil
}

func decodeVerdict(s string) (scanner.Verdict, error) {
	var raw []struct {
		Rule      string          `json:"rule"`
		Namespace string          `json:"namespace"`
		Tags      []string        `json:"tags"`
		Meta      json.RawMessage `json:"meta"`
	}
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return scanner.Verdict{}, err
	}
	var v scanner.Verdict
	for _, r := range raw {
		v.Matches = append(v.Matches, scanner.Match{Rule: r.Rule, Namespace: r.Namespace, Tags: r.Tags, Meta: decodeMeta(r.Meta)})
	}
	return v, nil
}
