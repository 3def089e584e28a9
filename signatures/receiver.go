package signatures

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Compiler compiles a bundle's rule files into the rules an engine scans
// with, and counts them. Each File's Path should be its namespace, so that
// rules of different files may share names. snapscan passes a function
// over scanner.CompileSources; its error should say which file and line is
// wrong. It must be safe to call from any goroutine, and may be slow:
// Receiver calls it once per accepted bundle, never while a scan waits.
type Compiler[R any] func(files []File) (rules R, ruleCount int, err error)

// Active is an installed rule set. It is immutable: a scan that took it
// from Receiver.Current uses exactly these rules to its end, whatever is
// installed meanwhile.
type Active[R any] struct {
	Manifest  Manifest
	KeyID     string // the key that signed it
	Digest    string // SHA-256 of the bundle file, hex
	Rules     R
	RuleCount int
	Installed time.Time
}

// Update is the event a new rule set sends; the queue schedules rescans
// from it.
type Update struct {
	Name      string
	Version   uint64
	RuleCount int
	Previous  uint64 // the version it replaced, 0 if none
}

// ReceiverConfig configures a Receiver.
type ReceiverConfig[R any] struct {
	// StateDir holds the active bundle (created 0700 if missing).
	StateDir string
	// Keys are the trusted signing keys; SetKeys replaces them.
	Keys *KeySet
	// Compile turns rule files into rules; required.
	Compile Compiler[R]
	// Name, when set, is the only signature set accepted. When empty,
	// the first set installed fixes the name.
	Name string
	// EngineVersion is this engine's version, compared with a bundle's
	// min_engine; empty accepts any.
	EngineVersion string
	// Externals are the external variables this engine defines; a bundle
	// needing another is refused. Nil skips the check.
	Externals []string
	// Limits bound bundle reading.
	Limits Limits
	// OnUpdate is called after each new set became active, from the
	// goroutine that installed it; it must not block for long.
	OnUpdate func(Update)
	// Logger receives accepted and rejected bundles; nil discards.
	Logger *slog.Logger

	// Pulling (Pull, Serve): the central server's base URL
	// ("https://central:8443"), the bearer token for it, this
	// appliance's ID, and the HTTP client (its TLS roots); default
	// http.DefaultClient is not used: a client with a 60 s timeout is.
	ServerURL   string
	ServerToken string
	ApplianceID string
	Client      *http.Client
	// PullInterval is the mean time between pulls (default 5 min,
	// each wait drawn within ±20% so a fleet does not pull in step).
	PullInterval time.Duration
	// ReceiverURL, when set, is the URL where this appliance's push
	// handler listens, and ReceiverToken the bearer token the server
	// must send there: Serve registers both with the server.
	ReceiverURL   string
	ReceiverToken string
}

// Receiver installs bundles on an appliance: it verifies, compiles,
// persists and activates them. Its methods are safe for concurrent use;
// installs are serialized.
type Receiver[R any] struct {
	cfg    ReceiverConfig[R]
	log    *slog.Logger
	keys   atomic.Pointer[KeySet]
	active atomic.Pointer[Active[R]]

	mu    sync.Mutex // serializes installs; guards floor and name
	floor uint64     // highest version ever active here
	name  string
}

// State files.
const (
	activeFile = "active.bundle"
	stateFile  = "state.json"
)

// receiverState survives restarts even when the active bundle does not
// (its key was since removed): the floor against rollback.
type receiverState struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
}

