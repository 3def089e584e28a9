package appliance

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/snapscan/snapscan/appliance/results"
	resultspg "github.com/snapscan/snapscan/appliance/results/postgres"
	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	queuepg "github.com/snapscan/snapscan/queue/postgres"
	queuesqlite "github.com/snapscan/snapscan/queue/sqlite"
)

// validateDatabase checks the database section: the driver, and for
// PostgreSQL the name, the DSN file's mode and the connection string's
// syntax. No error ever quotes the connection string: it holds the
// password.
func (c *Config) validateDatabase() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
	}
	if c.Name != "" && !nameRE.MatchString(c.Name) {
		return bad("name", "%q is not a valid appliance name (1-64 of A-Z a-z 0-9 . _ -)", c.Name)
	}
	if c.Database.MaxConns < 0 || c.Database.MaxConns > 1000 {
		return bad("database.max_conns", "must be 1-1000")
	}
	switch c.Database.Driver {
	case DriverSQLite:
		if c.Database.DSNFile != "" {
			return bad("database.dsn_file", "only with driver postgres (driver sqlite uses database.path)")
		}
		return nil
	case DriverPostgres:
	default:
		return bad("database.driver", "%q: want sqlite or postgres", c.Database.Driver)
	}
	if c.Database.Path != "" {
		return bad("database.path", "only with driver sqlite (driver postgres uses database.dsn_file)")
	}
	if c.Name == "" {
		return bad("name", "required with database.driver postgres: the appliance's name in the fleet, unique among the appliances sharing the database")
	}
	if c.Database.DSNFile == "" {
		return bad("database.dsn_file", "required with driver postgres: a file holding the connection string")
	}
	if _, err := readDSN(c.Database.DSNFile); err != nil {
		return bad("database.dsn_file", "%v", err)
	}
	return nil
}

// readDSN reads and parses the connection string in path: a regular file
// that only its owner may read or write, holding one string (blank lines
// and # comments aside). Its errors never quote the string.
func readDSN(path string) (*pgxpool.Config, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is mode %#o: it holds the database password, so it must be readable by its owner only (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		return nil, fmt.Errorf("%s: want one connection string, found %d lines", path, len(lines))
	}
	pc, err := pgxpool.ParseConfig(lines[0])
	if err != nil {
		return nil, fmt.Errorf("%s: the connection string does not parse: %s", path, parseError(err))
	}
	return pc, nil
}

// parseError is pgx's parse error without the connection string it
// quotes (pgx hides the password there on a best-effort basis only).
func parseError(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "malformed"
	}
	s := pe.Error()
	if i := strings.LastIndex(s, "`: "); i >= 0 {
		return s[i+3:]
	}
	return "malformed"
}

// database is what the appliance opened: the handle its parts share, the
// results store and the queue's store on it, and how results are fenced
// by the run that made them.
type database struct {
	// db is the SQLite handle, or the PostgreSQL pool through
	// database/sql: readiness pings it.
	db      *sql.DB
	pool    *pgxpool.Pool // PostgreSQL only
	results results.Store
	queue   queue.Store
	// fence makes a run's results conditional on the run still being
	// the job's current one (results.Fence).
	fence func(queue.Job) *results.Fence
}

// connectTimeout bounds each new connection to PostgreSQL, so a server
// that does not answer (a cut network) costs seconds, not the kernel's
// TCP timeout.
const connectTimeout = 5 * time.Second

