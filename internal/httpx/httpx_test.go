package httpx_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
)

// logBuffer is a log destination safe for the server's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// call sends one request and returns the status, headers and body.
func call(t *testing.T, c *http.Client, method, url string, header http.Header, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func errorOf(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("answer %q is not {\"error\": ...}: %v", body, err)
	}
	return e.Error
}

const secret = "s3cr3t-t0ken-never-logged"

func TestRequireBearer(t *testing.T) {
	// A token file as an operator writes one: a comment, blank lines,
	// trailing spaces and a CRLF line end.
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("# API tokens\n\n"+secret+"  \r\n\tsecond-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := httpx.ReadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lg, logs := newLog()
	srv := httptest.NewServer(httpx.RequireBearer(httpx.NewTokens(toks...), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "in")
	}), httpx.BearerOptions{Log: lg}))
	defer srv.Close()

	tests := []struct {
		name    string
		headers []string
		ok      bool
		why     string // in the refusal
		wwwAuth string // in WWW-Authenticate
	}{
		{"canonical", []string{"Bearer " + secret}, true, "", ""},
		{"lower-case scheme", []string{"bearer " + secret}, true, "", ""},
		{"upper-case scheme", []string{"BEARER " + secret}, true, "", ""},
		{"mixed-case scheme", []string{"bEaReR " + secret}, true, "", ""},
		{"extra spaces", []string{"  Bearer    " + secret + "   "}, true, "", ""},
		{"tab", []string{"Bearer\t" + secret}, true, "", ""},
		{"second token of the file", []string{"Bearer second-token"}, true, "", ""},
		{"no header", nil, false, "missing credentials", `Bearer realm="snapscan"`},
		{"empty header", []string{""}, false, "missing credentials", `Bearer realm="snapscan"`},
		{"scheme only", []string{"Bearer"}, false, "not a bearer token", `error="invalid_request"`},
		{"scheme and spaces", []string{"Bearer    "}, false, "not a bearer token", `error="invalid_request"`},
		{"basic", []string{"Basic " + secret}, false, "not a bearer token", `error="invalid_request"`},
		{"token without scheme", []string{secret}, false, "not a bearer token", `error="invalid_request"`},
		{"scheme glued to token", []string{"Bearer" + secret}, false, "not a bearer token", ""},
		{"wrong token", []string{"Bearer wrong"}, false, "wrong token", `error="invalid_token"`},
		{"prefix of the token", []string{"Bearer " + secret[:10]}, false, "wrong token", `error="invalid_token"`},
		{"token with a suffix", []string{"Bearer " + secret + "x"}, false, "wrong token", `error="invalid_token"`},
		{"the comment line", []string{"Bearer # API tokens"}, false, "wrong token", ""},
		{"two headers", []string{"Bearer wrong", "Bearer " + secret}, false, "more than one", `error="invalid_request"`},
	}
	for _, tt := range tests {
		h := http.Header{}
		for _, v := range tt.headers {
			h.Add("Authorization", v)
		}
		code, hdr, body := call(t, srv.Client(), "GET", srv.URL+"/x", h, "")
		if tt.ok {
			if code != 200 || body != "in" {
				t.Errorf("%s: %d %q, want 200", tt.name, code, body)
			}
			continue
		}
		if code != http.StatusUnauthorized || !strings.Contains(errorOf(t, body), "unauthorized: "+tt.why) {
			t.Errorf("%s: %d %q, want 401 saying %q", tt.name, code, body, tt.why)
		}
		if w := hdr.Get("WWW-Authenticate"); !strings.HasPrefix(w, `Bearer realm="snapscan"`) || !strings.Contains(w, tt.wwwAuth) {
			t.Errorf("%s: WWW-Authenticate %q, want %q", tt.name, w, tt.wwwAuth)
		}
	}
	l := logs.String()
	if strings.Contains(l, secret[:10]) || strings.Contains(l, "second-token") {
		t.Errorf("a token reached the log:\n%s", l)
	}
	if n := strings.Count(l, "unauthorized request"); n != 12 {
		t.Errorf("%d refusals logged, want 12:\n%s", n, l)
	}
	if !strings.Contains(l, "reason=\"wrong token\"") || !strings.Contains(l, "remote=127.0.0.1:") {
		t.Errorf("refusals logged without reason or remote address:\n%s", l)
	}
}

