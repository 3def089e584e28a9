package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/resultstest"
	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/sqlitedb"
)

func openDB(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	db, err := sqlitedb.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := sqlite.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	resultstest.Suite{New: func(t *testing.T) results.Store {
		return openDB(t, filepath.Join(t.TempDir(), "results.db"))
	}}.Run(t)
}

// A database written by the first appliance release (schema version 1,
// no results_schema table) is migrated in place; its results, which had
// no status, read back as incomplete, never as clean.
func TestMigrateV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sqlitedb.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`CREATE TABLE scan_results (job_id INTEGER PRIMARY KEY, vm TEXT NOT NULL, sig_name TEXT NOT NULL, sig_version INTEGER NOT NULL,
			rules_id TEXT NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL, files INTEGER NOT NULL,
			bytes INTEGER NOT NULL, cached INTEGER NOT NULL, findings INTEGER NOT NULL)`,
		`CREATE TABLE scan_vms (vm TEXT PRIMARY KEY, disks TEXT NOT NULL, last_job INTEGER NOT NULL, last_scanned INTEGER NOT NULL)`,
		`CREATE TABLE scan_findings (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, vm TEXT NOT NULL, disk TEXT NOT NULL,
			volume TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, namespace TEXT NOT NULL, rule TEXT NOT NULL,
			tags TEXT NOT NULL, meta TEXT NOT NULL, sig_version INTEGER NOT NULL, found_at INTEGER NOT NULL)`,
		`INSERT INTO scan_results VALUES (4, 'vm1', 'set', 2, 'r', 1, 2, 10, 100, 0, 0)`,
		`INSERT INTO scan_vms VALUES ('vm1', '[{"path":"a.img","datastore":"ds"}]', 4, 2)`,
		`INSERT INTO scan_findings (job_id, vm, disk, volume, path, size, sha256, namespace, rule, tags, meta, sig_version, found_at)
			VALUES (5, 'vm2', 'b.img', 'p1', '/x', 1, 'ff', 'n', 'R', '["t"]', '[{"key":"score","value":3}]', 2, 7)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s, err := sqlite.New(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Scan(t.Context(), 4)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != results.StatusIncomplete || r.Incomplete["not_recorded"] != 1 {
		t.Errorf("a result stored before statuses reads as %s %v, want incomplete (not_recorded)", r.Status, r.Incomplete)
	}
	if r.Plans != nil {
		t.Errorf("a result stored before plans reads back with %+v, want none recorded", r.Plans)
	}
	v, err := s.VM(t.Context(), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "vm1" || v.LastJob != 4 || v.LastStatus != results.StatusIncomplete || len(v.Disks) != 1 || v.Disks[0].Path != "a.img" {
		t.Errorf("migrated VM: %+v", v)
	}
	f, err := s.Findings(t.Context(), results.FindingQuery{VM: "vm2"})
	if err != nil || len(f) != 1 || f[0].Meta[0].Value != int64(3) || f[0].Datastore != "" {
		t.Errorf("migrated finding: %+v, %v", f, err)
	}
	// Version 6's tag table holds the tags of findings stored before it.
	if f, err := s.Findings(t.Context(), results.FindingQuery{Tag: "t"}); err != nil || len(f) != 1 {
		t.Errorf("migrated finding by its tag: %+v, %v", f, err)
	}
	if n, err := s.CountFindings(t.Context(), results.FindingQuery{Tag: "t"}); err != nil || n != 1 {
		t.Errorf("migrated findings counted by tag: %d, %v; want 1", n, err)
	}
	// Opening again is a no-op.
	if _, err := sqlite.New(t.Context(), db); err != nil {
		t.Errorf("second New: %v", err)
	}
	var idx int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('scan_findings_vm', 'scan_findings_rule')`).Scan(&idx); err != nil || idx != 0 {
		t.Errorf("the (vm, found_at) and (rule, found_at) indexes are back after a second open: %d, %v", idx, err)
	}
}
