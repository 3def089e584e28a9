package sigserver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

// The tests below run the server and receivers over plain HTTP on
// loopback, which the server allows without TLS.

// logs keeps a server's log lines and copies them to the test log.
type logs struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count returns how many lines hold every one of parts.
func (l *logs) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(l.buf.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// central is a running server and how to reach it.
type central struct {
	srv  *sigserver.Server
	base string
	log  *logs
	stop func()
}

const apiToken = "api-token-for-tests"

// startServer runs a server over plain HTTP on loopback, polling its
// rules folder only on request, until the test ends.
func startServer(t *testing.T, cfg sigserver.Config) *central {
	t.Helper()
	l := &logs{t: t}
	cfg.Logger = slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ln := sigtest.Listen(t, "127.0.0.1:0")
	cfg.Listener = ln
	cfg.Name = "demo"
	cfg.Check = sigtest.CheckYARA
	cfg.MinEngine = "4.2"
	cfg.Externals = scanner.Externals
	cfg.Tokens = []string{apiToken}
	cfg.PollInterval = -1
	cfg.RetryMin, cfg.RetryMax = 20*time.Millisecond, 200*time.Millisecond
	srv, err := sigserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(stop)
	return &central{srv: srv, base: "http://" + ln.Addr().String(), log: l, stop: stop}
}

// appliance is a receiver served as the appliance serves it: behind a
// bearer check, over plain HTTP on loopback, running Serve (pulls and
// refusal reports) when it has a server.
type appliance struct {
	*sigtest.Receiver
	target signatures.PushTarget
}

func startAppliance(t *testing.T, id string, key ed25519.PrivateKey, cfg signatures.ReceiverConfig[*scanner.Rules]) *appliance {
	t.Helper()
	cfg.ApplianceID = id
	if cfg.Keys == nil {
		cfg.Keys = signatures.NewKeySet(sigtest.Pub(key))
	}
	if cfg.ServerURL != "" {
		cfg.ServerToken = apiToken
		if cfg.PullInterval == 0 {
			cfg.PullInterval = time.Hour // pulls only when the test asks
		}
	}
	r := sigtest.NewReceiver(t, cfg)
	ln := sigtest.Listen(t, "127.0.0.1:0")
	hs := &http.Server{Handler: httpx.RequireBearer(httpx.NewTokens("push-"+id), r.Handler(), httpx.BearerOptions{}), ReadHeaderTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { hs.Serve(ln) })
	if cfg.ServerURL != "" {
		wg.Go(func() { r.Serve(ctx) })
	}
	t.Cleanup(func() {
		cancel()
		hs.Close()
		wg.Wait()
	})
	return &appliance{Receiver: r, target: signatures.PushTarget{ID: id, URL: "http://" + ln.Addr().String() + "/v1/signatures", Token: "push-" + id}}
}

func (a *appliance) version() uint64 {
	if c := a.Current(); c != nil {
		return c.Manifest.Version
	}
	return 0
}

func status(t *testing.T, c *central, id string) sigserver.ApplianceStatus {
	t.Helper()
	var list []sigserver.ApplianceStatus
	if code := api(t, http.DefaultClient, "GET", c.base+"/v1/appliances", apiToken, &list); code != 200 {
		t.Fatalf("GET /v1/appliances: %d", code)
	}
	for _, s := range list {
		if s.ID == id {
			return s
		}
	}
	return sigserver.ApplianceStatus{}
}

func waitState(t *testing.T, c *central, id, state string) sigserver.ApplianceStatus {
	t.Helper()
	var st sigserver.ApplianceStatus
	sigtest.WaitFor(t, id+" "+state, func() bool { st = status(t, c, id); return st.State == state })
	return st
}

func serverStatus(t *testing.T, c *central) sigserver.Status {
	t.Helper()
	var st sigserver.Status
	if code := api(t, http.DefaultClient, "GET", c.base+"/v1/status", apiToken, &st); code != 200 {
		t.Fatalf("GET /v1/status: %d", code)
	}
	return st
}

func build(t *testing.T, c *central, query string) (int, map[string]any) {
	t.Helper()
	var out map[string]any
	code := api(t, http.DefaultClient, "POST", c.base+"/v1/build"+query, apiToken, &out)
	return code, out
}

// TestForeignBundle is the defect of issue 15: a bundle built and pushed
// by hand as version 2 made the server's own version 2 be refused as a
// rollback while the server listed the appliance as current. Now the
// server sees the other content, says so, and builds past it on request.
func TestForeignBundle(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	app := startAppliance(t, "app-a", key, signatures.ReceiverConfig[*scanner.Rules]{})
	c := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: t.TempDir(), Targets: []signatures.PushTarget{app.target}})
	sigtest.WaitFor(t, "app-a on version 1", func() bool { return app.version() == 1 })
	if st := waitState(t, c, "app-a", sigserver.StateCurrent); st.Digest == "" || st.Digest != serverStatus(t, c).Latest.Digest {
		t.Errorf("current with digest %q, latest %+v", st.Digest, serverStatus(t, c).Latest)
	}

	// Version 2 built by hand, without asking the server, and pushed.
	hand := sigtest.Build(t, key, "demo", 2, sigtest.RuleFiles(20))
	if _, err := signatures.Push(context.Background(), http.DefaultClient, app.target, hand); err != nil {
		t.Fatal(err)
	}
	// The server's own version 2: refused as a rollback, and shown so.
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(2))
	if code, out := build(t, c, ""); code != 200 || out["built"] != true {
		t.Fatalf("build: %d %v", code, out)
	}
	st := waitState(t, c, "app-a", sigserver.StateForeign)
	if st.Reason != "rollback" || st.Version != 2 || st.RefusedVersion != 2 || !strings.Contains(st.LastError, "409 Conflict") {
		t.Errorf("foreign appliance shown as %+v", st)
	}
	ss := serverStatus(t, c)
	if len(ss.Warnings) != 1 || !strings.Contains(ss.Warnings[0], "app-a runs a bundle numbered 2") ||
		!strings.Contains(ss.Warnings[0], "POST /v1/build?version=3") {
		t.Errorf("warnings %q", ss.Warnings)
	}
	if n := c.log.count("level=WARN", "appliance refused bundle", "appliance=app-a", "reason=rollback"); n != 1 {
		t.Errorf("%d WARN lines for the refusal, want 1", n)
	}
	if n := c.log.count("level=ERROR", "signed elsewhere under the same number"); n != 1 {
		t.Errorf("%d ERROR lines for the foreign bundle, want 1", n)
	}

	// Building past it: an explicit version, even on unchanged rules.
	if code, out := build(t, c, "?version=2"); code != http.StatusConflict || !strings.Contains(out["error"].(string), "the next free is 3") {
		t.Errorf("build of a taken version: %d %v", code, out)
	}
	if code, out := build(t, c, "?version=3"); code != 200 || out["built"] != true {
		t.Fatalf("build ?version=3: %d %v", code, out)
	}
	sigtest.WaitFor(t, "app-a on version 3", func() bool { return app.version() == 3 })
	if st := waitState(t, c, "app-a", sigserver.StateCurrent); st.Reason != "" || st.LastError != "" {
		t.Errorf("after the fix: %+v", st)
	}
	if w := serverStatus(t, c).Warnings; len(w) != 0 {
		t.Errorf("warnings after the fix: %q", w)
	}
	for _, q := range []string{"?version=x", "?version=0", "?v=4", "?version=4&version=5"} {
		if code, _ := build(t, c, q); code != http.StatusBadRequest {
			t.Errorf("build %s: %d, want 400", q, code)
		}
	}
}

