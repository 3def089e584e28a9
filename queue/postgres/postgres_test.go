package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/queue/postgres"
	"github.com/snapscan/snapscan/queue/storetest"
)

// newStore makes a store on a fresh database of srv.
func newStore(t *testing.T, srv *pgtest.Server) *postgres.Store {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s, err := postgres.New(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStore runs the conformance suite against a real PostgreSQL.
func TestStore(t *testing.T) {
	srv := pgtest.Start(t)
	storetest.Suite{New: func(t *testing.T) queue.Store { return newStore(t, srv) }}.Run(t)
}
