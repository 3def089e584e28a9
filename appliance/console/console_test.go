package console

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/queue"
)

const token = "console-test-token-0123456789"

// testServer is a console in front of a stand-in API that answers 204 to
// whoever Authenticate lets through; tokens can be swapped to model a
// token removed from the configuration.
type testServer struct {
	*httptest.Server
	c      *Console
	now    atomic.Int64
	tokens atomic.Pointer[httpx.Tokens]
	hits   atomic.Int64
}

func newTestServer(t *testing.T, tls bool) *testServer {
	ts := &testServer{}
	ts.now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	tok := httpx.NewTokens(token)
	ts.tokens.Store(&tok)
	ts.c = New(Config{Tokens: tok, Now: func() time.Time { return time.Unix(0, ts.now.Load()) }})
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.hits.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})
	mux := http.NewServeMux()
	mux.Handle("/console/", ts.c.Handler())
	mux.Handle("/v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens := *ts.tokens.Load()
		bearer := httpx.RequireBearer(tokens, api, httpx.BearerOptions{})
		ts.c.Authenticate(tokens, bearer, api).ServeHTTP(w, r)
	}))
	if tls {
		ts.Server = httptest.NewTLSServer(mux)
	} else {
		ts.Server = httptest.NewServer(mux)
	}
	t.Cleanup(ts.Close)
	return ts
}

// client is a browser-like client: a cookie jar, no redirects followed.
func (ts *testServer) client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := *ts.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

func do(t *testing.T, c *http.Client, method, u string, body io.Reader, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func login(t *testing.T, ts *testServer, c *http.Client, tok string, hdr map[string]string) *http.Response {
	t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"}
	for k, v := range hdr {
		h[k] = v
	}
	form := url.Values{"token": {tok}, "next": {"/console/queue"}}.Encode()
	return do(t, c, "POST", ts.URL+"/console/login", strings.NewReader(form), h)
}

// csrf asks /console/session for the session's CSRF token.
func csrf(t *testing.T, ts *testServer, c *http.Client) string {
	t.Helper()
	resp, err := c.Get(ts.URL + "/console/session")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("session: %d %s", resp.StatusCode, b)
	}
	s := string(b)
	i := strings.Index(s, `"csrf": "`)
	if i < 0 {
		t.Fatalf("session: %s", s)
	}
	s = s[i+9:]
	return s[:strings.IndexByte(s, '"')]
}

func TestLoginCookie(t *testing.T) {
	for _, tls := range []bool{false, true} {
		ts := newTestServer(t, tls)
		c := ts.client(t)
		resp := login(t, ts, c, token, nil)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/queue" {
			t.Fatalf("login: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		ck := resp.Header.Get("Set-Cookie")
		for _, want := range []string{CookieName + "=", "Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"} {
			if !strings.Contains(ck, want) {
				t.Errorf("tls %v: cookie %q lacks %s", tls, ck, want)
			}
		}
		if strings.Contains(ck, "; Secure") != tls {
			t.Errorf("tls %v: cookie %q: Secure only under TLS", tls, ck)
		}
		if strings.Contains(ck, token) {
			t.Errorf("the cookie carries the token: %s", ck)
		}
		if r := do(t, c, "GET", ts.URL+"/v1/thing", nil, nil); r.StatusCode != http.StatusNoContent {
			t.Errorf("tls %v: API with the session: %d", tls, r.StatusCode)
		}
	}
}

func TestLoginRefused(t *testing.T) {
	ts := newTestServer(t, false)
	c := ts.client(t)
	resp := login(t, ts, c, "wrong-token-0123456789", nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Set-Cookie") != "" {
		t.Errorf("wrong token: %d, cookie %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
	}
	if r := do(t, c, "GET", ts.URL+"/v1/thing", nil, nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("API after a refused login: %d", r.StatusCode)
	}
	// A form posted from another site does not log in.
	resp = login(t, ts, c, token, map[string]string{"Sec-Fetch-Site": "cross-site"})
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Set-Cookie") != "" {
		t.Errorf("cross-site login: %d, cookie %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
	}
	resp = login(t, ts, c, token, map[string]string{"Sec-Fetch-Site": "", "Origin": "http://evil.example"})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("login from another origin: %d", resp.StatusCode)
	}
	// Not logged in, a page sends the browser to the login page.
	r := do(t, c, "GET", ts.URL+"/console/queue", nil, nil)
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/console/login?next=/console/queue" {
		t.Errorf("page without a session: %d to %q", r.StatusCode, r.Header.Get("Location"))
	}
}

func TestCSRF(t *testing.T) {
	ts := newTestServer(t, false)
	c := ts.client(t)
	login(t, ts, c, token, nil)
	tok := csrf(t, ts, c)
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"no token", map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusForbidden},
		{"wrong token", map[string]string{"Sec-Fetch-Site": "same-origin", CSRFHeader: tok[:len(tok)-1] + "x"}, http.StatusForbidden},
		{"right token, other site", map[string]string{"Sec-Fetch-Site": "same-site", CSRFHeader: tok}, http.StatusForbidden},
		{"right token, other origin", map[string]string{"Origin": "http://127.0.0.1:1", CSRFHeader: tok}, http.StatusForbidden},
		{"right token", map[string]string{"Sec-Fetch-Site": "same-origin", CSRFHeader: tok}, http.StatusNoContent},
		{"right token, no fetch metadata", map[string]string{CSRFHeader: tok}, http.StatusNoContent},
	} {
		if r := do(t, c, "POST", ts.URL+"/v1/datastores/a/pause", nil, tc.hdr); r.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, r.StatusCode, tc.want)
		}
	}
	if n := ts.hits.Load(); n != 2 {
		t.Errorf("the API ran %d times, want 2", n)
	}
	// A bearer token goes to the API's own check, session or not.
	if r := do(t, c, "POST", ts.URL+"/v1/x", nil, map[string]string{"Authorization": "Bearer " + token}); r.StatusCode != http.StatusNoContent {
		t.Errorf("bearer with a cookie: %d", r.StatusCode)
	}
	if r := do(t, c, "GET", ts.URL+"/v1/x", nil, map[string]string{"Authorization": "Bearer wrong-token-0123456789"}); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong bearer token with a good cookie: %d", r.StatusCode)
	}
}

