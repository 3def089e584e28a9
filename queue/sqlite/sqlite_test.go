package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/sqlite"
	"github.com/snapscan/snapscan/queue/storetest"
)

func open(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sqlitedb.Open(filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestStore(t *testing.T) {
	storetest.Suite{New: func(t *testing.T) queue.Store {
		s, err := sqlite.New(context.Background(), open(t))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}}.Run(t)
}

// TestMigrate opens a database made by the first version of the queue's
// tables (no schema version recorded, no crash count) holding a running
// job, and finds the job intact with the new column in place; a second
// New on the migrated database changes nothing; other tables in the file
// are left alone.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	const v1 = `
CREATE TABLE queue_jobs (
	id INTEGER PRIMARY KEY AUTOINCREMENT, vm TEXT NOT NULL, disks TEXT NOT NULL, class INTEGER NOT NULL,
	reason TEXT NOT NULL DEFAULT '', sig_version TEXT NOT NULL DEFAULT '', deadline INTEGER NOT NULL DEFAULT 0,
	state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
	enqueued_at INTEGER NOT NULL, not_before INTEGER NOT NULL DEFAULT 0, retry_at INTEGER NOT NULL DEFAULT 0,
	started_at INTEGER NOT NULL DEFAULT 0, finished_at INTEGER NOT NULL DEFAULT 0,
	cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX queue_jobs_one_queued ON queue_jobs(vm) WHERE state = 'queued';
CREATE TABLE queue_datastores (name TEXT PRIMARY KEY, max_scans INTEGER NOT NULL, bytes_per_sec REAL NOT NULL,
	ops_per_sec REAL NOT NULL, paused INTEGER NOT NULL);
CREATE TABLE scan_results (job_id INTEGER PRIMARY KEY, vm TEXT NOT NULL);
INSERT INTO queue_jobs (vm, disks, class, state, attempts, enqueued_at) VALUES
	('web-01', '[{"path":"/a.vmdk","datastore":"ds1"}]', 2, 'running', 3, 1700000000000000000);
INSERT INTO scan_results VALUES (7, 'x');`
	if _, err := db.ExecContext(ctx, v1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s, err := sqlite.New(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Running(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(r) != 1 || r[0].VM != "web-01" || r[0].Attempts != 3 || r[0].Crashes != 0 ||
			len(r[0].Disks) != 1 || r[0].Disks[0].Datastore != "ds1" || r[0].Class != queue.OnDemand {
			t.Fatalf("after migration: %+v", r)
		}
	}
	var v, n int
	if err := db.QueryRowContext(ctx, `SELECT version FROM queue_schema`).Scan(&v); err != nil || v < 2 {
		t.Errorf("schema version %d, %v", v, err)
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM scan_results`).Scan(&n); err != nil || n != 1 {
		t.Errorf("another part's table: %d rows, %v", n, err)
	}
	// A database from a newer snapscan is refused, not written.
	if _, err := db.ExecContext(ctx, `UPDATE queue_schema SET version = 99`); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlite.New(ctx, db); err == nil {
		t.Error("tables from a newer version were accepted")
	}
}
