package sigserver

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/statefile"
)

// Errors the server returns, wrapped with the detail.
var (
	// ErrVersionTaken: a version asked for (a reservation, a build of a
	// given version) is not above every version issued or reserved.
	ErrVersionTaken = errors.New("sigserver: version already issued or reserved")
	// ErrWrongSet: a reservation for another signature set.
	ErrWrongSet = errors.New("sigserver: another signature set")
	// ErrPlainHTTP: Serve without TLS on a listener reachable from other
	// machines, and Config.AllowPlainHTTP not set.
	ErrPlainHTTP = errors.New("sigserver: plain HTTP on a listener that is not loopback")
)

// DefaultAddr is where Serve listens when Config gives neither Listener
// nor Addr: loopback only.
const DefaultAddr = "127.0.0.1:8443"

// Config configures a Server.
type Config struct {
	// Key signs every bundle built.
	Key ed25519.PrivateKey
	// Name is the signature set's name.
	Name string
	// RulesDir holds the rule sources (.yar, .yara, recursively).
	RulesDir string
	// StateDir keeps every bundle built (bundles/), the registered
	// appliances (appliances.json) and the reserved versions
	// (reserved.json); created 0700 if missing.
	StateDir string
	// Check compiles the rules and counts them; a set it refuses is
	// never signed. Required.
	Check func(files []signatures.File) (ruleCount int, err error)
	// MinEngine is written in each manifest (default "0").
	MinEngine string
	// Externals are the engine's external variables; those the rules
	// mention are listed in each manifest.
	Externals []string
	// Tokens are the bearer tokens the API accepts (at least one).
	Tokens []string
	// Listener, or else Addr (default DefaultAddr), is where Serve
	// listens. With TLSConfig it speaks HTTPS. Without, it speaks plain
	// HTTP only on a loopback listener, unless AllowPlainHTTP says that
	// a proxy in front terminates TLS.
	Listener       net.Listener
	Addr           string
	TLSConfig      *tls.Config
	AllowPlainHTTP bool
	// Targets are configured appliances to push to; more register
	// through the API.
	Targets []signatures.PushTarget
	// Client pushes to appliances (its TLS roots must trust theirs).
	Client *http.Client
	// PollInterval is how often the rules folder is checked for changes
	// (default 10 s; negative: only on request).
	PollInterval time.Duration
	// RetryMin and RetryMax bound the backoff between failed pushes
	// (defaults 500 ms and 5 min).
	RetryMin, RetryMax time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Server is the central signature server: it builds and signs bundles
// from a folder of rule sources, keeps them, pushes them to appliances and
// serves them for pulls (API.md). Its methods are safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	keys   *signatures.KeySet
	tokens httpx.Tokens

	buildMu sync.Mutex // serializes builds and reservations

	mu       sync.Mutex
	latest   *built
	versions []uint64 // every version kept, ascending
	reserved uint64   // highest version reserved for a bundle built elsewhere
	apps     map[string]*appState
	runCtx   context.Context // set while Serve runs
	pushers  sync.WaitGroup
}

// built is a bundle the server made.
type built struct {
	m      *signatures.Manifest
	data   []byte
	source string // digest of the rule sources: SourceDigest(m.Files)
	sum    string // SHA-256 of data, hex: what receivers report as Digest
}

// appState is what the server knows of one appliance; s.mu guards it.
type appState struct {
	target   signatures.PushTarget // URL empty for appliances known only by their pulls
	version  uint64                // the version it last reported running
	digest   string                // and that bundle's SHA-256, "" if not reported
	lastSeen time.Time
	lastErr  string
	reason   string
	refused  uint64 // a version the appliance refused for good: not pushed again
	alerted  bool   // its state's alarm was logged
	wake     chan struct{}
	running  bool
}

const (
	bundlesDir     = "bundles"
	appliancesFile = "appliances.json"
	reservedFile   = "reserved.json"
)