func TestSessionEnds(t *testing.T) {
	ts := newTestServer(t, false)
	c := ts.client(t)
	login(t, ts, c, token, nil)
	tok := csrf(t, ts, c)
	// Logging out needs the CSRF token too.
	if r := do(t, c, "POST", ts.URL+"/console/logout", nil, map[string]string{"Sec-Fetch-Site": "same-origin"}); r.StatusCode != http.StatusForbidden {
		t.Errorf("logout without CSRF: %d", r.StatusCode)
	}
	if r := do(t, c, "POST", ts.URL+"/console/logout", nil, map[string]string{"Sec-Fetch-Site": "same-origin", CSRFHeader: tok}); r.StatusCode != http.StatusSeeOther {
		t.Errorf("logout: %d", r.StatusCode)
	}
	if r := do(t, c, "GET", ts.URL+"/v1/thing", nil, nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after logout: %d", r.StatusCode)
	}

	// Expiry.
	c = ts.client(t)
	login(t, ts, c, token, nil)
	ts.now.Add(int64(12*time.Hour + time.Second))
	if r := do(t, c, "GET", ts.URL+"/v1/thing", nil, nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after 12 h: %d", r.StatusCode)
	}

	// A session is worth its token: removed from the configuration, the
	// session no longer opens anything.
	c = ts.client(t)
	login(t, ts, c, token, nil)
	other := httpx.NewTokens("another-token-0123456789")
	ts.tokens.Store(&other)
	if r := do(t, c, "GET", ts.URL+"/v1/thing", nil, nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("token removed: %d", r.StatusCode)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/console/vms?search=a": "/console/vms?search=a",
		"//evil.example/":       "/console/datastores",
		"/console//evil":        "/console/datastores",
		"https://evil.example":  "/console/datastores",
		"/v1/scans":             "/console/datastores",
		"/console/\\evil":       "/console/datastores",
		"":                      "/console/datastores",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStatic(t *testing.T) {
	ts := newTestServer(t, false)
	c := ts.client(t)
	req, _ := http.NewRequest("GET", ts.URL+"/console/static/vendor/uPlot.iife.min.js", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := c.Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", resp.Header.Get("Content-Encoding"), err)
	}
	body, _ := io.ReadAll(zr)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "/*! https://github.com/leeoniya/uPlot (v1.6.32) */") || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("uPlot: %q, %s", body[:min(60, len(body))], resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q", csp)
	}
	etag := resp.Header.Get("ETag")
	if r := do(t, c, "GET", ts.URL+"/console/static/vendor/uPlot.iife.min.js", nil, map[string]string{"If-None-Match": etag}); r.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation: %d", r.StatusCode)
	}
	follow := ts.Client()
	for _, p := range []string{"/console/static/nope.js", "/console/static/../console.go", "/console/nope", "/console/static/"} {
		if r := do(t, follow, "GET", ts.URL+p, nil, nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d", p, r.StatusCode)
		}
	}
	// Every page of the console is the one shell, for a logged-in browser.
	login(t, ts, c, token, nil)
	for _, p := range Pages {
		if r := do(t, c, "GET", ts.URL+"/console/"+p, nil, nil); r.StatusCode != 200 || r.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("page %s: %d %s", p, r.StatusCode, r.Header.Get("Content-Type"))
		}
	}
}

func TestTrail(t *testing.T) {
	tr := NewTrail(time.Minute)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := func(sec int, bytes, ops int64) queue.Metrics {
		return queue.Metrics{At: t0.Add(time.Duration(sec) * time.Second), Datastores: []queue.DatastoreMetrics{
			{Name: "a", BytesRead: bytes, ReadOps: ops, Budget: queue.Budget{BytesPerSec: 100}, Running: 1}}}
	}
	tr.Record(m(0, 1000, 10)) // the starting point
	tr.Record(m(5, 1500, 15))
	tr.Record(m(10, 2500, 20))
	s := tr.Since("a", time.Time{})
	if len(s) != 2 || s[0].BytesRead != 500 || s[1].BytesRead != 1000 || s[1].ReadOps != 5 || s[1].Interval != 5*time.Second ||
		s[1].BudgetBytesPerSec != 100 || s[1].Running != 1 {
		t.Fatalf("samples %+v", s)
	}
	if st := tr.Start("a"); !st.Equal(t0) {
		t.Errorf("start %s", st)
	}
	// Older than the span: gone.
	tr.Record(m(71, 2600, 21))
	if s := tr.Since("a", time.Time{}); len(s) != 1 || s[0].BytesRead != 100 {
		t.Errorf("after the span: %+v", s)
	}
	if s := tr.Since("a", t0.Add(72*time.Second)); len(s) != 0 {
		t.Errorf("since after the last: %+v", s)
	}
}