func TestTokens(t *testing.T) {
	var none httpx.Tokens
	if none.Match("x") || none.Len() != 0 {
		t.Error("a nil set matched")
	}
	empty := httpx.NewTokens("", "  ", "\t")
	if empty.Len() != 0 || empty.Match("") || empty.Match(" ") {
		t.Error("empty tokens were kept")
	}
	a := httpx.NewTokens("alpha")
	ab := a.With(" beta ")
	if !ab.Match("alpha") || !ab.Match("beta") || a.Match("beta") || ab.Len() != 2 {
		t.Error("With changed the original or lost a token")
	}
}

// TestClientCert: with ClientCert, a verified client certificate stands
// for a token; a connection without one still needs the token.
func TestClientCert(t *testing.T) {
	ca, caKey := newCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := httptest.NewUnstartedServer(httpx.RequireBearer(httpx.NewTokens(secret), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "in")
	}), httpx.BearerOptions{ClientCert: true}))
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	defer srv.Close()

	withCert := srv.Client()
	tr := withCert.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{leaf(t, ca, caKey)}
	withCert = &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()

	if code, _, _ := call(t, withCert, "GET", srv.URL, nil, ""); code != 200 {
		t.Errorf("verified client certificate: %d", code)
	}
	if code, _, _ := call(t, srv.Client(), "GET", srv.URL, nil, ""); code != 401 {
		t.Errorf("no certificate, no token: %d", code)
	}
	if code, _, _ := call(t, srv.Client(), "GET", srv.URL, http.Header{"Authorization": {"bearer " + secret}}, ""); code != 200 {
		t.Errorf("no certificate, token: %d", code)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func leaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tls.Certificate {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func TestHandle(t *testing.T) {
	lg, logs := newLog()
	mux := http.NewServeMux()
	mux.Handle("GET /client", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		return httpx.NewError(http.StatusConflict, "scan 7 already finished", errors.New("row in /var/lib/snapscan/db"))
	}))
	mux.Handle("GET /plain", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("open /etc/snapscan/signing.key: permission denied")
	}))
	mux.Handle("GET /header", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		return &httpx.Error{Code: http.StatusServiceUnavailable, Msg: "shutting down", Header: http.Header{"Retry-After": {"5"}}}
	}))
	mux.Handle("GET /late", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		httpx.WriteJSON(w, http.StatusOK, map[string]int{"n": 1})
		return errors.New("failed after answering")
	}))
	mux.Handle("GET /wrapped", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("listing: %w", httpx.BadRequest("limit: %q is not a number", "x"))
	}))
	mux.Handle("GET /ok", httpx.Handle(lg, func(w http.ResponseWriter, r *http.Request) error {
		httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": "a"})
		return nil
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(logs, "server: ", 0)
	srv.Start()
	defer srv.Close()

	tests := []struct {
		path, msg string
		code      int
	}{
		{"/client", "scan 7 already finished", 409},
		{"/plain", "internal error", 500},
		{"/header", "shutting down", 503},
		{"/wrapped", `limit: "x" is not a number`, 400},
	}
	for _, tt := range tests {
		code, hdr, body := call(t, srv.Client(), "GET", srv.URL+tt.path, nil, "")
		if code != tt.code || errorOf(t, body) != tt.msg {
			t.Errorf("%s: %d %s, want %d %q", tt.path, code, body, tt.code, tt.msg)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" || hdr.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Content-Type %q, Cache-Control %q", tt.path, ct, hdr.Get("Cache-Control"))
		}
		if strings.Contains(body, "/var/lib") || strings.Contains(body, "/etc/") {
			t.Errorf("%s: detail sent to the client: %s", tt.path, body)
		}
	}
	if _, hdr, _ := call(t, srv.Client(), "GET", srv.URL+"/header", nil, ""); hdr.Get("Retry-After") != "5" {
		t.Error("Error.Header not sent")
	}
	code, _, body := call(t, srv.Client(), "GET", srv.URL+"/late", nil, "")
	if code != 200 || strings.Contains(body, "error") {
		t.Errorf("late error changed the answer: %d %s", code, body)
	}
	if code, _, body := call(t, srv.Client(), "GET", srv.URL+"/ok", nil, ""); code != 201 || !strings.Contains(body, `"id": "a"`) {
		t.Errorf("/ok: %d %s", code, body)
	}
	l := logs.String()
	for _, want := range []string{"level=DEBUG msg=\"request failed\" method=GET path=/client", "row in /var/lib/snapscan/db",
		"level=ERROR msg=\"request failed\" method=GET path=/plain", "permission denied", `err="failed after answering" answered=true`} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q:\n%s", want, l)
		}
	}
	if strings.Contains(l, "superfluous") {
		t.Errorf("an answer was written twice:\n%s", l)
	}
}

