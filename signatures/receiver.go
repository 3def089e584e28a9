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
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/signatures/internal/backoff"
	"github.com/snapscan/snapscan/signatures/internal/statefile"
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
	// OnRefusal is called after each bundle refused (pushed or pulled:
	// bad signature, older version, does not compile...), from the
	// goroutine that refused it; it must not block for long.
	OnRefusal func(Refusal)
	// Logger receives accepted and rejected bundles; nil discards.
	Logger *slog.Logger

	// Pulling (Pull, Serve): the central server's base URL
	// ("https://central:8443"), the bearer token for it, this
	// appliance's ID, and the HTTP client (its TLS roots); default
	// http.DefaultClient is not used: a client with a 60 s timeout is.
	// With a server URL and an ID, every refusal (of a pulled or a
	// pushed bundle) is also reported to the server (Refusal).
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

	pullMu   sync.Mutex
	lastPull PullState // the last pull's outcome

	reportMu sync.Mutex
	pending  []Refusal     // refusals not yet reported to the server
	reported chan struct{} // wakes Serve to report them
}

// maxPending bounds the refusals kept for the server while it cannot be
// reached; the oldest are dropped first.
const maxPending = 16

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
	r := &Receiver[R]{cfg: cfg, log: cfg.Logger, name: cfg.Name, reported: make(chan struct{}, 1)}
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
			return nil, fmt.Errorf("signatures: state %s: %w", filepath.Join(cfg.StateDir, stateFile), err)
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

