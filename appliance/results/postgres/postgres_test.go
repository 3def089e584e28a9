package postgres_test

import (
	"context"
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

// TestMigrateV6: a fleet database at schema version 6 (before the
// incremental records and the volumes' reused count) gains both when an
// appliance of this version starts, keeping what it held.
func TestMigrateV6(t *testing.T) {
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
	st, err = postgres.New(ctx, db)
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