type submit struct {
	VM    string `json:"vm"`
	Disks []struct {
		Datastore string `json:"datastore"`
		Path      string `json:"path"`
	} `json:"disks"`
	Labels map[string]string `json:"labels,omitempty"`
	Count  int               `json:"count,omitempty"`
}

func TestDecodeJSON(t *testing.T) {
	srv := httptest.NewServer(httpx.Handle(nil, func(w http.ResponseWriter, r *http.Request) error {
		var req submit
		if err := httpx.DecodeJSON(w, r, &req, 256); err != nil {
			return err
		}
		httpx.WriteJSON(w, http.StatusOK, req)
		return nil
	}))
	defer srv.Close()
	js := http.Header{"Content-Type": {"application/json; charset=utf-8"}}
	tests := []struct {
		name   string
		header http.Header
		body   string
		code   int
		msg    string // in the error
	}{
		{"good", js, `{"vm": "a", "disks": [{"datastore": "d", "path": "p"}]}`, 200, ""},
		{"good without Content-Type", nil, `{"vm": "a"}`, 200, ""},
		{"good with trailing whitespace", js, "{\"vm\": \"a\"}\n\t ", 200, ""},
		{"map keys that differ in case", js, `{"vm": "a", "labels": {"Env": "x", "env": "y"}}`, 400, "labels.env: name given twice"},
		{"unknown field", js, `{"vm": "a", "priorty": "rescan"}`, 400, `unknown field "priorty"`},
		{"unknown nested field", js, `{"vm": "a", "disks": [{"path": "p", "format": "raw"}]}`, 400, `unknown field "format"`},
		{"duplicate name", js, `{"vm": "a", "vm": "b"}`, 400, "vm: name given twice"},
		{"duplicate name in other case", js, `{"vm": "a", "VM": "b"}`, 400, "VM: name given twice"},
		{"duplicate nested name", js, `{"vm": "a", "disks": [{"path": "p"}, {"path": "p", "path": "/etc/shadow"}]}`, 400, "disks[1].path: name given twice"},
		{"same name in two objects", js, `{"vm": "a", "disks": [{"path": "p"}, {"path": "q"}]}`, 200, ""},
		{"two values", js, `{"vm": "a"} {"vm": "b"}`, 400, "more than one value (the first ends at byte 11)"},
		{"trailing garbage", js, `{"vm": "a"} x`, 400, "malformed JSON"},
		{"empty", js, "", 400, "empty body"},
		{"only spaces", js, "  \n", 400, "empty body"},
		{"syntax error", js, `{"vm": "a",}`, 400, "malformed JSON at byte"},
		{"truncated", js, `{"vm": "a"`, 400, "malformed JSON"},
		{"wrong type", js, `{"vm": 7}`, 400, "vm: want a string, got number"},
		{"wrong nested type", js, `{"vm": "a", "disks": [{"path": 1}]}`, 400, "disks.path: want a string, got number"},
		{"wrong top-level type", js, `["vm"]`, 400, "the body: want an object, got array"},
		{"negative count ok", js, `{"vm": "a", "count": -1}`, 200, ""},
		{"fraction", js, `{"vm": "a", "count": 1.5}`, 400, "count: want an integer, got number 1.5"},
		{"too large", js, `{"vm": "` + strings.Repeat("x", 300) + `"}`, 413, "body larger than 256 bytes"},
		{"form", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, `vm=a`, 415, "application/json"},
		{"bad Content-Type", http.Header{"Content-Type": {"application/json; ="}}, `{"vm": "a"}`, 415, "application/json"},
		{"json-like type", http.Header{"Content-Type": {"application/jsonp"}}, `{"vm": "a"}`, 415, "application/json"},
	}
	for _, tt := range tests {
		code, _, body := call(t, srv.Client(), "POST", srv.URL, tt.header, tt.body)
		if code != tt.code {
			t.Errorf("%s: %d %s, want %d", tt.name, code, body, tt.code)
			continue
		}
		if tt.code != 200 && !strings.Contains(errorOf(t, body), tt.msg) {
			t.Errorf("%s: error %q, want %q", tt.name, errorOf(t, body), tt.msg)
		}
	}
}