// NewReceiver makes a Receiver and loads the last persisted bundle,
// verified and compiled again, so that a restarted appliance scans with
// its last good set before it takes work. A persisted bundle that no
// longer verifies (its key was removed, the file damaged) is logged and
// left out: Current is then nil until a bundle is installed. Errors are
// returned only for an unusable state folder.
func NewReceiver[R any](cfg ReceiverConfig[R]) (*Receiver[R], error) {
	if cfg.Compile == nil {
		return nil, errors.New("signatures: receiver needs a Compiler")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("signatures: receiver needs a state folder")
	}
	if cfg.Keys == nil {
		return nil, errors.New("signatures: receiver needs trusted keys")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 60 * time.Second}
	}
	if cfg.PullInterval <= 0 {
		cfg.PullInterval = 5 * time.Minute
	}
	cfg.Limits = cfg.Limits.withDefaults()
	r := &Receiver[R]{cfg: cfg, log: cfg.Logger, name: cfg.Name}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.keys.Store(cfg.Keys)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("signatures: state folder: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(cfg.StateDir, stateFile)); err == nil {
		var st receiverState
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("signatures: %s: %w", filepath.Join(cfg.StateDir, stateFile), err)
		}
		r.floor = st.Version
		if r.name == "" {
			r.name = st.Name
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("signatures: state: %w", err)
	}
	path := filepath.Join(cfg.StateDir, activeFile)
	data, err := readLimited(path, cfg.Limits.MaxBundleSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.log.Info("signatures: no persisted bundle", "state", cfg.StateDir)
	case err != nil:
		r.log.Error("signatures: persisted bundle unreadable", "path", path, "err", err)
	default:
		b, err := ReadBundle(data, r.keys.Load(), cfg.Limits)
		var a *Active[R]
		if err == nil {
			err = r.check(&b.Manifest, true)
		}
		if err == nil {
			a, err = r.compile(b, data)
		}
		if err != nil {
			r.log.Error("signatures: persisted bundle rejected", "path", path, "reason", Reason(err), "err", err)
			break
		}
		r.active.Store(a)
		r.floor = max(r.floor, a.Manifest.Version)
		r.name = a.Manifest.Name
		r.log.Info("signatures: restored bundle", "name", a.Manifest.Name, "version", a.Manifest.Version, "rules", a.RuleCount, "key", a.KeyID)
	}
	return r, nil
}

// readLimited reads a file of at most max bytes.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: %s: more than %d bytes", ErrTooLarge, path, max)
	}
	return data, nil
}

// Current returns the active set, or nil before any was installed. A scan
// should call it once and use the result to its end.
func (r *Receiver[R]) Current() *Active[R] { return r.active.Load() }

// SetKeys replaces the trusted keys. The active set stays active even if
// its key is no longer trusted; it is then not restored after a restart.
func (r *Receiver[R]) SetKeys(keys *KeySet) { r.keys.Store(keys) }