// TestReservations: a bundle built by hand takes its number from the
// server, and the server numbers its next build above it.
func TestReservations(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	state := t.TempDir()
	app := startAppliance(t, "app-a", key, signatures.ReceiverConfig[*scanner.Rules]{})
	c := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: state, Targets: []signatures.PushTarget{app.target}})
	sigtest.WaitFor(t, "version 1 built", func() bool { return c.srv.Latest() != nil })

	reserve := func(name string, v uint64) (int, map[string]any) {
		var out map[string]any
		code := apiBody(t, http.DefaultClient, "POST", c.base+"/v1/versions", apiToken, sigserver.Reservation{Name: name, Version: v}, &out)
		return code, out
	}
	tests := []struct {
		name    string
		set     string
		version uint64
		code    int
		want    string
	}{
		{"issued", "demo", 1, 409, "version already issued or reserved: demo version 1 (latest built here: 1, highest reserved: 0; the next free is 2)"},
		{"free", "demo", 4, 200, ""},
		{"the same again", "demo", 4, 409, "the next free is 5"},
		{"below the reservation", "demo", 3, 409, "highest reserved: 4"},
		{"next free", "demo", 0, 200, ""},
		{"another set", "prod", 9, 409, `this server signs "demo", not "prod"`},
	}
	for _, tt := range tests {
		code, out := reserve(tt.set, tt.version)
		if code != tt.code || tt.want != "" && !strings.Contains(out["error"].(string), tt.want) {
			t.Errorf("%s: %d %v, want %d %q", tt.name, code, out, tt.code, tt.want)
		}
		if tt.name == "next free" && out["version"] != float64(5) {
			t.Errorf("next free: %v, want version 5", out)
		}
	}
	for _, body := range []string{`{"name": "demo", "version": 9, "version": 3}`, `{"name": "demo", "versoin": 9}`, `[]`} {
		req, _ := http.NewRequest("POST", c.base+"/v1/versions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiToken)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
			t.Errorf("reservation %s: %v %v, want 400", body, resp.Status, err)
		} else {
			resp.Body.Close()
		}
	}

	// The hand-built version 5 runs on app-a; the server knows it was
	// reserved and raises no alarm.
	if _, err := signatures.Push(context.Background(), http.DefaultClient, app.target, sigtest.Build(t, key, "demo", 5, sigtest.RuleFiles(5))); err != nil {
		t.Fatal(err)
	}
	sigtest.WaitFor(t, "app-a on 5", func() bool { return app.version() == 5 })
	// Nothing changed in the rules: the server does not sign them again
	// over the hand-built bundle.
	if code, out := build(t, c, ""); code != 200 || out["built"] != false {
		t.Errorf("build of unchanged rules after a reservation: %d %v", code, out)
	}
	// The server learns what app-a runs when it asks; here, by a pull.
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)),
		ApplianceID: "app-a", ServerURL: c.base, ServerToken: apiToken, StateDir: t.TempDir()})
	if _, err := r.Install(context.Background(), sigtest.Build(t, key, "demo", 5, sigtest.RuleFiles(5))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Pull(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "app-a", sigserver.StateManual)
	if ss := serverStatus(t, c); len(ss.Warnings) != 0 || ss.Reserved != 5 || ss.NextVersion != 6 {
		t.Errorf("status %+v", ss)
	}
	// The next build is numbered above the reservation and reaches app-a.
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(6))
	if code, out := build(t, c, ""); code != 200 || out["manifest"].(map[string]any)["version"] != float64(6) {
		t.Fatalf("build after the reservation: %d %v", code, out)
	}
	sigtest.WaitFor(t, "app-a on 6", func() bool { return app.version() == 6 })

	// Reservations survive a restart.
	c.stop()
	c2 := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: state})
	if ss := serverStatus(t, c2); ss.Reserved != 5 || ss.NextVersion != 7 || ss.Latest.Version != 6 {
		t.Errorf("after a restart: %+v", ss)
	}
}

