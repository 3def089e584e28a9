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