// check verifies what a bundle needs of this appliance beyond its
// signature: its set name, engine version and externals.
func (r *Receiver[R]) check(m *Manifest, restoring bool) error {
	if !restoring && r.name != "" && m.Name != r.name {
		return fmt.Errorf("%w: bundle is %q, this appliance runs %q", ErrWrongName, m.Name, r.name)
	}
	if r.cfg.EngineVersion != "" && CompareEngine(m.MinEngine, r.cfg.EngineVersion) > 0 {
		return fmt.Errorf("%w: %s version %d needs engine %s, this is %s", ErrIncompatible, m.Name, m.Version, m.MinEngine, r.cfg.EngineVersion)
	}
	if r.cfg.Externals != nil {
		for _, e := range m.Externals {
			if !contains(r.cfg.Externals, e) {
				return fmt.Errorf("%w: %s version %d reads external %q, which this engine does not define", ErrIncompatible, m.Name, m.Version, e)
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (r *Receiver[R]) compile(b *Bundle, data []byte) (*Active[R], error) {
	rules, n, err := r.cfg.Compile(b.Files)
	if err != nil {
		return nil, fmt.Errorf("%w: %s version %d: %w", ErrCompile, b.Manifest.Name, b.Manifest.Version, err)
	}
	sum := sha256.Sum256(data)
	return &Active[R]{
		Manifest:  b.Manifest,
		KeyID:     b.KeyID,
		Digest:    hex.EncodeToString(sum[:]),
		Rules:     rules,
		RuleCount: n,
		Installed: time.Now(),
	}, nil
}

// Install verifies a bundle (trusted key, files matching the manifest,
// set name, engine version and externals), requires its version to be
// strictly higher than any installed here before (no rollback, no
// replay), compiles it, persists it and makes it the active set. On any
// refusal the active set stays, the reason is logged and returned: the
// error wraps one of the Err* sentinels (ErrCompile also wraps the
// compiler's error). A bundle equal to the active one is refused with
// ErrRollback; IsActive tells a caller that it was merely a repeat.
func (r *Receiver[R]) Install(ctx context.Context, data []byte) (*Active[R], error) {
	a, prev, err := r.install(ctx, data)
	if err != nil {
		if errors.Is(err, ErrRollback) && r.IsActive(data) {
			// A push and a pull of one version crossing: not an attack.
			r.log.Debug("signatures: bundle already active", "err", err)
			return nil, err
		}
		r.log.Warn("signatures: bundle rejected", "reason", Reason(err), "err", err)
		return nil, err
	}
	u := Update{Name: a.Manifest.Name, Version: a.Manifest.Version, RuleCount: a.RuleCount}
	if prev != nil {
		u.Previous = prev.Manifest.Version
	}
	r.log.Info("signatures: bundle installed", "name", u.Name, "version", u.Version, "previous", u.Previous, "rules", u.RuleCount, "key", a.KeyID)
	if r.cfg.OnUpdate != nil {
		r.cfg.OnUpdate(u)
	}
	return a, nil
}

func (r *Receiver[R]) install(ctx context.Context, data []byte) (a, prev *Active[R], err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if int64(len(data)) > r.cfg.Limits.MaxBundleSize {
		return nil, nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrTooLarge, len(data), r.cfg.Limits.MaxBundleSize)
	}
	b, err := ReadBundle(data, r.keys.Load(), r.cfg.Limits)
	if err != nil {
		return nil, nil, err
	}
	// Version first: a replayed bundle is refused before it costs a
	// compilation.
	if v := b.Manifest.Version; v <= r.floor {
		return nil, nil, fmt.Errorf("%w: %s version %d, active here: %d", ErrRollback, b.Manifest.Name, v, r.floor)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := r.check(&b.Manifest, false); err != nil {
		return nil, nil, err
	}
	a, err = r.compile(b, data)
	if err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(r.cfg.StateDir, activeFile, data); err != nil {
		return nil, nil, err
	}
	st, _ := json.Marshal(receiverState{Name: a.Manifest.Name, Version: a.Manifest.Version})
	if err := writeAtomic(r.cfg.StateDir, stateFile, st); err != nil {
		return nil, nil, err
	}
	prev = r.active.Swap(a)
	r.floor = a.Manifest.Version
	r.name = a.Manifest.Name
	return a, prev, nil
}

// IsActive reports whether data is the active bundle, byte for byte: a
// repeated push of what is already installed, which callers acknowledge
// rather than report as a replay.
func (r *Receiver[R]) IsActive(data []byte) bool {
	a := r.Current()
	if a == nil {
		return false
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]) == a.Digest
}

// writeAtomic replaces dir/name with data: a temporary file is written
// and synced, renamed over the old one and the folder synced, so a crash
// leaves either the old or the new file, whole.
func writeAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("signatures: persist %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("signatures: persist %s: %w", name, err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("signatures: persist %s: sync folder: %w", name, err)
		}
	}
	return nil
}

// Status is what an appliance answers to a push, and what it reports of
// its active set.
type Status struct {
	Appliance string `json:"appliance,omitempty"`
	Name      string `json:"name,omitempty"`
	Version   uint64 `json:"version"` // the active version after the request, 0 if none
	RuleCount int    `json:"rule_count"`
	// Result is "installed", "already_active" or "rejected".
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"` // Reason(err) when rejected
	Error  string `json:"error,omitempty"`
}

func (r *Receiver[R]) status(result string, err error) Status {
	s := Status{Appliance: r.cfg.ApplianceID, Result: result}
	if a := r.Current(); a != nil {
		s.Name, s.Version, s.RuleCount = a.Manifest.Name, a.Manifest.Version, a.RuleCount
	}
	if err != nil {
		s.Reason = Reason(err)
		s.Error = err.Error()
	}
	return s
}

// statusCode maps a refusal to an HTTP status. The server retries only
// 5xx, 408 and 429: other refusals will not change by sending again.
func statusCode(err error) int {
	switch {
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrRollback):
		return http.StatusConflict
	case errors.Is(err, ErrUntrustedKey), errors.Is(err, ErrBadSignature):
		return http.StatusForbidden
	case errors.Is(err, ErrHashMismatch), errors.Is(err, ErrMalformed):
		return http.StatusBadRequest
	case errors.Is(err, ErrCompile), errors.Is(err, ErrIncompatible), errors.Is(err, ErrWrongName):
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

// Handler returns the push endpoint: a POST whose body is a bundle. It
// answers a Status in JSON: 200 when installed or already active, 409 for
// an older or equal version, 403 for an untrusted key or bad signature,
// 400 for a malformed bundle, 413 when too large, 422 when it does not
// compile or does not fit this engine, 500 when it could not be
// persisted. It does no authentication: mount it behind the appliance's
// own, or wrap it with RequireBearer.
func (r *Receiver[R]) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST a bundle"})
			return
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.cfg.Limits.MaxBundleSize))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				err = fmt.Errorf("%w: body larger than %d bytes", ErrTooLarge, mbe.Limit)
				r.log.Warn("signatures: pushed bundle rejected", "remote", req.RemoteAddr, "reason", Reason(err), "err", err)
				writeJSON(w, statusCode(err), r.status("rejected", err))
				return
			}
			r.log.Warn("signatures: push: reading body", "remote", req.RemoteAddr, "err", err)
			writeJSON(w, http.StatusBadRequest, r.status("rejected", fmt.Errorf("%w: reading body: %v", ErrMalformed, err)))
			return
		}
		if _, err := r.Install(req.Context(), data); err != nil {
			if errors.Is(err, ErrRollback) && r.IsActive(data) {
				writeJSON(w, http.StatusOK, r.status("already_active", nil))
				return
			}
			code := statusCode(err)
			if code == http.StatusInternalServerError {
				// The detail (paths of the state folder) stays in the log.
				writeJSON(w, code, r.status("rejected", errors.New("internal error")))
				return
			}
			writeJSON(w, code, r.status("rejected", err))
			return
		}
		writeJSON(w, http.StatusOK, r.status("installed", nil))
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Headers an appliance sends with each pull, by which the server tracks it.
const (
	HeaderAppliance = "X-Snapscan-Appliance"
	HeaderVersion   = "X-Snapscan-Version"
)