// TestLostState: a server that lost its state starts again at version 1
// while its appliances run version 6. It says so loudly, pushes nothing
// they would refuse, and builds past them on request.
func TestLostState(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	pusher := startAppliance(t, "app-push", key, signatures.ReceiverConfig[*scanner.Rules]{})
	puller := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)), ApplianceID: "app-pull"})
	for _, r := range []*sigtest.Receiver{pusher.Receiver, puller} {
		if _, err := r.Install(context.Background(), sigtest.Build(t, key, "demo", 6, sigtest.RuleFiles(6))); err != nil {
			t.Fatal(err)
		}
	}

	c := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: t.TempDir(), Targets: []signatures.PushTarget{pusher.target}})
	st := waitState(t, c, "app-push", sigserver.StateAhead)
	if st.Version != 6 || st.Reason != "rollback" || st.RefusedVersion != 1 {
		t.Errorf("app-push: %+v", st)
	}
	// The pull-only appliance is seen by its pull: nothing newer for it.
	pr := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)),
		ApplianceID: "app-pull", ServerURL: c.base, ServerToken: apiToken, StateDir: t.TempDir()})
	if _, err := pr.Install(context.Background(), sigtest.Build(t, key, "demo", 6, sigtest.RuleFiles(6))); err != nil {
		t.Fatal(err)
	}
	if ok, err := pr.Pull(context.Background()); ok || err != nil {
		t.Fatalf("pull: %v %v", ok, err)
	}
	waitState(t, c, "app-pull", sigserver.StateAhead)
	ss := serverStatus(t, c)
	if len(ss.Warnings) != 1 || !strings.Contains(ss.Warnings[0], "appliances app-pull, app-push run version 6, above everything this server issued (latest 1)") ||
		!strings.Contains(ss.Warnings[0], "lost its state") || !strings.Contains(ss.Warnings[0], "POST /v1/build?version=7") {
		t.Errorf("warnings %q", ss.Warnings)
	}
	if n := c.log.count("level=ERROR", "lost its state"); n != 2 {
		t.Errorf("%d ERROR lines, want one per appliance", n)
	}
	// No push loop against the refusal: one push, one refusal.
	time.Sleep(300 * time.Millisecond) // several backoff periods
	if n := c.log.count("appliance refused bundle", "appliance=app-push"); n != 1 {
		t.Errorf("version 1 pushed to app-push and refused %d times", n)
	}

	if code, out := build(t, c, "?version=7"); code != 200 || out["built"] != true {
		t.Fatalf("build ?version=7: %d %v", code, out)
	}
	sigtest.WaitFor(t, "app-push on 7", func() bool { return pusher.version() == 7 })
	if ok, err := pr.Pull(context.Background()); !ok || err != nil {
		t.Fatalf("pull of 7: %v %v", ok, err)
	}
	waitState(t, c, "app-push", sigserver.StateCurrent)
	waitState(t, c, "app-pull", sigserver.StateCurrent)
	if w := serverStatus(t, c).Warnings; len(w) != 0 {
		t.Errorf("warnings after the fix: %q", w)
	}
}

// TestRefusalReports: an appliance that refuses a bundle, pulled or pushed
// by hand, tells the server, which shows the reason and logs it at WARN.
func TestRefusalReports(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	c := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: t.TempDir()})
	sigtest.WaitFor(t, "version 1 built", func() bool { return c.srv.Latest() != nil })

	// An engine too old for the server's bundles: its pull is refused.
	old := startAppliance(t, "app-old", key, signatures.ReceiverConfig[*scanner.Rules]{ServerURL: c.base, EngineVersion: "4.1"})
	st := waitState(t, c, "app-old", sigserver.StateRefused)
	if st.Reason != "incompatible" || !strings.Contains(st.LastError, "refused demo version 1: signatures: bundle needs a newer engine") ||
		st.RefusedVersion != 1 {
		t.Errorf("app-old: %+v", st)
	}
	if old.Current() != nil {
		t.Error("app-old installed a bundle for a newer engine")
	}

	// A bundle pushed by hand, signed by a key app-new does not trust:
	// refused, reported, and not taken for the server's own.
	app := startAppliance(t, "app-new", key, signatures.ReceiverConfig[*scanner.Rules]{ServerURL: c.base})
	sigtest.WaitFor(t, "app-new on 1", func() bool { return app.version() == 1 })
	waitState(t, c, "app-new", sigserver.StateCurrent)
	_, err := signatures.Push(context.Background(), http.DefaultClient, app.target, sigtest.Build(t, sigtest.NewKey(t), "demo", 2, sigtest.RuleFiles(2)))
	var pe *signatures.PushError
	if !errors.As(err, &pe) || !errors.Is(err, signatures.ErrUntrustedKey) || pe.Code != 403 {
		t.Fatalf("push signed by another key: %v", err)
	}
	sigtest.WaitFor(t, "the report", func() bool { return status(t, c, "app-new").Reason == "untrusted_key" })
	st = status(t, c, "app-new")
	if st.State != sigserver.StateCurrent || st.RefusedVersion != 0 || !strings.Contains(st.LastError, "refused a bundle that did not verify (not this server's latest)") {
		t.Errorf("app-new after a refused hand push: %+v", st)
	}
	if n := c.log.count("level=WARN", "appliance refused bundle", "appliance=app-new", "reason=untrusted_key"); n != 1 {
		t.Errorf("%d WARN lines for app-new's refusal", n)
	}

	// Reports are checked like every request.
	for _, body := range []string{`{"digest": "x", "reason": "rollback", "error": "e"}`,
		`{"digest": "` + strings.Repeat("a", 64) + `", "reason": "bogus", "error": "e"}`,
		`{"digest": "` + strings.Repeat("a", 64) + `", "reason": "rollback", "reason": "compile"}`} {
		req, _ := http.NewRequest("POST", c.base+"/v1/appliances/app-x/refusals", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiToken)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
			t.Errorf("report %s: %v %v, want 400", body, resp.Status, err)
		} else {
			resp.Body.Close()
		}
	}
	if code := api(t, http.DefaultClient, "POST", c.base+"/v1/appliances/app-x/refusals", "", nil); code != 401 {
		t.Errorf("report without a token: %d", code)
	}
}