func TestStrictQuery(t *testing.T) {
	srv := httptest.NewServer(httpx.Handle(nil, func(w http.ResponseWriter, r *http.Request) error {
		q, err := httpx.StrictQuery(r, "scan", "limit", "since", "vm")
		if err != nil {
			return err
		}
		limit, err := q.Int("limit", 100, 1, 1000)
		if err != nil {
			return err
		}
		since, err := q.Time("since")
		if err != nil {
			return err
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"limit": limit, "since": since, "vm": q.Get("vm"), "has_vm": q.Has("vm")})
		return nil
	}))
	defer srv.Close()
	tests := []struct {
		query string
		code  int
		want  string // in the body
	}{
		{"", 200, `"limit": 100`},
		{"limit=5&since=2024-01-02T15:04:05Z&vm=web%201", 200, `"vm": "web 1"`},
		{"vm=", 200, `"has_vm": true`},
		{"job=1%20OR%201=1", 400, `unknown query parameter \"job\" (this endpoint takes: scan, limit, since, vm)`},
		{"vm=a&zz=1&aa=2", 400, `unknown query parameters \"aa\", \"zz\"`},
		{"limit=5&limit=6", 400, `query parameter \"limit\" given 2 times`},
		{"limit=0", 400, `limit: \"0\" is not an integer in [1, 1000]`},
		{"limit=ten", 400, `limit: \"ten\" is not an integer`},
		{"since=yesterday", 400, `since: \"yesterday\" is not an RFC 3339 time`},
		{"vm=%zz", 400, "query: invalid URL escape"},
		{"vm=a;limit=5", 400, "query: invalid semicolon separator"},
	}
	for _, tt := range tests {
		code, _, body := call(t, srv.Client(), "GET", srv.URL+"/?"+tt.query, nil, "")
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("?%s: %d %s, want %d with %s", tt.query, code, body, tt.code, tt.want)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := httpx.ReadTokenFile(write("ok", "  one  \r\n#two\n\n three\t"))
	if err != nil || strings.Join(got, ",") != "one,three" {
		t.Errorf("got %q, %v", got, err)
	}
	bad := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"only comments", write("comments", "# a\n\n   \n# b\n"), "no tokens"},
		{"empty", write("empty", ""), "no tokens"},
		{"too large", write("large", strings.Repeat("x", 1<<20+1)), "larger than"},
		{"a folder", dir, "is a directory"},
	}
	for _, tt := range bad {
		_, err := httpx.ReadTokenFile(tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
			continue
		}
		if n := strings.Count(err.Error(), tt.path); n != 1 {
			t.Errorf("%s: %q names the file %d times", tt.name, err, n)
		}
	}
}

func TestLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{{"127.0.0.1:0", true}, {"0.0.0.0:0", false}, {"[::]:0", false}} {
		ln, err := net.Listen("tcp", tt.addr)
		if err != nil {
			t.Logf("%s: %v", tt.addr, err) // no IPv6 here
			continue
		}
		if got := httpx.IsLoopback(ln.Addr()); got != tt.want {
			t.Errorf("IsLoopback(%s) = %v", ln.Addr(), got)
		}
		ln.Close()
	}
	ul, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	if !httpx.IsLoopback(ul.Addr()) {
		t.Error("a Unix socket is not loopback")
	}
	ctx := context.Background()
	for _, tt := range []struct {
		addr string
		want bool
		err  bool
	}{
		{"127.0.0.1:8443", true, false}, {"127.9.9.9:1", true, false}, {"[::1]:8443", true, false},
		{"localhost:8443", true, false}, {":8443", false, false}, {"0.0.0.0:8443", false, false},
		{"[::]:8443", false, false}, {"192.0.2.7:8443", false, false}, {"8443", false, true},
	} {
		got, err := httpx.LoopbackAddr(ctx, tt.addr)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("LoopbackAddr(%q) = %v, %v", tt.addr, got, err)
		}
	}
}

func TestReadCertPool(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	dir := t.TempDir()
	good := filepath.Join(dir, "ca.pem")
	var pemBuf bytes.Buffer
	fmt.Fprintf(&pemBuf, "-----BEGIN CERTIFICATE-----\n")
	b64 := encodeBase64(srv.Certificate().Raw)
	for len(b64) > 64 {
		fmt.Fprintln(&pemBuf, b64[:64])
		b64 = b64[64:]
	}
	fmt.Fprintf(&pemBuf, "%s\n-----END CERTIFICATE-----\n", b64)
	os.WriteFile(good, pemBuf.Bytes(), 0o644)
	pool, err := httpx.ReadCertPool(good)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if code, _, _ := call(t, c, "GET", srv.URL, nil, ""); code != 404 {
		t.Errorf("a client trusting the pool got %d", code)
	}
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o644)
	if _, err := httpx.ReadCertPool(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificates") {
		t.Errorf("bad file: %v", err)
	}
}