// Pull asks the central server for a bundle newer than the active one and
// installs it. It reports whether a new set became active. A server with
// nothing newer is not an error.
func (r *Receiver[R]) Pull(ctx context.Context) (bool, error) {
	if r.cfg.ServerURL == "" {
		return false, errors.New("signatures: pull: no server URL configured")
	}
	var have uint64
	if a := r.Current(); a != nil {
		have = a.Manifest.Version
	}
	u, err := url.JoinPath(r.cfg.ServerURL, "/v1/bundles/latest")
	if err != nil {
		return false, fmt.Errorf("signatures: pull: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"?have="+strconv.FormatUint(have, 10), nil)
	if err != nil {
		return false, fmt.Errorf("signatures: pull: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.ServerToken)
	req.Header.Set(HeaderAppliance, r.cfg.ApplianceID)
	req.Header.Set(HeaderVersion, strconv.FormatUint(have, 10))
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("signatures: pull: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusNotFound:
		return false, nil
	case http.StatusOK:
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, fmt.Errorf("signatures: pull %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.Limits.MaxBundleSize+1))
	if err != nil {
		return false, fmt.Errorf("signatures: pull %s: %w", u, err)
	}
	if _, err := r.Install(ctx, data); err != nil {
		if errors.Is(err, ErrRollback) && r.IsActive(data) {
			return false, nil
		}
		return false, fmt.Errorf("signatures: pulled bundle: %w", err)
	}
	return true, nil
}

// register tells the server where to push to this appliance.
func (r *Receiver[R]) register(ctx context.Context) error {
	body, _ := json.Marshal(Appliance{ID: r.cfg.ApplianceID, URL: r.cfg.ReceiverURL, Token: r.cfg.ReceiverToken})
	u, err := url.JoinPath(r.cfg.ServerURL, "/v1/appliances")
	if err != nil {
		return fmt.Errorf("signatures: register: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("signatures: register: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.ServerToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("signatures: register: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("signatures: register at %s: %s", u, resp.Status)
	}
	return nil
}

// Serve registers with the central server (when ReceiverURL is set) and
// pulls at start and then every PullInterval (±20%), retrying failures
// sooner with backoff, until ctx ends; it then returns nil. Failures are
// logged, never fatal: the active set stays.
func (r *Receiver[R]) Serve(ctx context.Context) error {
	if r.cfg.ServerURL == "" {
		<-ctx.Done()
		return nil
	}
	registered := r.cfg.ReceiverURL == ""
	bo := backoff{min: time.Second, max: r.cfg.PullInterval}
	for {
		if !registered {
			// A failed registration does not stop pulls: the set
			// still arrives, only later.
			if err := r.register(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.log.Warn("signatures: registration failed", "server", r.cfg.ServerURL, "err", err)
			} else {
				registered = true
			}
		}
		_, err := r.Pull(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn("signatures: pull failed", "server", r.cfg.ServerURL, "reason", Reason(err), "err", err)
		}
		wait := jitter(r.cfg.PullInterval)
		if err != nil || !registered {
			wait = bo.next()
		} else {
			bo.reset()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// jitter returns d scaled by a random factor in [0.8, 1.2).
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// backoff is exponential backoff with full jitter.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// Half fixed, half random: never zero, never in step with others.
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }
