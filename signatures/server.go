package signatures

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
)

// Appliance is a push target: an appliance's ID, the URL of its push
// handler and the bearer token that handler expects.
type Appliance struct {
	ID    string `json:"id"`
	URL   string `json:"url"`
	Token string `json:"token,omitempty"`
}

// ApplianceStatus is what the server knows of an appliance.
type ApplianceStatus struct {
	ID  string `json:"id"`
	URL string `json:"url,omitempty"` // empty for appliances known only by their pulls
	// Version is the version the appliance last reported running (by a
	// push acknowledgement or a pull), 0 if unknown.
	Version  uint64    `json:"version"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// LastError is the last push failure, cleared by a success; Reason
	// is its code when the appliance refused the bundle.
	LastError string `json:"last_error,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// Key signs every bundle built.
	Key ed25519.PrivateKey
	// Name is the signature set's name.
	Name string
	// RulesDir holds the rule sources (.yar, .yara, recursively).
	RulesDir string
	// StateDir keeps every bundle built (bundles/) and the registered
	// appliances (appliances.json); created 0700 if missing.
	StateDir string
	// Check compiles the rules and counts them; a set it refuses is
	// never signed. Required.
	Check func(files []File) (ruleCount int, err error)
	// MinEngine is written in each manifest (default "0").
	MinEngine string
	// Externals are the engine's external variables; those the rules
	// mention are listed in each manifest.
	Externals []string
	// Tokens are the bearer tokens the API accepts (at least one).
	Tokens []string
	// Listener, or else Addr, is where Serve listens; with TLSConfig
	// it speaks HTTPS (without it, plain HTTP: only behind a proxy
	// that terminates TLS).
	Listener  net.Listener
	Addr      string
	TLSConfig *tls.Config
	// Appliances are configured push targets; more register through the
	// API.
	Appliances []Appliance
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
	cfg  ServerConfig
	log  *slog.Logger
	keys *KeySet

	buildMu sync.Mutex // serializes builds

	mu       sync.Mutex
	latest   *built
	versions []uint64 // every version kept, ascending
	apps     map[string]*appState
	runCtx   context.Context // set while Serve runs
	pushers  sync.WaitGroup
}

// built is a bundle the server made.
type built struct {
	m      *Manifest
	data   []byte
	digest string // of the rule sources: SourceDigest(m.Files)
}

type appState struct {
	Appliance
	version  uint64
	lastSeen time.Time
	lastErr  string
	reason   string
	refused  uint64 // a version the appliance refused for good: not retried
	wake     chan struct{}
	running  bool
}

const bundlesDir = "bundles"

func bundleFile(v uint64) string { return fmt.Sprintf("%020d.bundle", v) }

