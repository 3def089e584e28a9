package appliance

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	queuesqlite "github.com/snapscan/snapscan/queue/sqlite"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// EngineVersion is the YARA engine level snapscan links (go-yara v4.2.4
// over libyara 4.2): bundles needing a newer one are refused.
const EngineVersion = "4.2"

// CompileBundle is the signatures.Compiler of the appliance: each bundle
// file is compiled in its own namespace, named by its path in the bundle.
func CompileBundle(files []signatures.File) (*scanner.Rules, int, error) {
	srcs := make([]scanner.Source, len(files))
	for i, f := range files {
		srcs[i] = scanner.Source{Name: f.Path, Data: f.Data}
	}
	rules, err := scanner.CompileSources(srcs)
	if err != nil {
		return nil, 0, err
	}
	return rules, rules.Count(), nil
}

// Options are what the appliance takes besides its configuration.
type Options struct {
	// Logger receives the service log; nil discards.
	Logger *slog.Logger
	// EventLog receives findings as JSON lines when the configuration's
	// events.log says so; the caller opens (and closes) it, so that this
	// package never opens a file for writing.
	EventLog io.Writer
	// Listener, when set, is used instead of listening on server.listen.
	Listener net.Listener
}

// Appliance is the scanning service: the queue, the scanner, the
// signature receiver, the results store and the HTTP API, over one SQLite
// database. Make it with New, run it with Serve.
type Appliance struct {
	cfg    *Config
	log    *slog.Logger
	db     *sql.DB
	store  *Store
	cache  *Cache
	q      *queue.Queue
	recv   *signatures.Receiver[*scanner.Rules]
	events *Events
	m      *metrics
	opts   Options

	tokens     [][32]byte // SHA-256 of each API token
	pushTokens [][32]byte // API tokens plus the receiver token
	clientCAs  *x509.CertPool

	readyOnce sync.Once
	ready     chan struct{} // closed once a signature set is active
	draining  atomic.Bool   // shutting down: readyz fails, submits get 503
	baseCtx   context.Context

	scMu     sync.Mutex
	sc       *scanner.Scanner
	scRules  string
	progress sync.Map // target name -> *jobProgress
}