// openDatabase opens the configured database once and makes the stores on
// it. A failure closes what was opened.
func openDatabase(ctx context.Context, cfg *Config, log *slog.Logger) (_ *database, err error) {
	d := &database{}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	switch cfg.Database.Driver {
	case DriverPostgres:
		pc, err := readDSN(cfg.Database.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("%w: database.dsn_file: %v", ErrConfig, err)
		}
		pc.MaxConns = int32(cfg.Database.MaxConns)
		if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > connectTimeout {
			pc.ConnConfig.ConnectTimeout = connectTimeout
		}
		pc.HealthCheckPeriod = 5 * time.Second
		if pc.ConnConfig.RuntimeParams["application_name"] == "" {
			pc.ConnConfig.RuntimeParams["application_name"] = "snapscan " + cfg.Name
		}
		if d.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, fmt.Errorf("database: %w", err)
		}
		d.db = stdlib.OpenDBFromPool(d.pool)
		err = retryDB(ctx, cfg, log, "connecting to the database", func() error {
			if err := d.db.PingContext(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			var err error
			if d.results, err = resultspg.New(ctx, d.db); err != nil {
				return err
			}
			d.queue, err = queuepg.New(ctx, d.pool)
			return err
		})
		if err != nil {
			return nil, err
		}
		d.fence = func(j queue.Job) *results.Fence {
			q, args := queuepg.FenceQuery(j.ID, j.Holder, j.Epoch)
			return &results.Fence{Query: q, Args: args}
		}
	default:
		// The appliance owns the database: like the signature state
		// folder, its folder is made if missing, private to the service.
		if err := os.MkdirAll(filepath.Dir(cfg.Database.Path), 0o700); err != nil {
			return nil, fmt.Errorf("%w: database.path: %v", ErrConfig, err)
		}
		if d.db, err = sqlitedb.Open(cfg.Database.Path); err != nil {
			return nil, fmt.Errorf("%w: database.path: %v", ErrConfig, err)
		}
		if d.results, err = sqlite.New(ctx, d.db); err != nil {
			return nil, err
		}
		if d.queue, err = queuesqlite.New(ctx, d.db); err != nil {
			return nil, err
		}
		d.fence = func(j queue.Job) *results.Fence {
			q, args := queuesqlite.FenceQuery(j.ID, j.Holder, j.Epoch)
			return &results.Fence{Query: q, Args: args}
		}
	}
	return d, nil
}

// close closes the results store, then the handle, then the pool.
func (d *database) close() error {
	var errs []error
	if d.results != nil {
		errs = append(errs, d.results.Close())
	}
	if d.db != nil {
		errs = append(errs, d.db.Close())
	}
	if d.pool != nil {
		d.pool.Close()
	}
	return errors.Join(errs...)
}

// startWait is how long an appliance starting on PostgreSQL waits for the
// database to answer (a server restarting, a failover under way, a
// network not up yet) before it gives up: long enough for a restart or a
// failover, short enough that a database that is really gone shows as a
// failed start. Errors a retry cannot fix (a refused password, a missing
// database, a name in use) end the start at once.
const startWait = 90 * time.Second

// retryDB runs f until it succeeds, fails for good, or startWait passed,
// for driver postgres; for SQLite it runs f once.
func retryDB(ctx context.Context, cfg *Config, log *slog.Logger, what string, f func() error) error {
	if cfg.Database.Driver != DriverPostgres {
		return f()
	}
	deadline := time.Now().Add(startWait)
	wait := saveRetryMin
	for {
		err := f()
		if err == nil || !transientDB(err) || ctx.Err() != nil {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%w (still failing after %s)", err, startWait)
		}
		log.Warn("appliance: "+what+" failed at start; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, saveRetryMax)
	}
}

// transientDB reports whether a database error at start may pass: any
// failure to reach or use the server but those of its answers that say
// the configuration is wrong (authentication, a missing database, a
// permission or statement error).
func transientDB(err error) bool {
	if errors.Is(err, ErrConfig) || errors.Is(err, context.Canceled) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && len(pe.Code) == 5 {
		switch pe.Code[:2] {
		case "28", "3D", "42":
			return false
		}
	}
	return true
}

// instanceID tells a restart of this appliance from another appliance
// under the same name: the machine, and the appliance's own state folder
// on it.
func instanceID(cfg *Config) string {
	mid, _ := os.ReadFile("/etc/machine-id")
	host, _ := os.Hostname()
	abs, _ := filepath.Abs(cfg.Signatures.StateDir)
	h := sha256.Sum256([]byte(strings.TrimSpace(string(mid)) + "\x00" + host + "\x00" + abs))
	return hex.EncodeToString(h[:8])
}