// readLimited reads a file of at most max bytes; a larger one is
// ErrTooLarge.
func readLimited(path string, max int64) ([]byte, error) {
	data, err := statefile.ReadLimited(path, max)
	var tle *statefile.TooLargeError
	if errors.As(err, &tle) {
		return nil, fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	return data, err
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
	a, prev, m, err := r.install(ctx, data)
	if err != nil {
		if errors.Is(err, ErrRollback) && r.IsActive(data) {
			// A push and a pull of one version crossing: not an attack.
			r.log.Debug("signatures: bundle already active", "err", err)
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, err // nothing was refused: the caller gave up
		}
		r.log.Warn("signatures: bundle rejected", "reason", Reason(err), "err", err)
		r.noteRefusal(data, m, err)
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

// install does Install's work; m is the bundle's verified manifest, nil
// when it did not verify.
func (r *Receiver[R]) install(ctx context.Context, data []byte) (a, prev *Active[R], m *Manifest, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if int64(len(data)) > r.cfg.Limits.MaxBundleSize {
		return nil, nil, nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrTooLarge, len(data), r.cfg.Limits.MaxBundleSize)
	}
	b, err := ReadBundle(data, r.keys.Load(), r.cfg.Limits)
	if err != nil {
		return nil, nil, nil, err
	}
	m = &b.Manifest
	// Version first: a replayed bundle is refused before it costs a
	// compilation.
	if v := m.Version; v <= r.floor {
		return nil, nil, m, fmt.Errorf("%w: %s version %d, active here: %d", ErrRollback, m.Name, v, r.floor)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, m, err
	}
	if err := r.check(m, false); err != nil {
		return nil, nil, m, err
	}
	a, err = r.compile(b, data)
	if err != nil {
		return nil, nil, m, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, m, err
	}
	if err := statefile.WriteAtomic(r.cfg.StateDir, activeFile, data); err != nil {
		return nil, nil, m, fmt.Errorf("signatures: %w", err)
	}
	st, _ := json.Marshal(receiverState{Name: a.Manifest.Name, Version: a.Manifest.Version})
	if err := statefile.WriteAtomic(r.cfg.StateDir, stateFile, st); err != nil {
		return nil, nil, m, fmt.Errorf("signatures: %w", err)
	}
	prev = r.active.Swap(a)
	r.floor = a.Manifest.Version
	r.name = a.Manifest.Name
	return a, prev, m, nil
}

// reporting reports whether refusals go to a central server.
func (r *Receiver[R]) reporting() bool { return r.cfg.ServerURL != "" && ValidName(r.cfg.ApplianceID) }

// noteRefusal tells OnRefusal, keeps a refusal for the server and wakes
// Serve to send it.
func (r *Receiver[R]) noteRefusal(data []byte, m *Manifest, err error) {
	if !r.reporting() && r.cfg.OnRefusal == nil {
		return
	}
	sum := sha256.Sum256(data)
	ref := Refusal{Digest: hex.EncodeToString(sum[:]), Reason: Reason(err), Error: err.Error(), Time: time.Now().UTC()}
	if m != nil {
		ref.Name, ref.Version = m.Name, m.Version
	}
	if a := r.Current(); a != nil {
		ref.ActiveVersion, ref.ActiveDigest = a.Manifest.Version, a.Digest
	}
	if r.cfg.OnRefusal != nil {
		r.cfg.OnRefusal(ref)
	}
	if !r.reporting() {
		return
	}
	r.reportMu.Lock()
	if len(r.pending) == maxPending {
		r.pending = r.pending[1:]
	}
	r.pending = append(r.pending, ref)
	r.reportMu.Unlock()
	select {
	case r.reported <- struct{}{}:
	default:
	}
}

// sendReports reports the pending refusals to the server, oldest first;
// those it could not send stay for the next try.
func (r *Receiver[R]) sendReports(ctx context.Context) {
	for {
		r.reportMu.Lock()
		if len(r.pending) == 0 {
			r.reportMu.Unlock()
			return
		}
		ref := r.pending[0]
		r.reportMu.Unlock()
		if err := r.report(ctx, ref); err != nil {
			if ctx.Err() == nil {
				r.log.Warn("signatures: reporting a refusal to the server failed", "server", r.cfg.ServerURL, "err", err)
			}
			return
		}
		r.reportMu.Lock()
		if len(r.pending) > 0 && r.pending[0] == ref {
			r.pending = r.pending[1:]
		}
		r.reportMu.Unlock()
	}
}

// report sends one refusal to the server.
func (r *Receiver[R]) report(ctx context.Context, ref Refusal) error {
	body, _ := json.Marshal(ref)
	u, err := url.JoinPath(r.cfg.ServerURL, "/v1/appliances", r.cfg.ApplianceID, "refusals")
	if err != nil {
		return fmt.Errorf("signatures: report: %w", err)
	}
	return r.post(ctx, u, body)
}

// post sends a JSON body to the server and reads its answer.
func (r *Receiver[R]) post(ctx context.Context, u string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("signatures: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.ServerToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("signatures: %w", err) // *url.Error names the method and URL
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("signatures: POST %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
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

func (r *Receiver[R]) response(result string, err error) PushResponse {
	s := PushResponse{Appliance: r.cfg.ApplianceID, Result: result}
	if a := r.Current(); a != nil {
		s.Name, s.Version, s.Digest, s.RuleCount = a.Manifest.Name, a.Manifest.Version, a.Digest, a.RuleCount
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
// answers a PushResponse in JSON: 200 when installed or already active,
// 409 for an older or equal version, 403 for an untrusted key or bad
// signature, 400 for a malformed bundle, 413 when too large, 422 when it
// does not compile or does not fit this engine, 500 when it could not be
// persisted. It does no authentication: mount it behind the appliance's
// own (httpx.RequireBearer).
func (r *Receiver[R]) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			httpx.WriteJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST a bundle"})
			return
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.cfg.Limits.MaxBundleSize))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				err = fmt.Errorf("%w: body larger than %d bytes", ErrTooLarge, mbe.Limit)
				r.log.Warn("signatures: pushed bundle rejected", "remote", req.RemoteAddr, "reason", Reason(err), "err", err)
				httpx.WriteJSON(w, statusCode(err), r.response(ResultRejected, err))
				return
			}
			r.log.Warn("signatures: push: reading body", "remote", req.RemoteAddr, "err", err)
			httpx.WriteJSON(w, http.StatusBadRequest, r.response(ResultRejected, fmt.Errorf("%w: reading body: %v", ErrMalformed, err)))
			return
		}
		if _, err := r.Install(req.Context(), data); err != nil {
			if errors.Is(err, ErrRollback) && r.IsActive(data) {
				httpx.WriteJSON(w, http.StatusOK, r.response(ResultAlreadyActive, nil))
				return
			}
			code := statusCode(err)
			if code == http.StatusInternalServerError {
				// The detail (paths of the state folder) stays in the log.
				httpx.WriteJSON(w, code, r.response(ResultRejected, errors.New("internal error")))
				return
			}
			httpx.WriteJSON(w, code, r.response(ResultRejected, err))
			return
		}
		httpx.WriteJSON(w, http.StatusOK, r.response(ResultInstalled, nil))
	})
}

// Pull asks the central server for a bundle newer than the active one and
// installs it. It reports whether a new set became active. A server with
// nothing newer is not an error. After an install it asks once more, so
// that the server learns at once what this appliance runs now (and hands
// over a version built meanwhile).
func (r *Receiver[R]) Pull(ctx context.Context) (bool, error) {
	installed, err := r.pull(ctx)
	if !installed || err != nil {
		return installed, err
	}
	if _, err := r.pull(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("signatures: pull after an install failed", "server", r.cfg.ServerURL, "reason", Reason(err), "err", err)
	}
	return true, nil
}

