package postgres_test

import (
	"context"
	"database/sql"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/postgres"
	"github.com/snapscan/snapscan/appliance/results/resultstest"
	"github.com/snapscan/snapscan/internal/pgtest"
)

// TestConformance runs the results suite against a real PostgreSQL.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	resultstest.Suite{New: func(t *testing.T) results.Store {
		pool, err := pgxpool.New(context.Background(), srv.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		db := stdlib.OpenDBFromPool(pool)
		t.Cleanup(func() { db.Close() })
		s, err := postgres.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}}.Run(t)
}

// currentDB returns a new database of a real server with this version's
// tables, for a test to take them back to an older schema.
func currentDB(t *testing.T) *sql.DB {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.Start(t).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { db.Close() })
	if _, err := postgres.New(ctx, db); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestMigrateV6: a fleet database at schema version 6 (before the
// incremental records and the volumes' reused count) gains both when an
// appliance of this version starts, keeping what it held.
func TestMigrateV6(t *testing.T) {
	ctx := context.Background()
	db := currentDB(t)
	old := &results.Scan{JobID: 1, VM: "vm1", Status: results.StatusClean, Volumes: []results.Volume{{Disk: "d", Volume: "p1", Files: 3}}}
	st, _ := postgres.New(ctx, db)
	if _, err := st.SaveScan(ctx, old); err != nil {
		t.Fatal(err)
	}
	// Back to version 6's tables.
	for _, q := range []string{`ALTER TABLE scan_volumes DROP COLUMN reused`, `DROP TABLE incremental_records`, `DROP TABLE incremental_paths`,
		`UPDATE results_schema SET version = 6`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	st, err := postgres.New(ctx, db)
	if err != nil {
		t.Fatalf("migrating from version 6: %v", err)
	}
	if s, err := st.Scan(ctx, 1); err != nil || len(s.Volumes) != 1 || s.Volumes[0].Files != 3 || s.Volumes[0].Reused != 0 {
		t.Fatalf("the result stored at version 6: %+v %v", s, err)
	}
	if _, err := st.SaveScan(ctx, &results.Scan{JobID: 2, VM: "vm2", Status: results.StatusClean,
		Volumes: []results.Volume{{Disk: "d", Volume: "p1", Files: 3, Reused: 2}}}); err != nil {
		t.Fatal(err)
	}
	if s, err := st.Scan(ctx, 2); err != nil || s.Volumes[0].Reused != 2 {
		t.Fatalf("reused after the migration: %+v %v", s, err)
	}
	if err := st.PutIncrementalRecord(ctx, results.IncrementalRecord{Identity: "id", Rules: "r", Path: "/p", Data: []byte{1}}, 5); err != nil {
		t.Fatalf("a record after the migration: %v", err)
	}
}

// TestMigrateV7: a fleet database at schema version 7 (before the plans
// of each disk's scan) gains them when an appliance of this version
// starts; the results stored before read back with no plan recorded.
func TestMigrateV7(t *testing.T) {
	ctx := context.Background()
	db := currentDB(t)
	// Back to version 7's tables, with a result stored then.
	for _, q := range []string{`ALTER TABLE scan_results DROP COLUMN plans`, `UPDATE results_schema SET version = 7`,
		`INSERT INTO scan_results (job_id, vm, sig_name, sig_version, rules_id, started_at, finished_at, files, bytes, cached, findings, status)
			VALUES (1, 'vm1', 'set', 1, 'r', 1, 2, 3, 4, 0, 0, 'clean')`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	st, err := postgres.New(ctx, db)
	if err != nil {
		t.Fatalf("migrating from version 7: %v", err)
	}
	if s, err := st.Scan(ctx, 1); err != nil || s.Files != 3 || s.Status != results.StatusClean || s.Plans != nil {
		t.Fatalf("the result stored at version 7: %+v %v; want its files and status, no plan recorded", s, err)
	}
	plan := results.Plan{Datastore: "ds", Disk: "d", Mode: results.PlanBase, Base: "base.qcow2", Identity: "id", Reused: 2}
	if _, err := st.SaveScan(ctx, &results.Scan{JobID: 2, VM: "vm2", Status: results.StatusClean, Plans: []results.Plan{plan}}); err != nil {
		t.Fatal(err)
	}
	if s, err := st.Scan(ctx, 2); err != nil || len(s.Plans) != 1 || !reflect.DeepEqual(s.Plans[0], plan) {
		t.Fatalf("plans after the migration: %+v %v", s, err)
	}
	var v int
	if err := db.QueryRowContext(ctx, `SELECT version FROM results_schema`).Scan(&v); err != nil || v != 8 {
		t.Errorf("schema version %d after the migration (%v), want 8", v, err)
	}
}
