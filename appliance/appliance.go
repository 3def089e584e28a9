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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snapscan/snapscan/appliance/console"
	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
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
	// Serve closes it.
	Listener net.Listener
}

// Appliance is the scanning service: the queue, the scanner, the
// signature receiver, the results store and the HTTP API, over one
// database that the appliance opens and owns, handing each part what it
// needs. Make it with New, run it with Serve.
type Appliance struct {
	cfg     *Config
	log     *slog.Logger
	db      *sql.DB
	dbs     *database // what db and results are opened from
	results results.Store
	cache   *verdictCache
	records incremental.Store // nil: incremental scans off
	q       *queue.Queue
	recv    *signatures.Receiver[*scanner.Rules]
	events  *events.Dispatcher
	// unreadable: the disk each running job could not open or read.
	unreadable unreadableDisks
	m          *metrics
	// hypervisors are the configured connectors (connectors.go), connm
	// their freeze metrics.
	hypervisors []*hypervisor
	connm       *connectorMetrics
	opts        Options
	// instance and startedAt are announced with the appliance's name
	// (fleet.go).
	instance  string
	startedAt time.Time

	tokens     [][32]byte // SHA-256 of each API token
	pushTokens [][32]byte // API tokens plus the receiver token
	clientCAs  *x509.CertPool

	readyOnce sync.Once
	ready     chan struct{} // closed once a signature set is active
	draining  atomic.Bool   // shutting down: readyz fails, submits get 503
	served    atomic.Bool   // Serve was called
	closeOnce sync.Once
	closeErr  error

	// updates carries the newest signature update to the rescanner; it
	// holds at most one (a newer one replaces it: the rescan is for the
	// newest version).
	updates chan signatures.Update
	// announceNow asks for the register entry to be refreshed (fleet.go).
	announceNow chan struct{}
	// historyEvery is how often the I/O history is sampled.
	historyEvery time.Duration
	// console is the browser console and its logins; trail keeps the
	// last hour of each datastore's reads, sampled every trailEvery.
	console    *console.Console
	trail      *console.Trail
	trailEvery time.Duration

	// budget is the process's one scan budget (memory and spool), shared
	// by every Scanner: one per rule set.
	budget   *scanner.Budget
	scMu     sync.Mutex
	sc       *scanner.Scanner
	scRules  string
	progress *progressBoard
}

