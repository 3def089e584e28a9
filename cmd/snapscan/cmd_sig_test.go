package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

// TestSigCommands runs keygen, build and verify as a user would, with
// real libyara compiling.
func TestSigCommands(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.MkdirAll(filepath.Join(rules, "sub"), 0o755)
	os.WriteFile(filepath.Join(rules, "a.yar"), []byte("rule a { strings: $s = \"evil\" condition: $s and filename != \"\" }\n"), 0o644)
	os.WriteFile(filepath.Join(rules, "sub", "b.yar"), []byte("rule b { condition: filesize == 0 }\n"), 0o644)
	broken := filepath.Join(dir, "broken.yar")
	os.WriteFile(broken, []byte("rule ok { condition: true }\n\nrule bad { condition: $nope }\n"), 0o644)
	p := func(name string) string { return filepath.Join(dir, name) }

	tests := []struct {
		name string
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{"keygen", []string{"sig", "keygen", "--out", p("k")}, 0, "key id", ""},
		{"keygen refuses to overwrite", []string{"sig", "keygen", "--out", p("k")}, 2, "", "exists"},
		{"other key", []string{"sig", "keygen", "--out", p("other")}, 0, "key id", ""},
		{"build", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--version", "3", "--out", p("demo.bundle"), rules}, 0, "demo version 3, 2 files, 2 rules", ""},
		{"build refuses what does not compile", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--version", "4", "--out", p("bad.bundle"), broken}, 2, "", "broken.yar:3: error"},
		{"build without version", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--out", p("x.bundle"), rules}, 2, "", "want --key"},
		{"verify", []string{"sig", "verify", "--pub", p("k.pub"), p("demo.bundle")}, 0, `"version": 3`, ""},
		{"verify with two keys", []string{"sig", "verify", "--pub", p("other.pub"), "--pub", p("k.pub"), p("demo.bundle")}, 0, "valid: demo version 3", ""},
		{"verify with an untrusted key", []string{"sig", "verify", "--pub", p("other.pub"), p("demo.bundle")}, 2, "", "invalid (untrusted_key)"},
		{"verify a truncated bundle", []string{"sig", "verify", "--pub", p("k.pub"), p("cut.bundle")}, 2, "", "invalid (malformed)"},
		{"unknown subcommand", []string{"sig", "frobnicate"}, 2, "", "unknown subcommand"},
	}
	for _, tt := range tests {
		if tt.name == "verify a truncated bundle" {
			b, _ := os.ReadFile(p("demo.bundle"))
			os.WriteFile(p("cut.bundle"), b[:len(b)/2], 0o644)
		}
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.out) || !strings.Contains(stderr.String(), tt.err) {
			t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", tt.name, code, tt.code, stdout.String(), stderr.String())
		}
	}
	if _, err := os.Stat(p("bad.bundle")); !os.IsNotExist(err) {
		t.Error("a bundle was written for rules that do not compile")
	}
	if st, err := os.Stat(p("k.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("k.key: %v %v", st.Mode(), err)
	}
}

// TestSigHelp: every sig subcommand explains itself with examples, and
// the examples name the subcommand they are for.
func TestSigHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"sig", "--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("sig --help: exit %d", code)
	}
	list := stdout.String()
	for _, sub := range []string{"keygen", "build", "verify", "push", "serve"} {
		if !strings.Contains(list, "\n  "+sub+" ") {
			t.Errorf("sig --help does not list %s:\n%s", sub, list)
		}
		for _, flag := range []string{"--help", "-h"} {
			stdout.Reset()
			stderr.Reset()
			code := run(context.Background(), []string{"sig", sub, flag}, &stdout, &stderr)
			help := stdout.String() + stderr.String()
			if code != 0 || !strings.Contains(help, "Usage: snapscan sig "+sub) || !strings.Contains(help, "\nExamples:\n  snapscan sig "+sub+" ") {
				t.Errorf("sig %s %s: exit %d\n%s", sub, flag, code, help)
			}
		}
	}
	stdout.Reset()
	stderr.Reset()
	run(context.Background(), []string{"sig", "serve", "--help"}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), `listen ADDR (default "127.0.0.1:8443")`) {
		t.Errorf("sig serve does not default to loopback:\n%s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer a server goroutine writes while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T, host string) string {
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// sigServe runs "snapscan sig serve ARGS" until the test ends.
func sigServe(t *testing.T, args ...string) (*syncBuffer, <-chan int) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan int, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- run(ctx, append([]string{"sig", "serve"}, args...), out, out)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(20 * time.Second):
			t.Error("sig serve did not stop")
		}
	})
	return out, done
}

// getJSON GETs url with token and decodes the answer.
func getJSON(url, token string, out any) (int, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "bearer "+token) // any case (RFC 7235)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// testAppliance is a signature receiver mounted as the appliance mounts
// it: POST /v1/signatures behind a bearer check, on loopback.
func testAppliance(t *testing.T, id string, keys *signatures.KeySet, server, serverToken string) (*signatures.Receiver[*scanner.Rules], string) {
	r, err := signatures.NewReceiver(signatures.ReceiverConfig[*scanner.Rules]{
		StateDir: t.TempDir(), Keys: keys, Compile: appliance.CompileBundle, EngineVersion: engineVersion,
		Externals: scanner.Externals, ApplianceID: id, ServerURL: server, ServerToken: serverToken, PullInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/signatures", httpx.RequireBearer(httpx.NewTokens("push-secret"), r.Handler(), httpx.BearerOptions{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { hs.Serve(ln) })
	if server != "" {
		wg.Go(func() { r.Serve(ctx) })
	}
	t.Cleanup(func() {
		cancel()
		hs.Close()
		wg.Wait()
	})
	return r, "http://" + ln.Addr().String()
}

// TestSigServePushBuild runs the central server with "sig serve", takes
// version numbers from it with "sig build --server" and pushes bundles by
// hand with "sig push" to two appliances, one of which refuses them and
// tells the server why.
func TestSigServePushBuild(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	rules := p("rules")
	os.MkdirAll(rules, 0o755)
	os.WriteFile(filepath.Join(rules, "a.yar"), []byte("rule a { strings: $s = \"evil\" condition: $s }\n"), 0o644)
	os.WriteFile(p("api.tokens"), []byte("# central API\napi-secret\n"), 0o600)
	os.WriteFile(p("push.token"), []byte("push-secret\n"), 0o600)
	sig := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"sig"}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	if code, _, errs := sig("keygen", "--out", p("k")); code != 0 {
		t.Fatal(errs)
	}
	if code, _, errs := sig("keygen", "--out", p("other")); code != 0 {
		t.Fatal(errs)
	}
	serve := []string{"--key", p("k.key"), "--name", "demo", "--rules", rules, "--state", p("state"), "--token-file", p("api.tokens"), "--poll", "-1s"}

	// Plain HTTP where other machines reach it: refused, unless allowed.
	out, done := sigServe(t, append(serve, "--listen", "0.0.0.0:0")...)
	select {
	case code := <-done:
		if code != 2 || !strings.Contains(out.String(), "--allow-plain-http") || !strings.Contains(out.String(), "--tls-cert") {
			t.Errorf("plain HTTP on 0.0.0.0: exit %d\n%s", code, out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sig serve on 0.0.0.0 without TLS did not refuse")
	}
	allowed := freeAddr(t, "0.0.0.0")
	sigServe(t, append(serve, "--listen", allowed, "--allow-plain-http", "--state", p("state2"))...)
	var st sigserver.Status
	waitUntil(t, "the allowed plain-HTTP server", func() bool {
		code, _ := getJSON("http://127.0.0.1:"+allowed[strings.LastIndex(allowed, ":")+1:]+"/v1/status", "api-secret", &st)
		return code == 200 && st.Latest != nil
	})

	// The central server on loopback: plain HTTP needs no flag there.
	addr := freeAddr(t, "127.0.0.1")
	base := "http://" + addr
	sigServe(t, append(serve, "--listen", addr)...)
	waitUntil(t, "version 1 built", func() bool {
		code, _ := getJSON(base+"/v1/status", "api-secret", &st)
		return code == 200 && st.Latest != nil && st.Latest.Version == 1
	})

	server := []string{"--server", base, "--token-file", p("api.tokens")}
	build := func(out string, extra ...string) (int, string, string) {
		args := append([]string{"build", "--key", p("k.key"), "--name", "demo", "--out", p(out)}, extra...)
		return sig(append(args, rules)...)
	}
	tests := []struct {
		name  string
		out   string
		extra []string
		code  int
		want  string
	}{
		{"a version the server issued", "v1.bundle", append([]string{"--version", "1"}, server...), 2, "the server refused the version: sigserver: version already issued or reserved: demo version 1"},
		{"a free version", "v5.bundle", append([]string{"--version", "5"}, server...), 0, "demo version 5"},
		{"the same again", "v5b.bundle", append([]string{"--version", "5"}, server...), 2, "the next free is 6"},
		{"the next free", "v6.bundle", server, 0, "demo version 6"},
		{"another set", "x.bundle", append([]string{"--name", "prod"}, server...), 2, `this server signs "demo", not "prod"`},
		{"no token", "x.bundle", []string{"--server", base, "--token-file", ""}, 2, "needs the server's API token"},
		{"a wrong token", "x.bundle", []string{"--server", base, "--token-file", p("push.token")}, 2, "unauthorized: wrong token"},
		{"neither version nor server", "x.bundle", nil, 2, "want --key, --name, --version (or --server)"},
	}
	for _, tt := range tests {
		code, stdout, stderr := build(tt.out, tt.extra...)
		if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
			t.Errorf("%s: exit %d, want %d with %q\nstdout: %s\nstderr: %s", tt.name, code, tt.code, tt.want, stdout, stderr)
		}
	}
	if _, err := os.Stat(p("v1.bundle")); !os.IsNotExist(err) {
		t.Error("a bundle was written under a refused version")
	}
	if code, _ := getJSON(base+"/v1/status", "api-secret", &st); code != 200 || st.Reserved != 6 || st.NextVersion != 7 {
		t.Errorf("status after the reservations: %+v", st)
	}

	// Two appliances: app-a trusts the key, app-b another one; both
	// report refusals to the central server.
	keys := func(name string) *signatures.KeySet {
		ks, err := signatures.LoadKeySet(p(name))
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	a, urlA := testAppliance(t, "app-a", keys("k.pub"), base, "api-secret")
	_, urlB := testAppliance(t, "app-b", keys("other.pub"), base, "api-secret")
	waitUntil(t, "app-a on version 1 (pulled)", func() bool { c := a.Current(); return c != nil && c.Manifest.Version == 1 })

	push := func(extra ...string) (int, string, string) { return sig(append([]string{"push"}, extra...)...) }
	code, stdout, stderr := push("--url", urlA, "--url", urlB+"/v1/signatures", "--token-file", p("push.token"), p("v5.bundle"))
	if code != 2 || !strings.Contains(stdout, urlA+"/v1/signatures: installed: runs demo version 5, 1 rules") ||
		!strings.Contains(stdout, urlB+"/v1/signatures: rejected (untrusted_key): signatures: bundle signed by an untrusted key") ||
		!strings.Contains(stdout, "runs no set") || !strings.Contains(stderr, "1 of 2 appliances do not run") {
		t.Errorf("push to app-a and app-b: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	// app-b told the central server why.
	var apps []sigserver.ApplianceStatus
	waitUntil(t, "app-b's refusal at the server", func() bool {
		getJSON(base+"/v1/appliances", "api-secret", &apps)
		for _, s := range apps {
			if s.ID == "app-b" && s.Reason == "untrusted_key" {
				return true
			}
		}
		return false
	})

	os.WriteFile(p("targets.json"), fmt.Appendf(nil, `[{"id": "app-a", "url": %q, "token": "push-secret"}]`, urlA+"/v1/signatures"), 0o600)
	code, stdout, stderr = push("--targets", p("targets.json"), "--json", p("v6.bundle"))
	var res []pushResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != 0 || len(res) != 1 || !res[0].OK ||
		res[0].Result != "installed" || res[0].Version != 6 || res[0].ID != "app-a" {
		t.Errorf("push --targets --json: exit %d, %v\nstdout: %s\nstderr: %s", code, err, stdout, stderr)
	}
	pushTests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"the same bundle again", []string{"--url", urlA, "--token-file", p("push.token"), p("v6.bundle")}, 0, "already active: runs demo version 6"},
		{"an older version", []string{"--url", urlA, "--token-file", p("push.token"), p("v5.bundle")}, 2, "rejected (rollback)"},
		{"a wrong token", []string{"--url", urlA, "--token-file", p("api.tokens"), p("v6.bundle")}, 2, "failed: push to " + urlA + "/v1/signatures: 401 Unauthorized: unauthorized: wrong token"},
		{"nobody listening", []string{"--url", "http://" + freeAddr(t, "127.0.0.1"), "--token-file", p("push.token"), p("v6.bundle")}, 2, "connection refused"},
		{"no target", []string{"--token-file", p("push.token"), p("v6.bundle")}, 2, "want --url URL"},
		{"no token", []string{"--url", urlA, p("v6.bundle")}, 2, "--url needs a token"},
		{"not a URL", []string{"--url", "app-a:8480", "--token-file", p("push.token"), p("v6.bundle")}, 2, "is not an http(s) URL"},
		{"a misspelt targets file", []string{"--targets", p("bad.json"), p("v6.bundle")}, 2, `unknown field "tokn"`},
		{"no bundle", []string{"--url", urlA, "--token-file", p("push.token")}, 2, "want one BUNDLE"},
	}
	os.WriteFile(p("bad.json"), []byte(`[{"id": "app-a", "url": "http://x", "tokn": "t"}]`), 0o600)
	for _, tt := range pushTests {
		code, stdout, stderr := push(tt.args...)
		if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
			t.Errorf("%s: exit %d, want %d with %q\nstdout: %s\nstderr: %s", tt.name, code, tt.code, tt.want, stdout, stderr)
		}
	}
	if v := a.Current().Manifest.Version; v != 6 {
		t.Errorf("app-a runs %d after the refusals", v)
	}
}