// New opens the database, recovers the queue and loads the last installed
// signature set. The caller calls Serve, then Close.
func New(ctx context.Context, cfg *Config, opts Options) (_ *Appliance, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Appliance{cfg: cfg, log: log, opts: opts, ready: make(chan struct{}), baseCtx: context.WithoutCancel(ctx)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	tokens := append([]string(nil), cfg.Auth.Tokens...)
	for _, f := range cfg.Auth.TokenFiles {
		t, err := ReadTokens(f)
		if err != nil {
			return nil, fmt.Errorf("%w: auth.token_files: %v", ErrConfig, err)
		}
		tokens = append(tokens, t...)
	}
	a.tokens = hashTokens(tokens)
	a.pushTokens = a.tokens
	if cfg.Signatures.ReceiverTokenFile != "" {
		t, err := ReadTokens(cfg.Signatures.ReceiverTokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: signatures.receiver_token_file: %v", ErrConfig, err)
		}
		a.pushTokens = append(append([][32]byte(nil), a.tokens...), hashTokens(t)...)
	}
	if cfg.Server.TLS.ClientCA != "" {
		pem, err := os.ReadFile(cfg.Server.TLS.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("%w: server.tls.client_ca: %v", ErrConfig, err)
		}
		a.clientCAs = x509.NewCertPool()
		if !a.clientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: server.tls.client_ca: no PEM certificates in %s", ErrConfig, cfg.Server.TLS.ClientCA)
		}
	}

	// Like the signature state folder, the database's folder is made if
	// missing, private to the service.
	if err := os.MkdirAll(filepath.Dir(cfg.Database.Path), 0o700); err != nil {
		return nil, fmt.Errorf("%w: database.path: %v", ErrConfig, err)
	}
	a.db, err = sqlitedb.Open(cfg.Database.Path)
	if err != nil {
		return nil, fmt.Errorf("%w: database.path: %v", ErrConfig, err)
	}
	if a.store, err = NewStore(ctx, a.db); err != nil {
		return nil, err
	}
	a.cache = NewCache(a.db, cfg.Scanner.CacheEntries)

	var hookToken string
	if cfg.Events.Webhook.TokenFile != "" {
		t, err := ReadTokens(cfg.Events.Webhook.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: events.webhook.token_file: %v", ErrConfig, err)
		}
		hookToken = t[0]
	}
	var out io.Writer
	if cfg.Events.Log != "none" {
		out = opts.EventLog
	}
	a.events = NewEvents(out, cfg.Events.Webhook, hookToken, cfg.Events.Buffer, log)
	a.m = newMetrics(a)

	keys, err := signatures.LoadKeySet(cfg.Signatures.TrustedKeys...)
	if err != nil {
		return nil, fmt.Errorf("%w: signatures.trusted_keys: %v", ErrConfig, err)
	}
	rc := signatures.ReceiverConfig[*scanner.Rules]{
		StateDir:      cfg.Signatures.StateDir,
		Keys:          keys,
		Compile:       CompileBundle,
		Name:          cfg.Signatures.Name,
		EngineVersion: EngineVersion,
		Externals:     scanner.Externals,
		OnUpdate:      a.onUpdate,
		Logger:        log,
		ServerURL:     cfg.Signatures.ServerURL,
		ApplianceID:   cfg.Signatures.ApplianceID,
		PullInterval:  cfg.Signatures.PullInterval,
		ReceiverURL:   cfg.Signatures.ReceiverURL,
	}
	if cfg.Signatures.ServerTokenFile != "" {
		t, err := ReadTokens(cfg.Signatures.ServerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: signatures.server_token_file: %v", ErrConfig, err)
		}
		rc.ServerToken = t[0]
	}
	if cfg.Signatures.ReceiverURL != "" {
		// The server pushes with this token: the receiver's own if set,
		// else the first API token.
		if cfg.Signatures.ReceiverTokenFile != "" {
			t, _ := ReadTokens(cfg.Signatures.ReceiverTokenFile)
			rc.ReceiverToken = t[0]
		} else if len(tokens) > 0 {
			rc.ReceiverToken = tokens[0]
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.Signatures.ServerCA != "" {
		pem, err := os.ReadFile(cfg.Signatures.ServerCA)
		if err != nil {
			return nil, fmt.Errorf("%w: signatures.server_ca: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: signatures.server_ca: no PEM certificates", ErrConfig)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	rc.Client = &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	if a.recv, err = signatures.NewReceiver(rc); err != nil {
		return nil, err
	}
	if a.recv.Current() != nil {
		a.markReady()
	}

	qstore, err := queuesqlite.New(ctx, a.db)
	if err != nil {
		return nil, err
	}
	a.q, err = queue.New(ctx, qstore, a.run, queue.Config{
		MaxScans:    cfg.Queue.MaxScans,
		MaxAttempts: cfg.Queue.MaxAttempts,
		AgingStep:   cfg.Queue.AgingStep,
		BackoffBase: cfg.Queue.BackoffBase,
		BackoffMax:  cfg.Queue.BackoffMax,
		Logger:      log,
		OnFinish:    a.onFinish,
	})
	if err != nil {
		return nil, err
	}
	// The file is the authority for budgets; pauses are the operator's and
	// the queue keeps them across restarts.
	for i := range cfg.Datastores {
		d := &cfg.Datastores[i]
		if err := a.q.SetBudget(ctx, d.Name, d.budget()); err != nil {
			return nil, fmt.Errorf("datastore %s: %w", d.Name, err)
		}
	}
	return a, nil
}

// Close closes the database. Call it after Serve returned.
func (a *Appliance) Close() error {
	if a.db == nil {
		return nil
	}
	if a.cache != nil {
		_ = a.cache.Flush(context.Background())
	}
	err := a.db.Close()
	a.db = nil
	return err
}

// Queue returns the appliance's queue (for tools and tests).
func (a *Appliance) Queue() *queue.Queue { return a.q }

func (a *Appliance) markReady() { a.readyOnce.Do(func() { close(a.ready) }) }

// Serve runs the API, the queue, the signature receiver and the event
// sinks until ctx ends. Then it stops taking work (the API closes, no
// new job starts), lets running scans finish for server.shutdown_grace,
// interrupts the rest (they go back to the queue) and returns.
func (a *Appliance) Serve(ctx context.Context) error {
	ln := a.opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", a.cfg.Server.Listen); err != nil {
			return fmt.Errorf("server.listen: %w", err)
		}
	}
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadTimeout:       a.cfg.Server.ReadTimeout,
		ReadHeaderTimeout: min(a.cfg.Server.ReadTimeout, 10*time.Second),
		WriteTimeout:      a.cfg.Server.WriteTimeout,
		IdleTimeout:       a.cfg.Server.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	if a.cfg.Server.TLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(a.cfg.Server.TLS.Cert, a.cfg.Server.TLS.Key)
		if err != nil {
			ln.Close()
			return fmt.Errorf("server.tls: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if a.clientCAs != nil {
			// Verified if given: health checks come without one, and
			// token clients may too; auth() decides per request.
			tc.ClientCAs, tc.ClientAuth = a.clientCAs, tls.VerifyClientCertIfGiven
		}
		ln = tls.NewListener(ln, tc)
	}

	// The queue and the event sinks outlive ctx by the grace period.
	qctx, qcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer qcancel()
	evctx, evcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer evcancel()

	var g errgroup.Group
	g.Go(func() error {
		a.log.Info("appliance: listening", "addr", ln.Addr().String(), "tls", a.cfg.Server.TLS.Cert != "")
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("appliance: http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return a.recv.Serve(ctx) })
	evDone := make(chan struct{})
	g.Go(func() error { defer close(evDone); return a.events.Serve(evctx) })
	qDone := make(chan struct{})
	g.Go(func() error {
		defer close(qDone)
		// Scanning waits for a signature set: a job must never run
		// without rules and burn an attempt.
		select {
		case <-a.ready:
		case <-qctx.Done():
			return nil
		}
		a.log.Info("appliance: queue serving")
		return a.q.Serve(qctx)
	})
	g.Go(func() error {
		<-ctx.Done()
		a.draining.Store(true)
		a.log.Info("appliance: shutting down: no new work", "grace", a.cfg.Server.ShutdownGrace, "running", len(a.q.Metrics().Running))
		// The API closes while the queue drains: no new job starts from
		// now on, running scans get the grace period to finish.
		httpDone := make(chan struct{})
		go func() {
			defer close(httpDone)
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close()
			}
		}()
		dctx, cancel := context.WithTimeout(context.Background(), a.cfg.Server.ShutdownGrace)
		if err := a.q.Drain(dctx); err != nil {
			// What still runs is interrupted by the end of the queue's
			// context and goes back to the queue, the run not counted
			// as an attempt.
			a.log.Warn("appliance: grace period over: interrupting scans, they stay queued", "err", err)
		}
		cancel()
		qcancel()
		<-qDone
		<-httpDone
		evcancel()
		<-evDone
		return nil
	})
	err := g.Wait()
	a.log.Info("appliance: stopped")
	return err
}

// onUpdate runs when a new signature set became active.
func (a *Appliance) onUpdate(u signatures.Update) {
	a.markReady()
	a.log.Info("appliance: signature set active", "name", u.Name, "version", u.Version, "rules", u.RuleCount, "previous", u.Previous)
	go a.rescan(u)
}

// rescan enqueues every known VM at the Rescan class, spread over
// signatures.rescan_spread so the datastores see a smooth load.
func (a *Appliance) rescan(u signatures.Update) {
	ctx, cancel := context.WithTimeout(a.baseCtx, time.Minute)
	defer cancel()
	vms, err := a.store.KnownVMs(ctx)
	if err != nil {
		a.log.Error("appliance: rescan: listing VMs failed", "err", err)
		return
	}
	if len(vms) == 0 {
		return
	}
	jobs, err := a.q.EnqueueRescan(ctx, vms, fmt.Sprint(u.Version), a.cfg.Signatures.RescanSpread)
	if err != nil {
		a.log.Error("appliance: rescan: enqueue failed", "vms", len(vms), "err", err)
		return
	}
	a.log.Info("appliance: rescans enqueued", "version", u.Version, "jobs", len(jobs), "spread", a.cfg.Signatures.RescanSpread)
}

func (a *Appliance) onFinish(j queue.Job) {
	a.m.jobFinished(j)
	a.log.Info("appliance: job finished", "job", j.ID, "vm", j.VM, "state", j.State, "attempts", j.Attempts, "err", j.Error)
}

// ReadTokens reads one secret per line from a file; blank lines and lines
// starting with # are skipped. It fails on a file with none.
func ReadTokens(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		t := strings.TrimSpace(sc.Text())
		if t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, t)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no tokens", path)
	}
	return out, nil
}