// NewServer makes a Server and loads the bundles and registrations kept in
// its state folder; the latest bundle is verified again with its key.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case len(cfg.Key) != ed25519.PrivateKeySize:
		return nil, fmt.Errorf("%w: server needs an Ed25519 signing key", ErrKey)
	case !nameRE.MatchString(cfg.Name):
		return nil, fmt.Errorf("signatures: server: set name %q: want 1-%d of [A-Za-z0-9._-]", cfg.Name, maxNameLen)
	case cfg.Check == nil:
		return nil, errors.New("signatures: server needs a Check function")
	case cfg.RulesDir == "" || cfg.StateDir == "":
		return nil, errors.New("signatures: server needs a rules folder and a state folder")
	case len(cfg.Tokens) == 0 || slices.Contains(cfg.Tokens, ""):
		return nil, errors.New("signatures: server needs non-empty API tokens")
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
	s := &Server{
		cfg:  cfg,
		log:  cfg.Logger,
		keys: NewKeySet(cfg.Key.Public().(ed25519.PublicKey)),
		apps: map[string]*appState{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(cfg.StateDir, bundlesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("signatures: server state: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("signatures: server state: %w", err)
	}
	for _, e := range ents {
		v, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), ".bundle"), 10, 64)
		if err == nil && e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".bundle") && e.Name() == bundleFile(v) {
			s.versions = append(s.versions, v)
		}
	}
	slices.Sort(s.versions)
	if n := len(s.versions); n > 0 {
		v := s.versions[n-1]
		path := filepath.Join(dir, bundleFile(v))
		data, err := readLimited(path, DefaultMaxBundleSize)
		if err != nil {
			return nil, fmt.Errorf("signatures: server state: %w", err)
		}
		b, err := ReadBundle(data, s.keys, Limits{})
		if err != nil {
			return nil, fmt.Errorf("signatures: server state: %s: %w", path, err)
		}
		if b.Manifest.Name != cfg.Name || b.Manifest.Version != v {
			return nil, fmt.Errorf("signatures: server state: %s holds %s version %d", path, b.Manifest.Name, b.Manifest.Version)
		}
		s.latest = &built{m: &b.Manifest, data: data, digest: SourceDigest(b.Manifest.Files)}
	}
	var saved []Appliance
	if b, err := os.ReadFile(filepath.Join(cfg.StateDir, "appliances.json")); err == nil {
		if err := json.Unmarshal(b, &saved); err != nil {
			return nil, fmt.Errorf("signatures: server state: appliances.json: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("signatures: server state: %w", err)
	}
	for _, a := range append(saved, cfg.Appliances...) {
		if err := validAppliance(a, true); err != nil {
			return nil, err
		}
		s.apps[a.ID] = &appState{Appliance: a, wake: make(chan struct{}, 1)}
	}
	return s, nil
}

func validAppliance(a Appliance, push bool) error {
	if !nameRE.MatchString(a.ID) {
		return fmt.Errorf("signatures: appliance id %q: want 1-%d of [A-Za-z0-9._-]", a.ID, maxNameLen)
	}
	if push && !strings.HasPrefix(a.URL, "https://") && !strings.HasPrefix(a.URL, "http://") {
		return fmt.Errorf("signatures: appliance %s: push URL %q is not http(s)", a.ID, a.URL)
	}
	return nil
}

// Latest returns the manifest of the newest bundle, nil if none.
func (s *Server) Latest() *Manifest {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil {
		return nil
	}
	return s.latest.m
}

// Appliances returns what the server knows of each appliance, by ID.
func (s *Server) Appliances() []ApplianceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ApplianceStatus, 0, len(s.apps))
	for _, a := range s.apps {
		out = append(out, ApplianceStatus{ID: a.ID, URL: a.URL, Version: a.version, LastSeen: a.lastSeen, LastError: a.lastErr, Reason: a.reason})
	}
	slices.SortFunc(out, func(a, b ApplianceStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Register adds or updates a push target, keeps it in the state folder
// and, while Serve runs, pushes the latest bundle to it.
func (s *Server) Register(a Appliance) error {
	if err := validAppliance(a, true); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.apps[a.ID]
	if !ok {
		st = &appState{wake: make(chan struct{}, 1)}
		s.apps[a.ID] = st
	}
	st.Appliance = a
	st.refused = 0
	var list []Appliance
	for _, x := range s.apps {
		if x.URL != "" {
			list = append(list, x.Appliance)
		}
	}
	slices.SortFunc(list, func(a, b Appliance) int { return strings.Compare(a.ID, b.ID) })
	b, _ := json.MarshalIndent(list, "", "\t")
	// The file holds the appliances' push tokens: writeAtomic's
	// CreateTemp makes it 0600.
	if err := writeAtomic(s.cfg.StateDir, "appliances.json", b); err != nil {
		return err
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

// Build builds a new version from the rules folder, unless its content
// equals the latest bundle's (then it returns the latest and false).
// Rules that do not compile are refused with an error wrapping ErrCompile
// and the Check function's error. The new bundle is kept on disk and
// pushed to every appliance.
func (s *Server) Build(ctx context.Context) (*Manifest, bool, error) {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	start := time.Now()
	files, err := LoadRuleFiles(s.cfg.RulesDir)
	if err != nil {
		return nil, false, err
	}
	digest := SourceDigest(Infos(files))
	s.mu.Lock()
	latest := s.latest
	s.mu.Unlock()
	if latest != nil && latest.digest == digest {
		return latest.m, false, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	n, err := s.cfg.Check(files)
	if err != nil {
		s.log.Error("signatures: rules do not compile: not signed", "rules", s.cfg.RulesDir, "err", err)
		return nil, false, fmt.Errorf("%w: %w", ErrCompile, err)
	}
	var v uint64 = 1
	if latest != nil {
		v = latest.m.Version + 1
	}
	data, m, err := Build(BuildOptions{
		Name:      s.cfg.Name,
		Version:   v,
		MinEngine: s.cfg.MinEngine,
		Externals: ReferencedExternals(files, s.cfg.Externals),
	}, files, s.cfg.Key)
	if err != nil {
		return nil, false, err
	}
	if err := writeAtomic(filepath.Join(s.cfg.StateDir, bundlesDir), bundleFile(v), data); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	s.latest = &built{m: m, data: data, digest: digest}
	s.versions = append(s.versions, v)
	for _, a := range s.apps {
		poke(a.wake)
	}
	s.mu.Unlock()
	s.log.Info("signatures: built bundle", "name", m.Name, "version", v, "files", len(files), "rules", n, "bytes", len(data), "took", time.Since(start))
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
// gracefully (10 s at most) and returns nil. A failure to listen is
// returned at once.
func (s *Server) Serve(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Addr); err != nil {
			return fmt.Errorf("signatures: server: %w", err)
		}
	}
	if s.cfg.TLSConfig != nil {
		ln = tls.NewListener(ln, s.cfg.TLSConfig)
	} else {
		s.log.Warn("signatures: server speaks plain HTTP: put it behind TLS", "addr", ln.Addr())
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
	s.log.Info("signatures: server listening", "addr", ln.Addr(), "rules", s.cfg.RulesDir)

	var poller sync.WaitGroup
	poller.Go(func() { s.poll(ctx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("signatures: server: %w", err)
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	hs.Shutdown(sctx)
	scancel()
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
				s.log.Error("signatures: build failed", "rules", s.cfg.RulesDir, "reason", Reason(err), "err", err)
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

// startPusher starts a's push loop if Serve runs and none runs yet;
// s.mu is held.
func (s *Server) startPusher(a *appState) {
	if s.runCtx == nil || a.running || a.URL == "" {
		return
	}
	a.running = true
	ctx := s.runCtx
	s.pushers.Go(func() { s.pushLoop(ctx, a) })
}

// pushLoop pushes the latest bundle to one appliance until it runs that
// version or refuses it for good, retrying transient failures with
// exponential backoff and jitter; then it waits for a new version.
func (s *Server) pushLoop(ctx context.Context, a *appState) {
	bo := backoff{min: s.cfg.RetryMin, max: s.cfg.RetryMax}
	for {
		s.mu.Lock()
		latest, have, refused, target := s.latest, a.version, a.refused, a.Appliance
		s.mu.Unlock()
		if latest == nil || have >= latest.m.Version || refused == latest.m.Version {
			select {
			case <-ctx.Done():
				return
			case <-a.wake:
				continue
			}
		}
		st, code, err := s.push(ctx, target, latest.m.Version, latest.data)
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		if st != nil && st.Version > 0 {
			a.version = st.Version
			a.lastSeen = time.Now()
		}
		switch {
		case err == nil:
			a.lastErr, a.reason = "", ""
		case retryable(code):
			a.lastErr, a.reason = err.Error(), ""
		default:
			a.lastErr, a.reason = err.Error(), ""
			if st != nil {
				a.reason = st.Reason
			}
			if a.version < latest.m.Version {
				a.refused = latest.m.Version
			}
		}
		if err == nil && a.version < latest.m.Version {
			// Acknowledged without reporting the version: pushing again
			// would loop; the appliance's next pull will tell.
			a.refused = latest.m.Version
			a.lastErr = fmt.Sprintf("acknowledged version %d without running it", latest.m.Version)
		}
		s.mu.Unlock()
		if err == nil || !retryable(code) {
			if err != nil {
				s.log.Error("signatures: appliance refused bundle", "appliance", target.ID, "version", latest.m.Version, "status", code, "err", err)
			} else {
				s.log.Info("signatures: appliance runs bundle", "appliance", target.ID, "version", st.Version, "result", st.Result)
			}
			bo.reset()
			continue
		}
		wait := bo.next()
		s.log.Warn("signatures: push failed, will retry", "appliance", target.ID, "version", latest.m.Version, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-a.wake: // a new version or a new URL: try at once
			t.Stop()
		}
	}
}

// retryable reports whether a push that ended with HTTP status code (0
// for no answer) may succeed when sent again.
func retryable(code int) bool {
	return code == 0 || code >= 500 || code == http.StatusRequestTimeout ||
		code == http.StatusTooManyRequests || code == http.StatusUnauthorized
}

// push sends one bundle to an appliance and decodes its Status.
func (s *Server) push(ctx context.Context, a Appliance, version uint64, data []byte) (*Status, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL, bytes.NewReader(data))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var st Status
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(body, &st) != nil {
		st = Status{Error: string(bytes.TrimSpace(body[:min(len(body), 512)]))}
	}
	if resp.StatusCode/100 == 2 {
		return &st, resp.StatusCode, nil
	}
	if resp.StatusCode == http.StatusConflict && st.Version >= version {
		// Already runs this version or a later one: nothing to push.
		return &st, resp.StatusCode, nil
	}
	err = fmt.Errorf("push to %s: %s: %s", a.URL, resp.Status, st.Error)
	if sentinel := reasonError(st.Reason); sentinel != nil {
		err = fmt.Errorf("%w: push to %s: %s: %s", sentinel, a.URL, resp.Status, st.Error)
	}
	return &st, resp.StatusCode, err
}

// seen records a pull: the appliance's ID and the version it runs.
func (s *Server) seen(id string, version uint64) {
	if !nameRE.MatchString(id) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[id]
	if !ok {
		if len(s.apps) >= maxAppliances {
			return
		}
		a = &appState{Appliance: Appliance{ID: id}, wake: make(chan struct{}, 1)}
		s.apps[id] = a
	}
	a.version = version
	a.lastSeen = time.Now()
	poke(a.wake)
}

// maxAppliances bounds the table that pulls from unknown IDs add to.
const maxAppliances = 100000

// httpError is a handler's failure: Code and Msg go to the client, Err
// (which may name files and keys) only to the log.
type httpError struct {
	Code int
	Msg  string
	Err  error
}

func (e *httpError) Error() string { return e.Msg + ": " + fmt.Sprint(e.Err) }

type handler func(w http.ResponseWriter, r *http.Request) error

// Handler returns the server's API (API.md), authenticated by bearer
// token, on its own ServeMux.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h handler) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := h(w, r); err != nil {
				var he *httpError
				if !errors.As(err, &he) {
					he = &httpError{Code: http.StatusInternalServerError, Msg: "internal error", Err: err}
				}
				s.log.Warn("signatures: request failed", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", he.Code, "err", he.Err)
				writeJSON(w, he.Code, map[string]string{"error": he.Msg})
			}
		}))
	}
	handle("POST /v1/build", s.handleBuild)
	handle("GET /v1/bundles", s.handleList)
	handle("GET /v1/bundles/latest", s.handleLatest)
	handle("GET /v1/bundles/{version}", s.handleVersion)
	handle("GET /v1/appliances", func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, s.Appliances())
		return nil
	})
	handle("POST /v1/appliances", s.handleRegister)
	return RequireBearer(s.cfg.Tokens, mux, s.log)
}

func (s *Server) handleBuild(w http.ResponseWriter, r *http.Request) error {
	m, builtNew, err := s.Build(r.Context())
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrCompile) {
			// The operator asked for this build: the compiler's file
			// and line are what they need.
			code = http.StatusUnprocessableEntity
			writeJSON(w, code, map[string]string{"error": err.Error(), "reason": Reason(err)})
			return nil
		}
		return &httpError{Code: code, Msg: "build failed", Err: err}
	}
	writeJSON(w, http.StatusOK, map[string]any{"built": builtNew, "manifest": m})
	return nil
}