// PullState is what the last pull from the central server found out.
type PullState struct {
	// At is when the pull ended (zero: no pull yet).
	At time.Time
	// ServerVersion is the newest version the server offers, as far as
	// the pull learned: the version it sent, or the version this
	// appliance runs when the server had nothing newer (0: unknown, or
	// the server has no bundle yet).
	ServerVersion uint64
	// UpToDate is true when the server's newest is the version active
	// here (or the server has none). A pull that got no answer keeps
	// what the one before learned.
	UpToDate bool
	// Err is why the pull failed or its bundle was refused.
	Err string
}

// LastPull returns the outcome of the last pull (Pull or Serve's). A
// pull that failed keeps the server version learned before.
func (r *Receiver[R]) LastPull() PullState {
	r.pullMu.Lock()
	defer r.pullMu.Unlock()
	return r.lastPull
}

func (r *Receiver[R]) pull(ctx context.Context) (installed bool, err error) {
	if r.cfg.ServerURL == "" {
		return false, errors.New("signatures: pull: no server URL configured")
	}
	var have uint64
	var digest string
	if a := r.Current(); a != nil {
		have, digest = a.Manifest.Version, a.Digest
	}
	// What the pull learns of the server: known once it answered.
	var serverV uint64
	known, upToDate := false, false
	defer func() {
		if ctx.Err() != nil {
			return // given up: nothing learned
		}
		r.pullMu.Lock()
		defer r.pullMu.Unlock()
		// Without an answer the pull learned nothing: what was known
		// before stays, beside the error.
		st := PullState{At: time.Now().UTC(), ServerVersion: r.lastPull.ServerVersion, UpToDate: r.lastPull.UpToDate}
		if known {
			st.ServerVersion, st.UpToDate = serverV, upToDate
		}
		if err != nil {
			st.Err = err.Error()
		}
		r.lastPull = st
	}()
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
	if digest != "" {
		req.Header.Set(HeaderDigest, digest)
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("signatures: pull: %w", err) // *url.Error names the URL
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent: // nothing newer than have
		serverV, known, upToDate = have, true, true
		return false, nil
	case http.StatusNotFound: // no bundle built yet
		known, upToDate = true, true
		return false, nil
	case http.StatusOK:
		serverV, _ = strconv.ParseUint(resp.Header.Get(HeaderVersion), 10, 64)
		known = serverV > 0
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, fmt.Errorf("signatures: pull %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.Limits.MaxBundleSize+1))
	if err != nil {
		return false, fmt.Errorf("signatures: pull %s: %w", u, err)
	}
	a, err := r.Install(ctx, data)
	if err != nil {
		if errors.Is(err, ErrRollback) && r.IsActive(data) {
			upToDate = true
			return false, nil
		}
		// Tell the server now: it shows why this appliance stays behind.
		r.sendReports(ctx)
		// err carries the package's prefix already.
		return false, fmt.Errorf("pulled from %s: %w", u, err)
	}
	serverV, known, upToDate = max(serverV, a.Manifest.Version), true, true
	return true, nil
}

// register tells the server where to push to this appliance.
func (r *Receiver[R]) register(ctx context.Context) error {
	body, _ := json.Marshal(PushTarget{ID: r.cfg.ApplianceID, URL: r.cfg.ReceiverURL, Token: r.cfg.ReceiverToken})
	u, err := url.JoinPath(r.cfg.ServerURL, "/v1/appliances")
	if err != nil {
		return fmt.Errorf("signatures: register: %w", err)
	}
	return r.post(ctx, u, body)
}

// Serve registers with the central server (when ReceiverURL is set) and
// pulls at start and then every PullInterval (±20%), retrying failures
// sooner with backoff, until ctx ends; it then returns nil. Refusals are
// reported to the server as they happen (a failed report is sent again
// with the next pull). Failures are logged, never fatal: the active set
// stays.
func (r *Receiver[R]) Serve(ctx context.Context) error {
	if r.cfg.ServerURL == "" {
		<-ctx.Done()
		return nil
	}
	registered := r.cfg.ReceiverURL == ""
	bo := backoff.Backoff{Min: time.Second, Max: r.cfg.PullInterval}
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
		r.sendReports(ctx)
		_, err := r.Pull(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn("signatures: pull failed", "server", r.cfg.ServerURL, "reason", Reason(err), "err", err)
		}
		wait := backoff.Jitter(r.cfg.PullInterval)
		if err != nil || !registered {
			wait = bo.Next()
		} else {
			bo.Reset()
		}
		t := time.NewTimer(wait)
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-r.reported:
				r.sendReports(ctx)
			case <-t.C:
				break wait
			}
		}
	}
}