// TestPlainHTTP: without TLS the server listens on loopback only, unless
// told that a proxy in front terminates TLS.
func TestPlainHTTP(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	cfg := sigserver.Config{Key: key, Name: "demo", RulesDir: rules, StateDir: t.TempDir(), Check: sigtest.CheckYARA,
		Tokens: []string{apiToken}, PollInterval: -1, Logger: sigtest.Logger(t)}
	if sigserver.DefaultAddr != "127.0.0.1:8443" {
		t.Fatalf("default address %q", sigserver.DefaultAddr)
	}
	everywhere, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = everywhere
	srv, err := sigserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Serve(context.Background())
	if !errors.Is(err, sigserver.ErrPlainHTTP) || !strings.Contains(err.Error(), everywhere.Addr().String()) {
		t.Fatalf("plain HTTP on every interface: %v", err)
	}
	if _, err := net.Dial("tcp", everywhere.Addr().String()); err == nil {
		t.Error("the refused listener was left open")
	}

	cfg.Listener = sigtest.Listen(t, "0.0.0.0:0")
	cfg.AllowPlainHTTP = true
	srv, err = sigserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	url := "http://" + cfg.Listener.Addr().String() + "/v1/status"
	sigtest.WaitFor(t, "the allowed plain-HTTP server", func() bool {
		var st sigserver.Status
		return api(t, http.DefaultClient, "GET", url, apiToken, &st) == 200 && st.Latest != nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// TestLastPull: what an appliance learns of the server by pulling (the
// console shows whether the server's newest reached it), and its
// OnRefusal hook (the appliance's signature_refused events).
func TestLastPull(t *testing.T) {
	key := sigtest.NewKey(t)
	rules := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(1))
	c := startServer(t, sigserver.Config{Key: key, RulesDir: rules, StateDir: t.TempDir()})
	sigtest.WaitFor(t, "version 1 built", func() bool { return c.srv.Latest() != nil })
	ctx := context.Background()

	app := startAppliance(t, "app-now", key, signatures.ReceiverConfig[*scanner.Rules]{ServerURL: c.base})
	if st := app.LastPull(); !st.At.IsZero() && st.ServerVersion != 1 {
		t.Errorf("before a pull: %+v", st)
	}
	if _, err := app.Pull(ctx); err != nil {
		t.Fatal(err)
	}
	if st := app.LastPull(); st.At.IsZero() || st.ServerVersion != 1 || !st.UpToDate || st.Err != "" {
		t.Errorf("after pulling version 1: %+v", st)
	}
	sigtest.WriteRules(t, rules, sigtest.RuleFiles(2))
	if code, res := build(t, c, ""); code != 200 {
		t.Fatalf("build: %d %v", code, res)
	}
	if ok, err := app.Pull(ctx); !ok || err != nil {
		t.Fatalf("pull of version 2: %v %v", ok, err)
	}
	if st := app.LastPull(); st.ServerVersion != 2 || !st.UpToDate {
		t.Errorf("after pulling version 2: %+v", st)
	}

	// An engine too old: the server's newest does not reach it, and says
	// why; the hook hears of the refusal.
	refusals := make(chan signatures.Refusal, 4)
	old := startAppliance(t, "app-old", key, signatures.ReceiverConfig[*scanner.Rules]{ServerURL: c.base, EngineVersion: "4.1",
		OnRefusal: func(r signatures.Refusal) { refusals <- r }})
	if _, err := old.Pull(ctx); err == nil {
		t.Fatal("an old engine took the bundle")
	}
	st := old.LastPull()
	if st.ServerVersion != 2 || st.UpToDate || !strings.Contains(st.Err, "needs a newer engine") {
		t.Errorf("old engine: %+v", st)
	}
	select {
	case r := <-refusals:
		if r.Version != 2 || r.Reason != "incompatible" || r.Name != "demo" {
			t.Errorf("refusal %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnRefusal was not called")
	}
	// The server gone: the version learned before stays, with the error.
	c.stop()
	if _, err := app.Pull(ctx); err == nil {
		t.Fatal("pull from a stopped server")
	}
	if st := app.LastPull(); st.ServerVersion != 2 || !st.UpToDate || st.Err == "" {
		t.Errorf("server gone: %+v (want what was known, and the error)", st)
	}
}