func bundleFile(v uint64) string { return fmt.Sprintf("%020d.bundle", v) }

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// New makes a Server and loads the bundles, registrations and
// reservations kept in its state folder; the latest bundle is verified
// again with its key.
func New(cfg Config) (*Server, error) {
	switch {
	case len(cfg.Key) != ed25519.PrivateKeySize:
		return nil, fmt.Errorf("%w: server needs an Ed25519 signing key", signatures.ErrKey)
	case !signatures.ValidName(cfg.Name):
		return nil, fmt.Errorf("sigserver: set name %q: want 1-64 of [A-Za-z0-9._-]", cfg.Name)
	case cfg.Check == nil:
		return nil, errors.New("sigserver: needs a Check function")
	case cfg.RulesDir == "" || cfg.StateDir == "":
		return nil, errors.New("sigserver: needs a rules folder and a state folder")
	}
	tokens := httpx.NewTokens(cfg.Tokens...)
	if tokens.Len() == 0 || tokens.Len() != len(cfg.Tokens) {
		return nil, errors.New("sigserver: needs API tokens, none empty")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 2 * time.Minute}
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 500 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	if cfg.Listener == nil && cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger,
		keys:   signatures.NewKeySet(cfg.Key.Public().(ed25519.PublicKey)),
		tokens: tokens,
		apps:   map[string]*appState{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("sigserver: state %s: %w", cfg.StateDir, err)
	}
	return s, nil
}

// load reads the state folder.
func (s *Server) load() error {
	dir := filepath.Join(s.cfg.StateDir, bundlesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		v, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), ".bundle"), 10, 64)
		if err == nil && e.Type().IsRegular() && e.Name() == bundleFile(v) {
			s.versions = append(s.versions, v)
		}
	}
	slices.Sort(s.versions)
	if n := len(s.versions); n > 0 {
		v := s.versions[n-1]
		path := filepath.Join(dir, bundleFile(v))
		data, err := statefile.ReadLimited(path, signatures.DefaultMaxBundleSize)
		if err != nil {
			return err
		}
		b, err := signatures.ReadBundle(data, s.keys, signatures.Limits{})
		if err != nil {
			return fmt.Errorf("%s: %w", bundleFile(v), err)
		}
		if b.Manifest.Name != s.cfg.Name || b.Manifest.Version != v {
			return fmt.Errorf("%s holds %s version %d", bundleFile(v), b.Manifest.Name, b.Manifest.Version)
		}
		s.latest = &built{m: &b.Manifest, data: data, source: signatures.SourceDigest(b.Manifest.Files), sum: sha(data)}
	}
	var saved []signatures.PushTarget
	if err := readJSON(filepath.Join(s.cfg.StateDir, appliancesFile), &saved); err != nil {
		return err
	}
	for _, t := range append(saved, s.cfg.Targets...) {
		if err := t.Validate(); err != nil {
			return fmt.Errorf("push targets: %w", err)
		}
		s.apps[t.ID] = &appState{target: t, wake: make(chan struct{}, 1)}
	}
	var res struct {
		Version uint64 `json:"version"`
	}
	if err := readJSON(filepath.Join(s.cfg.StateDir, reservedFile), &res); err != nil {
		return err
	}
	s.reserved = res.Version
	return nil
}

// readJSON decodes a state file strictly; a missing file leaves v as it
// is.
func readJSON(path string, v any) error {
	b, err := statefile.ReadLimited(path, 64<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := httpx.UnmarshalStrict(b, v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}

// Latest returns the manifest of the newest bundle, nil if none.
func (s *Server) Latest() *signatures.Manifest {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil {
		return nil
	}
	return s.latest.m
}

// floor returns the highest version issued or reserved; s.mu is held.
func (s *Server) floor() uint64 {
	f := s.reserved
	if s.latest != nil {
		f = max(f, s.latest.m.Version)
	}
	return f
}

// Register adds or updates a push target, keeps it in the state folder
// and, while Serve runs, pushes the latest bundle to it.
func (s *Server) Register(t signatures.PushTarget) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("sigserver: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.apps[t.ID]
	if !ok {
		st = &appState{wake: make(chan struct{}, 1)}
		s.apps[t.ID] = st
	}
	st.target = t
	st.refused = 0
	var list []signatures.PushTarget
	for _, x := range s.apps {
		if x.target.URL != "" {
			list = append(list, x.target)
		}
	}
	slices.SortFunc(list, func(a, b signatures.PushTarget) int { return strings.Compare(a.ID, b.ID) })
	b, _ := json.MarshalIndent(list, "", "\t")
	// The file holds the appliances' push tokens: WriteAtomic makes it
	// 0600.
	if err := statefile.WriteAtomic(s.cfg.StateDir, appliancesFile, b); err != nil {
		return fmt.Errorf("sigserver: %w", err)
	}
	s.startPusher(st)
	poke(st.wake)
	return nil
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Reserve takes a version number for a bundle of set name built
// elsewhere ("snapscan sig build --server"): version, or the next free
// one when version is 0. A version not above every version issued or
// reserved is refused with ErrVersionTaken; another set's name with
// ErrWrongSet. The server's next build is numbered above it.
func (s *Server) Reserve(name string, version uint64) (uint64, error) {
	if name != s.cfg.Name {
		return 0, fmt.Errorf("%w: this server signs %q, not %q", ErrWrongSet, s.cfg.Name, name)
	}
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	s.mu.Lock()
	floor := s.floor()
	s.mu.Unlock()
	if version == 0 {
		version = floor + 1
	}
	if err := s.freeVersion(version, floor); err != nil {
		return 0, err
	}
	b, _ := json.Marshal(map[string]uint64{"version": version})
	if err := statefile.WriteAtomic(s.cfg.StateDir, reservedFile, b); err != nil {
		return 0, fmt.Errorf("sigserver: %w", err)
	}
	s.mu.Lock()
	s.reserved = version
	s.mu.Unlock()
	s.log.Info("sigserver: version reserved for a bundle built elsewhere", "name", name, "version", version)
	return version, nil
}

// freeVersion checks that v may be issued: above floor and within the
// format's range.
func (s *Server) freeVersion(v, floor uint64) error {
	if v <= floor {
		s.mu.Lock()
		var latest uint64
		if s.latest != nil {
			latest = s.latest.m.Version
		}
		reserved := s.reserved
		s.mu.Unlock()
		return fmt.Errorf("%w: %s version %d (latest built here: %d, highest reserved: %d; the next free is %d)",
			ErrVersionTaken, s.cfg.Name, v, latest, reserved, floor+1)
	}
	if v > 1<<53 {
		return fmt.Errorf("sigserver: version %d: at most 2^53", v)
	}
	return nil
}

// Build builds a new version from the rules folder, numbered one above
// every version issued or reserved, unless its content equals the latest
// bundle's (then it returns the latest and false). Rules that do not
// compile are refused with an error wrapping signatures.ErrCompile and
// the Check function's error. The new bundle is kept on disk and pushed
// to every appliance.
func (s *Server) Build(ctx context.Context) (*signatures.Manifest, bool, error) {
	return s.build(ctx, 0)
}

// BuildVersion builds version v from the rules folder even if the content
// did not change: the way past appliances that run a higher version than
// this server issued (it lost its state). v must be above every version
// issued or reserved (ErrVersionTaken).
func (s *Server) BuildVersion(ctx context.Context, v uint64) (*signatures.Manifest, error) {
	if v == 0 {
		return nil, errors.New("sigserver: build: version 0")
	}
	m, _, err := s.build(ctx, v)
	return m, err
}

func (s *Server) build(ctx context.Context, want uint64) (*signatures.Manifest, bool, error) {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	start := time.Now()
	files, err := signatures.LoadRuleFiles(s.cfg.RulesDir)
	if err != nil {
		return nil, false, err
	}
	source := signatures.SourceDigest(signatures.Infos(files))
	s.mu.Lock()
	latest, floor := s.latest, s.floor()
	s.mu.Unlock()
	// Unchanged rules are not signed again, even under a reservation:
	// a bundle built by hand is meant to run until the rules change.
	if want == 0 && latest != nil && latest.source == source {
		return latest.m, false, nil
	}
	v := floor + 1
	if want != 0 {
		if err := s.freeVersion(want, floor); err != nil {
			return nil, false, err
		}
		v = want
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	n, err := s.cfg.Check(files)
	if err != nil {
		s.log.Error("sigserver: rules do not compile: not signed", "rules", s.cfg.RulesDir, "err", err)
		return nil, false, fmt.Errorf("%w: %w", signatures.ErrCompile, err)
	}
	data, m, err := signatures.Build(signatures.BuildOptions{
		Name:      s.cfg.Name,
		Version:   v,
		MinEngine: s.cfg.MinEngine,
		Externals: signatures.ReferencedExternals(files, s.cfg.Externals),
	}, files, s.cfg.Key)
	if err != nil {
		return nil, false, err
	}
	if err := statefile.WriteAtomic(filepath.Join(s.cfg.StateDir, bundlesDir), bundleFile(v), data); err != nil {
		return nil, false, fmt.Errorf("sigserver: %w", err)
	}
	s.mu.Lock()
	s.latest = &built{m: m, data: data, source: source, sum: sha(data)}
	s.versions = append(s.versions, v)
	for _, a := range s.apps {
		poke(a.wake)
	}
	s.mu.Unlock()
	s.log.Info("sigserver: built bundle", "name", m.Name, "version", v, "files", len(files), "rules", n, "bytes", len(data), "took", time.Since(start))
	return m, true, nil
}

// fingerprint summarizes the rules folder by names, sizes and times, so
// that polling reads the files only after something changed.
func (s *Server) fingerprint() string {
	h := sha256.New()
	filepath.WalkDir(s.cfg.RulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(h, "err %s %v\n", p, err)
			return nil
		}
		if info, err := d.Info(); err == nil {
			fmt.Fprintf(h, "%s\x00%d\x00%d\x00%v\n", p, info.Size(), info.ModTime().UnixNano(), info.Mode())
		}
		return nil
	})
	return string(h.Sum(nil))
}

// Serve listens for the API, builds when the rules folder changes and
// pushes new versions until ctx ends; it then shuts the listener down
// gracefully (10 s at most) and returns nil. A failure to listen, and a
// plain-HTTP listener that is not loopback without AllowPlainHTTP
// (ErrPlainHTTP), are returned at once.
func (s *Server) Serve(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Addr); err != nil {
			return fmt.Errorf("sigserver: %w", err)
		}
	}
	switch {
	case s.cfg.TLSConfig != nil:
		ln = tls.NewListener(ln, s.cfg.TLSConfig)
	case !httpx.IsLoopback(ln.Addr()) && !s.cfg.AllowPlainHTTP:
		ln.Close()
		return fmt.Errorf("%w: %s is reachable from other machines; give a TLS configuration, or allow plain HTTP behind a proxy that terminates TLS", ErrPlainHTTP, ln.Addr())
	case !httpx.IsLoopback(ln.Addr()):
		s.log.Warn("sigserver: plain HTTP on a listener other machines reach, as allowed: only behind a proxy that terminates TLS", "addr", ln.Addr())
	default:
		s.log.Info("sigserver: plain HTTP on loopback", "addr", ln.Addr())
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      5 * time.Minute, // a 64 MiB bundle over a slow link
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.runCtx = ctx
	for _, a := range s.apps {
		s.startPusher(a)
	}
	s.mu.Unlock()

	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	s.log.Info("sigserver: listening", "addr", ln.Addr(), "rules", s.cfg.RulesDir)

	var poller sync.WaitGroup
	poller.Go(func() { s.poll(ctx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("sigserver: %w", err)
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	hs.Shutdown(sctx)
	scancel()
	if err == nil {
		<-served // http.ErrServerClosed once Shutdown closed the listener
	}
	poller.Wait()
	s.pushers.Wait()
	s.mu.Lock()
	s.runCtx = nil
	for _, a := range s.apps {
		a.running = false
	}
	s.mu.Unlock()
	return err
}

// poll builds at start and whenever the folder's fingerprint changes.
// A set that fails to compile is logged once, not rebuilt until the folder
// changes again.
func (s *Server) poll(ctx context.Context) {
	var last string
	for {
		if fp := s.fingerprint(); fp != last {
			last = fp
			if _, _, err := s.Build(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("sigserver: build failed", "rules", s.cfg.RulesDir, "reason", signatures.Reason(err), "err", err)
			}
		}
		if s.cfg.PollInterval < 0 {
			return
		}
		t := time.NewTimer(s.cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