// BundleInfo is one entry of GET /v1/bundles.
type BundleInfo struct {
	Version uint64 `json:"version"`
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) error {
	s.mu.Lock()
	list := make([]BundleInfo, len(s.versions))
	for i, v := range s.versions {
		list[i] = BundleInfo{Version: v}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleLatest(w http.ResponseWriter, r *http.Request) error {
	var have uint64
	if h := r.URL.Query().Get("have"); h != "" {
		v, err := strconv.ParseUint(h, 10, 64)
		if err != nil {
			return &httpError{Code: http.StatusBadRequest, Msg: "have: not a version", Err: err}
		}
		have = v
	}
	if id := r.Header.Get(HeaderAppliance); id != "" {
		v, err := strconv.ParseUint(r.Header.Get(HeaderVersion), 10, 64)
		if err == nil {
			s.seen(id, v)
		}
	}
	s.mu.Lock()
	latest := s.latest
	s.mu.Unlock()
	switch {
	case latest == nil:
		return &httpError{Code: http.StatusNotFound, Msg: "no bundle built yet"}
	case latest.m.Version <= have:
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeBundle(w, latest.m.Version, latest.data)
	return nil
}

func writeBundle(w http.ResponseWriter, v uint64, data []byte) {
	w.Header().Set("Content-Type", "application/vnd.snapscan.bundle")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set(HeaderVersion, strconv.FormatUint(v, 10))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) error {
	v, err := strconv.ParseUint(r.PathValue("version"), 10, 64)
	if err != nil {
		return &httpError{Code: http.StatusBadRequest, Msg: "not a version", Err: err}
	}
	s.mu.Lock()
	_, known := slices.BinarySearch(s.versions, v)
	s.mu.Unlock()
	if !known {
		return &httpError{Code: http.StatusNotFound, Msg: "no such version"}
	}
	data, err := readLimited(filepath.Join(s.cfg.StateDir, bundlesDir, bundleFile(v)), DefaultMaxBundleSize)
	if err != nil {
		return err
	}
	writeBundle(w, v, data)
	return nil
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) error {
	var a Appliance
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return &httpError{Code: http.StatusBadRequest, Msg: "body: want {\"id\", \"url\", \"token\"}", Err: err}
	}
	if err := s.Register(a); err != nil {
		if validAppliance(a, true) != nil {
			return &httpError{Code: http.StatusBadRequest, Msg: err.Error(), Err: err}
		}
		return err
	}
	s.log.Info("signatures: appliance registered", "appliance", a.ID, "url", a.URL)
	writeJSON(w, http.StatusOK, map[string]string{"id": a.ID})
	return nil
}

// RequireBearer wraps next so that only requests bearing one of tokens
// ("Authorization: Bearer TOKEN") reach it; others get 401. Tokens are
// compared in constant time, as SHA-256 digests so that not even their
// length leaks; refusals are logged without the token.
func RequireBearer(tokens []string, next http.Handler, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sums := make([][32]byte, 0, len(tokens))
	for _, t := range tokens {
		if t != "" {
			sums = append(sums, sha256.Sum256([]byte(t)))
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		match := 0
		for i := range sums {
			match |= subtle.ConstantTimeCompare(sum[:], sums[i][:])
		}
		if !ok || got == "" || match != 1 {
			log.Warn("signatures: unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "token_sent", ok && got != "")
			w.Header().Set("WWW-Authenticate", `Bearer realm="snapscan"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