// New opens the database, recovers the queue and loads the last installed
// signature set. The caller calls Serve, which closes everything when it
// returns; Close is for an Appliance that is not served.
func New(ctx context.Context, cfg *Config, opts Options) (_ *Appliance, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Appliance{cfg: cfg, log: log, opts: opts, ready: make(chan struct{}), updates: make(chan signatures.Update, 1), announceNow: make(chan struct{}, 1),
		historyEvery: time.Minute, progress: newProgressBoard(), trail: console.NewTrail(time.Hour), trailEvery: 5 * time.Second}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	// Every secret file is read once, here.
	tokens := append([]string(nil), cfg.Auth.Tokens...)
	for _, f := range cfg.Auth.TokenFiles {
		t, err := ReadTokens(f)
		if err != nil {
			return nil, fmt.Errorf("%w: auth.token_files: %v", ErrConfig, err)
		}
		tokens = append(tokens, t...)
	}
	a.tokens = hashTokens(tokens)
	a.console = console.New(console.Config{Tokens: a.tokens, Logger: log})
	a.pushTokens = a.tokens
	var receiverToken string
	if cfg.Signatures.ReceiverTokenFile != "" {
		t, err := ReadTokens(cfg.Signatures.ReceiverTokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: signatures.receiver_token_file: %v", ErrConfig, err)
		}
		a.pushTokens = append(append([][32]byte(nil), a.tokens...), hashTokens(t)...)
		receiverToken = t[0]
	} else if len(tokens) > 0 {
		// The server pushes with the first API token.
		receiverToken = tokens[0]
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

	if a.dbs, err = openDatabase(ctx, cfg, log); err != nil {
		return nil, err
	}
	a.db, a.results = a.dbs.db, a.dbs.results
	a.cache = newVerdictCache(a.results, cfg.Scanner.CacheEntries)
	switch {
	case !cfg.Scanner.incremental():
	case cfg.Scanner.RecordsDir != "":
		ds, derr := incremental.NewDirStore(cfg.Scanner.RecordsDir, cfg.Scanner.RecordsMax)
		if derr != nil {
			return nil, fmt.Errorf("%w: scanner.records_dir: %v", ErrConfig, derr)
		}
		a.records = ds
	default:
		a.records = dbRecords{db: a.results, keep: cfg.Scanner.RecordsMax}
	}
	if cfg.Scanner.SpoolDir != "" {
		if err := os.MkdirAll(cfg.Scanner.SpoolDir, 0o700); err != nil {
			return nil, fmt.Errorf("%w: scanner.spool_dir: %v", ErrConfig, err)
		}
	}
	a.budget = scanner.NewBudget(cfg.budgetOptions())

	var out io.Writer
	if cfg.Events.Log != "none" {
		out = opts.EventLog
	}
	if a.events, err = newEvents(cfg, out, log); err != nil {
		return nil, err
	}
	a.m = newMetrics(a)
	if a.hypervisors, a.connm, err = newHypervisors(a); err != nil {
		return nil, fmt.Errorf("%w: connectors: %v", ErrConfig, err)
	}

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
		OnRefusal:     func(r signatures.Refusal) { a.events.Emit(refusalEvent(r)) },
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
		rc.ReceiverToken = receiverToken
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

	// The name is claimed before the queue takes a lease under it: a
	// second appliance under one name would end the first one's leases.
	a.instance, a.startedAt = instanceID(cfg), time.Now().UTC()
	// Both retried while the database is away (retryDB).
	if err := retryDB(ctx, cfg, log, "announcing to the fleet", func() error { return a.announce(ctx) }); err != nil {
		return nil, err
	}
	err = retryDB(ctx, cfg, log, "opening the queue", func() error {
		var err error
		a.q, err = queue.New(ctx, a.dbs.queue, a.run, queue.Config{
			Appliance:   cfg.Name,
			MaxScans:    cfg.Queue.MaxScans,
			MaxAttempts: cfg.Queue.MaxAttempts,
			AgingStep:   cfg.Queue.AgingStep,
			BackoffBase: cfg.Queue.BackoffBase,
			BackoffMax:  cfg.Queue.BackoffMax,
			Logger:      log,
			OnFinish:    a.onFinish,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	// The file is the authority for budgets; pauses are the operator's and
	// the queue keeps them across restarts.
	for i := range cfg.Datastores {
		d := &cfg.Datastores[i]
		err := retryDB(ctx, cfg, log, "setting a datastore's budget", func() error { return a.q.SetBudget(ctx, d.Name, d.budget()) })
		if err != nil {
			return nil, fmt.Errorf("datastore %s: %w", d.Name, err)
		}
	}
	return a, nil
}

// Close closes what New opened, in order: it writes the verdicts still
// in memory, closes the results store, then the database. Serve calls it
// when it returns; calling it again does nothing and returns the first
// call's error.
func (a *Appliance) Close() error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.cache != nil {
			ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
			errs = append(errs, a.cache.Flush(ctx))
			cancel()
		}
		if a.dbs != nil {
			errs = append(errs, a.dbs.close())
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// Queue returns the appliance's queue (for tools and tests).
func (a *Appliance) Queue() *queue.Queue { return a.q }

// Results returns the appliance's results store (for tools and tests).
func (a *Appliance) Results() results.Store { return a.results }

func (a *Appliance) markReady() { a.readyOnce.Do(func() { close(a.ready) }) }

// Serve runs the appliance until ctx ends or one of its parts fails (the
// API's listener, the signature receiver, the queue), then stops
// everything in one order and returns the first part's error, or nil:
//
//  1. stop accepting: submits get 503, the API closes (bounded), and at
//     the same time
//  2. the queue drains: running scans get server.shutdown_grace to
//     finish; the rest are interrupted and go back to the queue, the
//     interrupted run not counted as an attempt;
//  3. the signature receiver, the rescanner, the I/O history and the
//     event sinks stop (the event log writes what it holds);
//  4. the results store closes, then the database (Close).
//
// Serve may be called once.
func (a *Appliance) Serve(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, a.Close()) }()
	if a.served.Swap(true) {
		return errors.New("appliance: Serve called twice")
	}
	ln := a.opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", a.cfg.Server.Listen); err != nil {
			return fmt.Errorf("appliance: server.listen: %w", err)
		}
	}
	if a.cfg.Server.TLS.Cert == "" && !a.cfg.Server.AllowPlainHTTP && !httpx.IsLoopback(ln.Addr()) {
		// Validate checked the configured name; this is the address
		// really listened on (a name can resolve otherwise by now).
		ln.Close()
		return fmt.Errorf("appliance: server.listen: %s is reachable from other machines: %w", ln.Addr(), errPlainHTTP)
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
			return fmt.Errorf("appliance: server.tls: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if a.clientCAs != nil {
			// Verified if given: health checks come without one, and
			// token clients may too; auth() decides per request.
			tc.ClientCAs, tc.ClientAuth = a.clientCAs, tls.VerifyClientCertIfGiven
		}
		ln = tls.NewListener(ln, tc)
	}

	sup := newSupervisor(ctx, a.log)
	api := sup.start("http", func(ctx context.Context) error {
		a.log.Info("appliance: listening", "addr", ln.Addr().String(), "tls", a.cfg.Server.TLS.Cert != "")
		return serveHTTP(ctx, srv, ln)
	})
	qp := sup.start("queue", func(ctx context.Context) error {
		// Scanning waits for a signature set: a job must never run
		// without rules and burn an attempt.
		select {
		case <-a.ready:
		case <-ctx.Done():
			return nil
		}
		a.log.Info("appliance: queue serving")
		return a.q.Serve(ctx)
	})
	rest := []*part{
		sup.start("signatures", a.recv.Serve),
		sup.start("rescans", a.serveRescans),
		sup.start("history", a.serveHistory),
		sup.start("trail", func(ctx context.Context) error { return a.trail.Serve(ctx, a.q.Metrics, a.trailEvery) }),
		sup.start("events", a.events.Serve),
		sup.start("connectors", a.serveConnectors),
		sup.start("fleet", a.serveAnnounce),
	}
	sup.onShutdown(func() {
		a.draining.Store(true)
		a.log.Info("appliance: shutting down: no new work", "grace", a.cfg.Server.ShutdownGrace, "running", len(a.q.Metrics().Running))
		api.cancel() // the API closes while the queue drains
		dctx, cancel := context.WithTimeout(context.Background(), a.cfg.Server.ShutdownGrace)
		if err := a.q.Drain(dctx); err != nil {
			a.log.Warn("appliance: grace period over: interrupting scans, they stay queued", "err", err)
		}
		cancel()
		qp.stop()
		<-api.done
		for _, p := range rest {
			p.stop()
		}
	})
	err = sup.wait()
	if err != nil {
		a.log.Error("appliance: stopped", "err", err)
	} else {
		a.log.Info("appliance: stopped")
	}
	return err
}

// apiShutdown bounds how long open API requests may take to finish.
const apiShutdown = 5 * time.Second

// serveHTTP serves srv on ln until ctx ends, then shuts it down within
// apiShutdown (closing what is still open after that). A listener that
// fails returns its error at once.
func serveHTTP(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }() // returns when Shutdown or Close is called, or ln fails
	select {
	case err := <-errc:
		return err // never ErrServerClosed: nothing closed it
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), apiShutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// onUpdate runs when a new signature set became active (on the
// receiver's goroutine or an API request's): it hands the update to the
// rescanner without waiting.
func (a *Appliance) onUpdate(u signatures.Update) {
	a.markReady()
	a.log.Info("appliance: signature set active", "name", u.Name, "version", u.Version, "rules", u.RuleCount, "previous", u.Previous)
	a.events.Emit(signatureEvent(u))
	a.announceSoon()
	for {
		select {
		case a.updates <- u:
			return
		default:
		}
		select { // an older update still waits: the newer one replaces it
		case <-a.updates:
		default:
		}
	}
}

// serveRescans enqueues the rescans each signature update calls for, and
// every rescanCheckEvery (and at start) makes sure the active version's
// rescan was enqueued by some appliance of the fleet: an update whose
// rescan a crash interrupted, here or on the appliance that claimed it, is
// picked up again.
func (a *Appliance) serveRescans(ctx context.Context) error {
	t := time.NewTicker(rescanCheckEvery)
	defer t.Stop()
	check := func() {
		if act := a.recv.Current(); act != nil {
			a.rescan(ctx, signatures.Update{Name: act.Manifest.Name, Version: act.Manifest.Version})
		}
	}
	check()
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-a.updates:
			a.rescan(ctx, u)
		case <-t.C:
			check()
		}
	}
}

