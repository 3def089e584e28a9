package appliance

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/postgres"
	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/scanner/incremental/incrementaltest"
)

// recordsSuite runs the incremental.Store contract over the records the
// results stores keep: open returns a new, empty database (its handle and
// results store); Reopen makes a new store over the same database (a
// restarted or another appliance), Garble rewrites the stored bytes.
func recordsSuite(t *testing.T, open func(t *testing.T) (*sql.DB, results.Store), reopen func(t *testing.T, db *sql.DB) results.Store, rebind func(string) string) {
	var mu sync.Mutex
	dbs := map[incremental.Store]*sql.DB{}
	track := func(db *sql.DB, st results.Store, keep int) incremental.Store {
		s := dbRecords{db: st, keep: keep}
		mu.Lock()
		dbs[s] = db
		mu.Unlock()
		return s
	}
	dbOf := func(s incremental.Store) *sql.DB {
		mu.Lock()
		defer mu.Unlock()
		return dbs[s]
	}
	incrementaltest.Suite{
		New: func(t *testing.T, keep int) incremental.Store {
			db, st := open(t)
			return track(db, st, keep)
		},
		Reopen: func(t *testing.T, s incremental.Store) incremental.Store {
			db := dbOf(s)
			return track(db, reopen(t, db), s.(dbRecords).keep)
		},
		Garble: func(t *testing.T, s incremental.Store, mangle func([]byte) []byte) {
			db := dbOf(s)
			var b []byte
			if err := db.QueryRow(`SELECT data FROM incremental_records`).Scan(&b); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(rebind(`UPDATE incremental_records SET data = ?`), mangle(b)); err != nil {
				t.Fatal(err)
			}
		},
	}.Run(t)
}

// TestRecordsSQLite: the appliance's records in its SQLite database keep
// the incremental.Store contract.
func TestRecordsSQLite(t *testing.T) {
	reopen := func(t *testing.T, db *sql.DB) results.Store {
		st, err := sqlite.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	recordsSuite(t, func(t *testing.T) (*sql.DB, results.Store) {
		db, err := sqlitedb.Open(filepath.Join(t.TempDir(), "snapscan.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db, reopen(t, db)
	}, reopen, func(q string) string { return q })
}

// TestRecordsPostgres: the fleet's records on a real PostgreSQL keep the
// incremental.Store contract.
func TestRecordsPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	reopen := func(t *testing.T, db *sql.DB) results.Store {
		st, err := postgres.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	recordsSuite(t, func(t *testing.T) (*sql.DB, results.Store) {
		pool, err := pgxpool.New(context.Background(), srv.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		db := stdlib.OpenDBFromPool(pool)
		t.Cleanup(func() { db.Close() })
		return db, reopen(t, db)
	}, reopen, func(q string) string { return strings.ReplaceAll(q, "?", "$1") })
}
