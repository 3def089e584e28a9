// Package sqlitedb opens the appliance's SQLite database, once, with the
// settings every part that keeps tables in it relies on. The caller owns
// the returned *sql.DB and hands it to each part (the queue's store, the
// results store), which creates and migrates only its own tables.
package sqlitedb

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver, pure Go
)

// BusyTimeout is how long a write waits for another connection's lock.
const BusyTimeout = 10 * time.Second

// Open opens (creating it if needed) the SQLite database at path: WAL
// journal, synchronous=FULL (a commit is on disk when it returns, so an
// acknowledged write survives power loss, not only a crash), foreign keys,
// a busy timeout, and BEGIN IMMEDIATE for transactions (two writers never
// both read and then fail to upgrade their lock). The caller closes it.
func Open(path string) (*sql.DB, error) {
	return open(path, "FULL")
}

// OpenUnsynced is Open with synchronous=OFF: commits are not flushed to
// disk. For benchmarks that separate the flush from the rest, never for
// data that must survive.
func OpenUnsynced(path string) (*sql.DB, error) {
	return open(path, "OFF")
}

func open(path, sync string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous("+sync+")")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	return db, nil
}

// Tx runs f inside BEGIN IMMEDIATE ... COMMIT on one connection of db:
// immediate, so two writers never both read and then fail to upgrade
// their lock, whatever the DSN says. A failing f, or a failing commit,
// rolls back (even when ctx was cancelled) and returns the error.
func Tx(ctx context.Context, db *sql.DB, f func(c *sql.Conn) error) (err error) {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// A cancelled ctx must not keep the rollback from running.
			_, _ = c.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	if err := f(c); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, "COMMIT")
	return err
}