// rescanTimeout bounds listing and enqueueing the rescans of one update;
// a claim older than rescanClaimStale that was not done may be taken over.
const (
	rescanTimeout    = time.Minute
	rescanClaimStale = 2 * rescanTimeout
	rescanCheckEvery = time.Minute
)

// rescan enqueues every VM scanned so far under an older signature
// version at the Rescan class, spread over signatures.rescan_spread so the
// datastores see a smooth load, once for the fleet: the appliance that
// claims the version's rescan first (results.Rescans) enqueues it, the
// others leave it. Jobs run on whichever appliance takes them, with the
// newest signature set that appliance has.
func (a *Appliance) rescan(ctx context.Context, u signatures.Update) {
	ctx, cancel := context.WithTimeout(ctx, rescanTimeout)
	defer cancel()
	log := a.log.With("set", u.Name, "version", u.Version)
	ok, err := a.results.ClaimRescan(ctx, u.Name, u.Version, a.cfg.Name, rescanClaimStale)
	if err != nil {
		log.Error("appliance: rescan: claiming it failed (tried again within a minute)", "err", err)
		return
	}
	if !ok {
		log.Debug("appliance: rescan: enqueued by the fleet already, or claimed by another appliance")
		return
	}
	var vms []queue.VM
	for after := ""; ; {
		page, err := a.results.VMs(ctx, results.VMQuery{Scanned: true, After: after})
		if err != nil {
			log.Error("appliance: rescan: listing VMs failed", "err", err)
			return
		}
		for _, v := range page {
			if len(v.Disks) == 0 || v.LastSigVersion >= u.Version {
				continue // nothing to scan, or already scanned under this version
			}
			qv := queue.VM{Name: v.ID}
			for _, d := range v.Disks {
				qv.Disks = append(qv.Disks, queueDisk(d))
			}
			vms = append(vms, qv)
		}
		if len(page) < results.MaxPage {
			break
		}
		after = page[len(page)-1].ID
	}
	var jobs []queue.Job
	if len(vms) > 0 {
		if jobs, err = a.q.EnqueueRescan(ctx, vms, fmt.Sprint(u.Version), a.cfg.Signatures.RescanSpread); err != nil {
			log.Error("appliance: rescan: enqueue failed (tried again within a minute)", "vms", len(vms), "err", err)
			return
		}
	}
	if err := a.results.RescanDone(ctx, u.Name, u.Version, len(jobs)); err != nil {
		// Claimed again by this appliance next time: the VMs already
		// enqueued merge into their queued jobs.
		log.Warn("appliance: rescan: recording it failed", "err", err)
		return
	}
	log.Info("appliance: rescans enqueued for the fleet", "jobs", len(jobs), "spread", a.cfg.Signatures.RescanSpread)
}

func (a *Appliance) onFinish(j queue.Job) {
	a.m.jobFinished(j)
	if ev, ok := a.jobEvent(j); ok {
		a.events.Emit(ev)
	}
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
