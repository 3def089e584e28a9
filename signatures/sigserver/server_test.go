package sigserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

// api calls the server's API and decodes a JSON answer into out.
func api(t testing.TB, c *http.Client, method, url, token string, out any) int {
	t.Helper()
	return apiBody(t, c, method, url, token, nil, out)
}

// apiBody is api with a JSON body (none if nil).
func apiBody(t testing.TB, c *http.Client, method, url, token string, in, out any) int {
	t.Helper()
	var rd io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if b, ok := out.(*[]byte); ok {
			*b = body
		} else if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, body)
		}
	}
	if out != nil && resp.StatusCode/100 != 2 {
		if m, ok := out.(*map[string]any); ok {
			json.Unmarshal(body, m)
		}
	}
	return resp.StatusCode
}

func versions(st []sigserver.ApplianceStatus) map[string]uint64 {
	m := map[string]uint64{}
	for _, s := range st {
		m[s.ID] = s.Version
	}
	return m
}

func TestPushToThreeAppliances(t *testing.T) {
	tlsCfg, client := sigtest.SelfSigned(t)
	key := sigtest.NewKey(t)
	rulesDir := filepath.Join(t.TempDir(), "rules")
	sigtest.WriteRules(t, rulesDir, sigtest.RuleFiles(1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ids := []string{"app-a", "app-b", "app-c"}
	recv := make([]*sigtest.Receiver, 3)
	lns := make([]net.Listener, 3)
	var apps []signatures.PushTarget
	for i, id := range ids {
		recv[i] = sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)), ApplianceID: id})
		lns[i] = sigtest.Listen(t, "127.0.0.1:0")
		apps = append(apps, signatures.PushTarget{ID: id, URL: "https://" + lns[i].Addr().String() + "/v1/signatures", Token: "push-" + id})
	}
	// app-c is down at first: its port is known but nothing listens.
	addrC := lns[2].Addr().String()
	lns[2].Close()
	for i := range 2 {
		sigtest.ServeTLS(t, lns[i], tlsCfg, httpx.RequireBearer(httpx.NewTokens("push-"+ids[i]), recv[i].Handler(), httpx.BearerOptions{}))
	}

	srvLn := sigtest.Listen(t, "127.0.0.1:0")
	base := "https://" + srvLn.Addr().String()
	srv, err := sigserver.New(sigserver.Config{
		Key: key, Name: "demo", RulesDir: rulesDir, StateDir: t.TempDir(), Check: sigtest.CheckYARA,
		MinEngine: "4.2", Externals: scanner.Externals, Tokens: []string{"api-token"},
		Listener: srvLn, TLSConfig: tlsCfg, Targets: apps, Client: client,
		PollInterval: 50 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		Logger: sigtest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	active := func(i int, v uint64) bool { a := recv[i].Current(); return a != nil && a.Manifest.Version == v }
	sigtest.WaitFor(t, "app-a and app-b on version 1", func() bool { return active(0, 1) && active(1, 1) })
	sigtest.WaitFor(t, "a failed push to app-c", func() bool {
		for _, s := range srv.Appliances() {
			if s.ID == "app-c" && s.LastError != "" && s.Version == 0 {
				return true
			}
		}
		return false
	})
	if active(2, 1) {
		t.Fatal("app-c active while down")
	}

	// app-c comes up: the retries reach it.
	sigtest.ServeTLS(t, sigtest.Listen(t, addrC), tlsCfg, httpx.RequireBearer(httpx.NewTokens("push-app-c"), recv[2].Handler(), httpx.BearerOptions{}))
	sigtest.WaitFor(t, "app-c on version 1", func() bool { return active(2, 1) })
	sigtest.WaitFor(t, "the server to see all on version 1", func() bool {
		return maps3(versions(srv.Appliances()), 1)
	})

	// A change in the folder is a new version, pushed to all three. The
	// poll may catch the folder half written and build that first: wait
	// for the version holding the final content.
	start := time.Now()
	sigtest.WriteRules(t, rulesDir, sigtest.RuleFiles(2))
	final := signatures.SourceDigest(signatures.Infos(sigtest.RuleFiles(2)))
	var v uint64
	sigtest.WaitFor(t, "the final content built", func() bool {
		m := srv.Latest()
		v = m.Version
		return signatures.SourceDigest(m.Files) == final
	})
	sigtest.WaitFor(t, "all on the final version", func() bool { return active(0, v) && active(1, v) && active(2, v) })
	t.Logf("folder change to all three active: %v (version %d)", time.Since(start), v)
	for i := range recv {
		if got, err := sigtest.Scan(ctx, recv[i].Current()); err != nil || !slices.Equal(got, sigtest.Expected(2)) {
			t.Errorf("%s scans %v, %v", ids[i], got, err)
		}
	}
	sigtest.WaitFor(t, "the server to see all on the final version", func() bool { return maps3(versions(srv.Appliances()), v) })

	// The API reports the same, and only with a token.
	var list []sigserver.ApplianceStatus
	if code := api(t, client, "GET", base+"/v1/appliances", "api-token", &list); code != 200 || !maps3(versions(list), v) {
		t.Errorf("GET /v1/appliances: %d %+v", code, list)
	}
	for _, tok := range []string{"", "wrong", "api-tokenX", "old"} {
		if code := api(t, client, "GET", base+"/v1/appliances", tok, nil); code != http.StatusUnauthorized {
			t.Errorf("token %q: status %d, want 401", tok, code)
		}
	}
	var hist []sigserver.BundleInfo
	if api(t, client, "GET", base+"/v1/bundles", "api-token", &hist); len(hist) != int(v) || hist[v-1].Version != v {
		t.Errorf("history %+v", hist)
	}
	var old []byte
	if code := api(t, client, "GET", base+"/v1/bundles/1", "api-token", &old); code != 200 {
		t.Fatalf("GET /v1/bundles/1: %d", code)
	}
	if b, err := signatures.ReadBundle(old, signatures.NewKeySet(sigtest.Pub(key)), signatures.Limits{}); err != nil || b.Manifest.Version != 1 {
		t.Errorf("bundle 1: %v", err)
	}
	if code := api(t, client, "GET", base+"/v1/bundles/9", "api-token", nil); code != http.StatusNotFound {
		t.Errorf("GET /v1/bundles/9: %d", code)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not stop")
	}
}

// maps3 reports whether all three appliances report version v.
func maps3(m map[string]uint64, v uint64) bool {
	return len(m) == 3 && m["app-a"] == v && m["app-b"] == v && m["app-c"] == v
}

func TestPullRegisterBuild(t *testing.T) {
	tlsCfg, client := sigtest.SelfSigned(t)
	key := sigtest.NewKey(t)
	rulesDir := filepath.Join(t.TempDir(), "rules")
	stateDir := t.TempDir()
	sigtest.WriteRules(t, rulesDir, sigtest.RuleFiles(1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	srvLn := sigtest.Listen(t, "127.0.0.1:0")
	base := "https://" + srvLn.Addr().String()
	cfg := sigserver.Config{
		Key: key, Name: "demo", RulesDir: rulesDir, StateDir: stateDir, Check: sigtest.CheckYARA,
		Tokens: []string{"old-token", "api-token"}, Listener: srvLn, TLSConfig: tlsCfg, Client: client,
		PollInterval: -1, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, Logger: sigtest.Logger(t),
	}
	srv, err := sigserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	sigtest.WaitFor(t, "the first build", func() bool { return srv.Latest() != nil })

	// app-d registers its push URL and pulls; app-e only pulls.
	dLn := sigtest.Listen(t, "127.0.0.1:0")
	d := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys: signatures.NewKeySet(sigtest.Pub(key)), ApplianceID: "app-d", ServerURL: base, ServerToken: "api-token",
		Client: client, PullInterval: 100 * time.Millisecond,
		ReceiverURL: "https://" + dLn.Addr().String() + "/push", ReceiverToken: "push-d",
	})
	sigtest.ServeTLS(t, dLn, tlsCfg, httpx.RequireBearer(httpx.NewTokens("push-d"), d.Handler(), httpx.BearerOptions{}))
	go d.Serve(ctx)
	e := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys: signatures.NewKeySet(sigtest.Pub(key)), ApplianceID: "app-e", ServerURL: base, ServerToken: "api-token", Client: client,
	})
	if ok, err := e.Pull(ctx); !ok || err != nil {
		t.Fatalf("first pull: %v %v", ok, err)
	}
	if ok, err := e.Pull(ctx); ok || err != nil {
		t.Fatalf("second pull: %v %v, want nothing new", ok, err)
	}
	sigtest.WaitFor(t, "app-d on version 1", func() bool { a := d.Current(); return a != nil && a.Manifest.Version == 1 })
	sigtest.WaitFor(t, "the server to see app-d and app-e on 1", func() bool {
		v := versions(srv.Appliances())
		return v["app-d"] == 1 && v["app-e"] == 1
	})

	// Build on request.
	var res map[string]any
	if code := api(t, client, "POST", base+"/v1/build", "api-token", &res); code != 200 || res["built"] != false {
		t.Errorf("build with no change: %d %v", code, res)
	}
	sigtest.WriteRules(t, rulesDir, sigtest.RuleFiles(2))
	if code := api(t, client, "POST", base+"/v1/build", "api-token", &res); code != 200 || res["built"] != true {
		t.Fatalf("build: %d %v", code, res)
	}
	sigtest.WaitFor(t, "app-d on version 2 (pushed)", func() bool { return d.Current().Manifest.Version == 2 })
	if ok, err := e.Pull(ctx); !ok || err != nil || e.Current().Manifest.Version != 2 {
		t.Fatalf("pull of version 2: %v %v", ok, err)
	}

	// Rules that do not compile are never signed; the error names the
	// file and line.
	broken := sigtest.RuleFiles(3)
	broken[0].Data = []byte("rule a {\n  strings: $s = \"x\"\n  condition: $s and $t\n}\n")
	sigtest.WriteRules(t, rulesDir, broken)
	res = nil
	if code := api(t, client, "POST", base+"/v1/build", "api-token", &res); code != http.StatusUnprocessableEntity ||
		!strings.Contains(res["error"].(string), "a.yar:") || res["reason"] != "compile" {
		t.Errorf("build of broken rules: %d %v", code, res)
	}
	if v := srv.Latest().Version; v != 2 {
		t.Errorf("latest is %d after a failed build", v)
	}
	if code := api(t, client, "POST", base+"/v1/build", "", nil); code != http.StatusUnauthorized {
		t.Errorf("build without a token: %d", code)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	// A restarted server keeps its history and registrations.
	sigtest.WriteRules(t, rulesDir, sigtest.RuleFiles(3))
	cfg.Listener = sigtest.Listen(t, "127.0.0.1:0")
	srv2, err := sigserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if v := srv2.Latest().Version; v != 2 {
		t.Errorf("restarted with latest %d", v)
	}
	if v := versions(srv2.Appliances()); len(v) != 1 || !slices.ContainsFunc(srv2.Appliances(), func(s sigserver.ApplianceStatus) bool { return s.ID == "app-d" }) {
		t.Errorf("restarted with appliances %v", v)
	}
	if m, built, err := srv2.Build(context.Background()); err != nil || !built || m.Version != 3 {
		t.Errorf("build after restart: %v %v %v", m, built, err)
	}
	if _, _, err := srv2.Build(context.Background()); err != nil {
		t.Error(err)
	}
	st, err := os.Stat(filepath.Join(stateDir, "appliances.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("appliances.json (holds push tokens): %v %v", st.Mode(), err)
	}
}
