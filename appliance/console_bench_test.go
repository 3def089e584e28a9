package appliance

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// BenchmarkConsole measures the console at the size the issue names:
// 10,000 VMs and 100,000 findings in the appliance's database (put there
// through the results store, one SaveScan of ten findings per VM), served
// by a real "snapscan serve" process on loopback and read by an HTTP
// client holding a console session cookie, as the browser does.
//
//   - page=NAME/load: one load of the page as app.js does it (the page
//     shell and its static files revalidated by ETag, /console/session,
//     then the page's API calls, in parallel where app.js uses
//     Promise.all); page=NAME/REQUEST: one of those calls alone. Each
//     reports p50-ms and p99-ms (time to the last byte, measured by the
//     client on loopback: the server's time plus a loopback round trip)
//     and B/op, the bytes received (status line, headers, body as sent).
//   - static/cold: the first load of a page with an empty browser cache.
//   - scan: the same scan (the appliance fixture's 20 VMs, 20 times over,
//     with signature-base and the fixture's planted rules, the verdict
//     cache off so that every pass does the same work) in two fresh
//     appliance processes on copies of that database, one with no console
//     and one with consoles open and refreshing: an HTTP client per page
//     that refreshes itself (datastores every 5 s, queue every 2 s, events
//     every 5 s, signatures every 10 s, as app.js does), each logged in
//     with its own session. It reports the appliance process's CPU time
//     and peak RSS (sampled from /proc every 50 ms) in both, and their
//     ratios.
//
// bench/console-load.sh runs it and prints a table. The snapscan binary
// is $SNAPSCAN_BIN, or built from the module.
func BenchmarkConsole(b *testing.B) {
	cb := newConsoleBench(b)
	srv := cb.start(b, "pages")
	defer srv.stop(b)
	sess := srv.login(b)

	b.Run("static/cold", func(b *testing.B) {
		var st reqStats
		for range b.N {
			fresh := srv.login(b)
			fresh.etags = map[string]string{}
			fresh.get(b, &st, "/console/vms", http.StatusOK)
			for _, f := range consoleStatic {
				fresh.get(b, &st, f, http.StatusOK)
			}
		}
		st.report(b)
	})
	for _, p := range cb.pages(b, sess) {
		b.Run("page="+p.name, func(b *testing.B) {
			b.Run("load", func(b *testing.B) {
				var st reqStats
				for range b.N {
					t0 := time.Now()
					n := sess.loadShell(b)
					for _, step := range p.steps {
						n += sess.parallel(b, step)
					}
					st.add(time.Since(t0), n)
				}
				st.report(b)
			})
			for _, step := range p.steps {
				for _, r := range step {
					b.Run(r.label(), func(b *testing.B) {
						var st reqStats
						for range b.N {
							t0 := time.Now()
							n := sess.fetch(b, r)
							st.add(time.Since(t0), n)
						}
						st.report(b)
					})
				}
			}
		})
	}
	srv.stop(b)

	b.Run("scan", func(b *testing.B) {
		for range b.N {
			base := cb.scanRun(b, 0)
			with := cb.scanRun(b, len(refreshers))
			b.ReportMetric(base.cpu.Seconds(), "base-cpu-s")
			b.ReportMetric(with.cpu.Seconds(), "console-cpu-s")
			b.ReportMetric(with.cpu.Seconds()/base.cpu.Seconds(), "cpu-ratio")
			b.ReportMetric(float64(base.peakRSS)/(1<<20), "base-rss-MiB")
			b.ReportMetric(float64(with.peakRSS)/(1<<20), "console-rss-MiB")
			b.ReportMetric(float64(with.peakRSS)/float64(base.peakRSS), "rss-ratio")
			b.ReportMetric(base.wall.Seconds(), "base-wall-s")
			b.ReportMetric(with.wall.Seconds(), "console-wall-s")
			b.ReportMetric(float64(with.requests), "console-requests")
			b.ReportMetric(float64(with.bytes)/(1<<10), "console-KiB")
		}
	})
}

// The benchmark's database: benchVMs VMs, benchFindingsPerVM findings
// each, last scanned over the past two days.
const (
	benchVMs           = 10000
	benchFindingsPerVM = 10
	benchRules         = 50
)

var benchTags = []string{"apt", "webshell", "miner", "ransomware", "backdoor", "loader", "hacktool", "exploit", "rare"}

// consoleStatic are the files every page loads (index.html's links).
var consoleStatic = []string{"/console/static/style.css", "/console/static/vendor/uPlot.min.css",
	"/console/static/vendor/uPlot.iife.min.js", "/console/static/app.js", "/console/static/favicon.svg"}

type consoleBench struct {
	bin, fx, dir string
	template     string // the populated database
	bundle       []byte
	expected     map[string]int // fixture VM -> planted findings
}

func newConsoleBench(b *testing.B) *consoleBench {
	cb := &consoleBench{fx: applianceFixture(b), dir: b.TempDir(), expected: map[string]int{}}
	cb.bin = os.Getenv("SNAPSCAN_BIN")
	if cb.bin == "" {
		cb.bin = filepath.Join(cb.dir, "snapscan")
		cmd := exec.Command("go", "build", "-o", cb.bin, "./cmd/snapscan")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build ./cmd/snapscan: %v\n%s", err, out)
		}
	}
	exp, err := os.ReadFile(filepath.Join(cb.fx, "expected.tsv"))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(exp)), "\n") {
		cb.expected[strings.Split(l, "\t")[0]]++
	}

	pub, priv, err := signatures.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	pb, _ := signatures.MarshalPublicKey(pub)
	if err := os.WriteFile(filepath.Join(cb.dir, "signer.pub"), pb, 0o644); err != nil {
		b.Fatal(err)
	}
	// signature-base and the fixture's planted rules: a scan that costs
	// what a real one does.
	files, err := signatures.LoadRuleFiles(filepath.Join(testenv.SignatureBase(b), "yara"), filepath.Join(cb.fx, "rules", "planted.yar"))
	if err != nil {
		b.Fatal(err)
	}
	if cb.bundle, _, err = signatures.Build(signatures.BuildOptions{Name: "bench", Version: 1,
		Externals: signatures.ReferencedExternals(files, scanner.Externals)}, files, priv); err != nil {
		b.Fatal(err)
	}

	// $SNAPSCAN_CONSOLE_DB keeps the populated database between runs
	// (for working on the benchmark: its times are relative to when it
	// was made, so the time filters' checks hold for a day or so).
	cb.template = filepath.Join(cb.dir, "template.db")
	if p := os.Getenv("SNAPSCAN_CONSOLE_DB"); p != "" {
		cb.template = p
		if _, err := os.Stat(p); err == nil {
			return cb
		}
	}
	t0 := time.Now()
	populateResults(b, cb.template)
	b.Logf("put %d VMs and %d findings through the results store in %s", benchVMs, benchVMs*benchFindingsPerVM, time.Since(t0).Round(time.Millisecond))
	return cb
}

// populateResults fills a new SQLite database at path through the results
// store: each VM registered, then one stored scan of it with its findings.
func populateResults(b *testing.B, path string) {
	ctx := context.Background()
	// Unsynced: the benchmark's own fixture, closed (and checkpointed)
	// before the appliance opens a copy.
	db, err := sqlitedb.OpenUnsynced(path)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st, err := sqlite.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	for i := range benchVMs {
		id := fmt.Sprintf("vm-%05d", i)
		disk := results.Disk{Datastore: []string{"ds-a", "ds-b"}[i%2], Path: "bench/" + id + ".qcow2"}
		if err := st.PutVM(ctx, results.VM{ID: id, Name: fmt.Sprintf("app-%s-%05d", []string{"web", "db", "cache", "batch"}[i%4], i),
			Source: "bench", Disks: []results.Disk{disk}}); err != nil {
			b.Fatal(err)
		}
		// Stored in the order they finished, as an appliance stores them.
		fin := now.Add(-time.Duration(benchVMs-1-i) * 48 * time.Hour / benchVMs)
		s := &results.Scan{JobID: 1_000_000_000 + int64(i), VM: id, Status: results.StatusFindings, SigName: "bench", SigVersion: 1,
			RulesID: "bench-1", StartedAt: fin.Add(-3 * time.Minute), FinishedAt: fin, Files: 40000, Bytes: 8 << 30,
			BytesRead: 9 << 30, ReadOps: 70000, Disks: []results.Disk{disk},
			Volumes: []results.Volume{{Disk: "disk0", Volume: "p1", FileSystem: "ext4", Files: 40000, Bytes: 8 << 30}}}
		for k := range benchFindingsPerVM {
			n := i*benchFindingsPerVM + k
			tag := benchTags[n%(len(benchTags)-1)]
			if n%10007 == 0 {
				tag = "rare" // about ten findings in all
			}
			s.Findings = append(s.Findings, results.Finding{Datastore: disk.Datastore, Disk: "disk0", Volume: "p1",
				Path: fmt.Sprintf("/var/www/html/uploads/%04d/%02d/shell-%d.php", 2020+k%6, 1+k, n), Size: int64(1000 + n%50000),
				SHA256: fmt.Sprintf("%064x", n*7919), Namespace: "signature-base", Rule: fmt.Sprintf("Bench_Rule_%02d", n%benchRules),
				Tags: []string{tag, "bench"}, Meta: []results.Meta{{Key: "description", Value: "benchmark rule " + strconv.Itoa(n%benchRules)},
					{Key: "author", Value: "snapscan bench"}, {Key: "score", Value: int64(60 + n%40)}},
				Strings: []results.StringMatch{{Identifier: "$s1", Offset: int64(n % 4096), Data: []byte("eval(base64_decode($_POST['x']))")},
					{Identifier: "$s2", Offset: int64(4096 + n%4096), Data: []byte("<?php @system($_GET['c']); ?>")}},
				FoundAt: fin})
		}
		if _, err := st.SaveScan(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

// benchServer is one "snapscan serve" process.
type benchServer struct {
	cb   *consoleBench
	cmd  *exec.Cmd
	base string
	dir  string
	done chan error
}

const benchToken = "bench-console-token-0123456789"

// start runs snapscan serve on a copy of the populated database and
// installs the benchmark's signature set through the push API.
func (cb *consoleBench) start(b *testing.B, name string) *benchServer {
	b.Helper()
	dir := filepath.Join(cb.dir, name)
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o700); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(cb.template)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "db", "snapscan.db"), data, 0o600); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`server: {listen: %q}
auth: {tokens: [%s]}
signatures: {state_dir: %q, trusted_keys: [%q]}
datastores:
  - {name: ds-a, path: %q, max_scans: 2}
  - {name: ds-b, path: %q, max_scans: 2}
database: {path: %q}
scanner: {no_cache: true}
events: {log: none}
log: {level: warn}
`, addr, benchToken, filepath.Join(dir, "sig"), filepath.Join(cb.dir, "signer.pub"),
		filepath.Join(cb.fx, "ds-a"), filepath.Join(cb.fx, "ds-b"), filepath.Join(dir, "db", "snapscan.db"))
	if err := os.WriteFile(filepath.Join(dir, "app.yaml"), []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	s := &benchServer{cb: cb, base: "http://" + addr, dir: dir, done: make(chan error, 1)}
	s.cmd = exec.Command(cb.bin, "serve", "--config", filepath.Join(dir, "app.yaml"))
	logf, err := os.Create(filepath.Join(dir, "app.log"))
	if err != nil {
		b.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	b.Cleanup(func() { s.stop(b) })
	c := &http.Client{Timeout: 30 * time.Second}
	s.waitFor(b, c, "/healthz", "")
	req, _ := http.NewRequest("POST", s.base+"/v1/signatures", strings.NewReader(string(cb.bundle)))
	req.Header.Set("Authorization", "Bearer "+benchToken)
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		b.Fatalf("push signatures: %s: %s", resp.Status, body)
	}
	s.waitFor(b, c, "/readyz", "")
	return s
}

func (s *benchServer) waitFor(b *testing.B, c *http.Client, path, _ string) {
	b.Helper()
	end := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get(s.base + path)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-s.done:
			s.done <- err
			log, _ := os.ReadFile(filepath.Join(s.dir, "app.log"))
			b.Fatalf("snapscan serve exited: %v\n%s", err, log)
		default:
		}
		if time.Now().After(end) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "app.log"))
			b.Fatalf("%s not ready within a minute\n%s", path, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the process (SIGTERM: a graceful shutdown) and waits for it.
func (s *benchServer) stop(b *testing.B) {
	if s.cmd == nil {
		return
	}
	cmd := s.cmd
	s.cmd = nil
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-s.done
		b.Errorf("snapscan serve did not stop within a minute of SIGINT")
	}
}

// A consoleSession is one browser: its cookie jar, its CSRF token and the
// ETags it holds.
type consoleSession struct {
	srv   *benchServer
	c     *http.Client
	etags map[string]string
}

func (s *benchServer) login(b *testing.B) *consoleSession {
	b.Helper()
	jar, _ := cookiejar.New(nil)
	cs := &consoleSession{srv: s, etags: map[string]string{},
		c: &http.Client{Jar: jar, Timeout: 60 * time.Second, Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 8},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	resp, err := cs.c.PostForm(s.base+"/console/login", url.Values{"token": {benchToken}, "next": {"/console/vms"}})
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		b.Fatalf("console login: %s", resp.Status)
	}
	return cs
}

// consoleReq is one request a page makes, and what its answer must hold.
type consoleReq struct {
	path  string
	check func(b *testing.B, body []byte)
}

func (r consoleReq) label() string {
	l := strings.TrimPrefix(r.path, "/v1/")
	if i := strings.Index(l, "since="); i >= 0 {
		l = l[:i] + "since=..." // the time changes with each run
	}
	return strings.NewReplacer("/", ".", " ", "_").Replace(l)
}

// get fetches path as a browser would (gzip accepted, ETag revalidation)
// and returns the body, adding the time and bytes to st.
func (cs *consoleSession) get(b *testing.B, st *reqStats, path string, want int) []byte {
	t0 := time.Now()
	body, n, code := cs.do(b, path)
	if st != nil {
		st.add(time.Since(t0), n)
	}
	if code != want && !(want == http.StatusOK && code == http.StatusNotModified) {
		b.Fatalf("GET %s: %d, want %d: %.300s", path, code, want, body)
	}
	return body
}

// do sends one GET and returns the body, the bytes received and the
// status.
func (cs *consoleSession) do(b *testing.B, path string) ([]byte, int, int) {
	req, _ := http.NewRequest("GET", cs.srv.base+path, nil)
	req.Header.Set("Accept-Encoding", "gzip, deflate, br")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	if e, ok := cs.etags[path]; ok {
		req.Header.Set("If-None-Match", e)
	}
	resp, err := cs.c.Do(req)
	if err != nil {
		b.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatalf("GET %s: %v", path, err)
	}
	if e := resp.Header.Get("ETag"); e != "" {
		cs.etags[path] = e
	}
	n, body, err := received(resp, body)
	if err != nil {
		b.Fatalf("GET %s: %v", path, err)
	}
	return body, n, resp.StatusCode
}

// received is the bytes an answer took on the wire (status line, headers,
// body as sent) and its body decompressed.
func received(resp *http.Response, body []byte) (int, []byte, error) {
	var hdr countWriter
	fmt.Fprintf(&hdr, "HTTP/1.1 %s\r\n", resp.Status)
	resp.Header.Write(&hdr)
	n := int(hdr) + 2 + len(body)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return n, nil, err
		}
		if body, err = io.ReadAll(zr); err != nil {
			return n, nil, err
		}
	}
	return n, body, nil
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// loadShell loads a page's shell as a browser with a warm cache does:
// the page and its files revalidated, then the session's CSRF token.
func (cs *consoleSession) loadShell(b *testing.B) int {
	n := 0
	for _, p := range append([]string{"/console/vms"}, consoleStatic...) {
		_, m, code := cs.do(b, p)
		if code != http.StatusOK && code != http.StatusNotModified {
			b.Fatalf("GET %s: %d", p, code)
		}
		n += m
	}
	_, m, code := cs.do(b, "/console/session")
	if code != http.StatusOK {
		b.Fatalf("GET /console/session: %d", code)
	}
	return n + m
}

// fetch makes one API request and checks its answer.
func (cs *consoleSession) fetch(b *testing.B, r consoleReq) int {
	body, n, code := cs.do(b, r.path)
	if code != http.StatusOK {
		b.Fatalf("GET %s: %d: %.300s", r.path, code, body)
	}
	if r.check != nil {
		r.check(b, body)
	}
	return n
}

// parallel makes a page's requests at once, as Promise.all does.
func (cs *consoleSession) parallel(b *testing.B, rs []consoleReq) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, n, code := cs.doShared(r.path)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if code != http.StatusOK {
				b.Errorf("GET %s: %d: %.300s", r.path, code, body)
			} else if r.check != nil {
				r.check(b, body)
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return total
}

// doShared is do for concurrent callers: no ETags (API answers have
// none).
func (cs *consoleSession) doShared(path string) ([]byte, int, int) {
	req, _ := http.NewRequest("GET", cs.srv.base+path, nil)
	req.Header.Set("Accept-Encoding", "gzip, deflate, br")
	resp, err := cs.c.Do(req)
	if err != nil {
		return []byte(err.Error()), 0, 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n, body, err := received(resp, body)
	if err != nil {
		return []byte(err.Error()), n, 0
	}
	return body, n, resp.StatusCode
}

// consolePage is one page as app.js loads it: steps one after the other,
// the requests of a step at once.
type consolePage struct {
	name  string
	steps [][]consoleReq
}

// decodeAs returns a check that decodes the answer into a new T and passes
// it to f.
func decodeAs[T any](f func(b *testing.B, v *T)) func(*testing.B, []byte) {
	return func(b *testing.B, body []byte) {
		v := new(T)
		if err := json.Unmarshal(body, v); err != nil {
			b.Fatalf("%v: %.300s", err, body)
		}
		f(b, v)
	}
}

type findingsAnswer struct {
	Findings  []results.Finding `json:"findings"`
	NextAfter int64             `json:"next_after"`
}

type vmsAnswer struct {
	VMs       []results.VM `json:"vms"`
	NextAfter string       `json:"next_after"`
}

// pages are the console's pages and the API calls each makes, in
// app.js's order, with the page sizes it asks for. Each check holds the
// answer to what 10,000 VMs and 100,000 findings must give.
func (cb *consoleBench) pages(b *testing.B, cs *consoleSession) []consolePage {
	since := url.QueryEscape(time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano))
	findings := func(what string, n int, next bool, each func(results.Finding) bool) func(*testing.B, []byte) {
		return decodeAs(func(b *testing.B, a *findingsAnswer) {
			if len(a.Findings) != n || (a.NextAfter != 0) != next {
				b.Fatalf("%s: %d findings (next %d), want %d (next page: %v)", what, len(a.Findings), a.NextAfter, n, next)
			}
			for _, f := range a.Findings {
				if each != nil && !each(f) || len(f.Meta) != 3 || len(f.Strings) != 2 || f.SHA256 == "" {
					b.Fatalf("%s: finding %+v does not match the filter", what, f)
				}
			}
		})
	}
	vms := func(what string, n int, next bool) func(*testing.B, []byte) {
		return decodeAs(func(b *testing.B, a *vmsAnswer) {
			if len(a.VMs) != n || (a.NextAfter != "") != next {
				b.Fatalf("%s: %d VMs (next %q), want %d (next page: %v)", what, len(a.VMs), a.NextAfter, n, next)
			}
		})
	}
	lastWeek := url.QueryEscape(time.Now().Add(-7 * 24 * time.Hour).UTC().Format(time.RFC3339))
	dayAgo := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second) // as the query gives it
	history := func(ds string) consoleReq {
		return consoleReq{path: "/v1/datastores/" + ds + "/history?since=" + since}
	}
	return []consolePage{
		{"datastores", [][]consoleReq{{{path: "/v1/datastores"}}, {history("ds-a"), history("ds-b"),
			{path: "/v1/queue?datastore=ds-a&limit=10"}, {path: "/v1/queue?datastore=ds-b&limit=10"}}}},
		{"queue", [][]consoleReq{{{path: "/v1/queue?limit=200"}, {path: "/v1/scans?state=failed&limit=50"}}}},
		{"vms", [][]consoleReq{{{path: "/v1/signatures"}}, {{path: "/v1/vms?limit=100", check: vms("first page", 100, true)}}}},
		{"vms-search", [][]consoleReq{{{path: "/v1/signatures"}}, {{path: "/v1/vms?search=ApP-DB-0&limit=100", check: decodeAs(func(b *testing.B, a *vmsAnswer) {
			// app-db-0NNNN: every fourth VM below 10,000 → 2,500, a page of 100.
			if len(a.VMs) != 100 || a.NextAfter == "" || !strings.HasPrefix(a.VMs[0].Name, "app-db-0") {
				b.Fatalf("search: %d VMs, first %+v", len(a.VMs), a.VMs[0])
			}
		})}}}},
		{"vms-last-page", [][]consoleReq{{{path: "/v1/signatures"}}, {{path: "/v1/vms?after=vm-09949&limit=100", check: vms("last page", 50, false)}}}},
		{"findings", [][]consoleReq{{{path: "/v1/findings?limit=100", check: findings("all", 100, true, nil)}}}},
		{"findings-vm", [][]consoleReq{{{path: "/v1/findings?vm=vm-04321&limit=100", check: findings("by VM", benchFindingsPerVM, false,
			func(f results.Finding) bool { return f.VM == "vm-04321" })}}}},
		{"findings-rule", [][]consoleReq{{{path: "/v1/findings?rule=Bench_Rule_07&limit=100", check: findings("by rule", 100, true,
			func(f results.Finding) bool { return f.Rule == "Bench_Rule_07" })}}}},
		{"findings-tag", [][]consoleReq{{{path: "/v1/findings?tag=miner&limit=100", check: findings("by tag", 100, true,
			func(f results.Finding) bool { return slices.Contains(f.Tags, "miner") })}}}},
		{"findings-rare-tag", [][]consoleReq{{{path: "/v1/findings?tag=rare&limit=100", check: decodeAs(func(b *testing.B, a *findingsAnswer) {
			if len(a.Findings) < 5 || len(a.Findings) > 20 || a.NextAfter != 0 {
				b.Fatalf("rare tag: %d findings, want the ten or so", len(a.Findings))
			}
		})}}}},
		{"findings-time", [][]consoleReq{{{path: "/v1/findings?since=" + url.QueryEscape(dayAgo.Add(-time.Hour).Format(time.RFC3339)) +
			"&until=" + url.QueryEscape(dayAgo.Format(time.RFC3339)) + "&limit=100", check: findings("by time", 100, true,
			func(f results.Finding) bool {
				return !f.FoundAt.Before(dayAgo.Add(-time.Hour)) && f.FoundAt.Before(dayAgo)
			})}}}},
		{"findings-vm-rule-tag", [][]consoleReq{{{path: "/v1/findings?vm=vm-00042&rule=Bench_Rule_20&tag=backdoor&limit=100", check: findings("by VM, rule and tag", 1, false,
			func(f results.Finding) bool { return f.VM == "vm-00042" && f.Rule == "Bench_Rule_20" })}}}},
		{"findings-last-page", [][]consoleReq{{{path: "/v1/findings?after=99950&limit=100", check: findings("last page", 50, false, nil)}}}},
		{"signatures", [][]consoleReq{{{path: "/v1/signatures"}}}},
		{"events", [][]consoleReq{{{path: "/v1/events"}}}},
		{"report-period", [][]consoleReq{{{path: "/v1/reports/period?since=" + lastWeek, check: func(b *testing.B, body []byte) {
			if !strings.Contains(string(body), "10,000") && !strings.Contains(string(body), "10000") {
				b.Fatalf("period report does not count the 10,000 VMs: %.500s", body)
			}
		}}}}},
	}
}

// reqStats collects the times and sizes of one kind of request.
type reqStats struct {
	times []time.Duration
	bytes int
}

func (s *reqStats) add(d time.Duration, n int) { s.times = append(s.times, d); s.bytes += n }

func (s *reqStats) report(b *testing.B) {
	if len(s.times) == 0 {
		return
	}
	t := slices.Clone(s.times)
	slices.Sort(t)
	q := func(f float64) float64 { return float64(t[int(f*float64(len(t)-1)+0.5)].Microseconds()) / 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(s.bytes)/float64(len(s.times)), "B/req")
}

// refreshers are the console's pages that refresh themselves while
// visible, with app.js's periods and requests.
var refreshers = []struct {
	page  string
	every time.Duration
	paths []string
}{
	{"datastores", 5 * time.Second, []string{"/v1/datastores", "/v1/datastores/ds-a/history?since=SINCE", "/v1/datastores/ds-b/history?since=SINCE",
		"/v1/queue?datastore=ds-a&limit=10", "/v1/queue?datastore=ds-b&limit=10"}},
	{"queue", 2 * time.Second, []string{"/v1/queue?limit=200", "/v1/scans?state=failed&limit=50"}},
	{"events", 5 * time.Second, []string{"/v1/events"}},
	{"signatures", 10 * time.Second, []string{"/v1/signatures"}},
}

// scanPasses is how many times the scan goes over the fixture's 20 VMs
// (one pass takes about a second here): $SNAPSCAN_CONSOLE_PASSES, or 20.
func scanPasses() int {
	if n, err := strconv.Atoi(os.Getenv("SNAPSCAN_CONSOLE_PASSES")); err == nil && n > 0 {
		return n
	}
	return 20
}

// scanResult is what one scan cost the appliance process.
type scanResult struct {
	cpu      time.Duration
	peakRSS  int64
	wall     time.Duration
	requests int
	bytes    int
}

// scanRun starts a fresh appliance on a copy of the database, opens
// consoles refreshing pages (0: none), scans the fixture's 20 VMs and
// measures the process.
func (cb *consoleBench) scanRun(b *testing.B, consoles int) scanResult {
	srv := cb.start(b, fmt.Sprintf("scan-%d-%d", consoles, time.Now().UnixNano()))
	defer srv.stop(b)
	pid := srv.cmd.Process.Pid
	time.Sleep(2 * time.Second) // settle: the start's work is not the scan's

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var res scanResult
	var cerr error
	for i := range consoles {
		p := refreshers[i%len(refreshers)]
		cs := srv.login(b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := true; ; first = false {
				t0 := time.Now()
				since := url.QueryEscape(t0.Add(-time.Hour).UTC().Format(time.RFC3339Nano))
				var paths []string
				if first { // the page's first load: the shell, then its calls
					paths = append([]string{"/console/" + p.page, "/console/session"}, consoleStatic...)
				}
				for _, path := range p.paths {
					paths = append(paths, strings.Replace(path, "SINCE", since, 1))
				}
				for _, path := range paths {
					body, n, code := cs.doShared(path)
					mu.Lock()
					res.requests++
					res.bytes += n
					if code != http.StatusOK && cerr == nil && ctx.Err() == nil {
						cerr = fmt.Errorf("console %s: GET %s: %d %.200s", p.page, path, code, body)
					}
					mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(t0.Add(p.every))):
				}
			}
		}()
	}
	stopConsoles := func() { cancel(); wg.Wait() }
	defer stopConsoles()

	// The scan: every fixture VM, through the API.
	cpu0 := procCPU(b, pid)
	var peak int64
	sampleDone := make(chan struct{})
	sampleStop := make(chan struct{})
	go func() {
		defer close(sampleDone)
		for {
			if r := procRSS(pid); r > peak {
				peak = r
			}
			select {
			case <-sampleStop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	for range scanPasses() {
		ids := srv.submitFixture(b)
		srv.waitScans(b, ids, cb.expected)
	}
	res.wall = time.Since(t0)
	res.cpu = procCPU(b, pid) - cpu0
	close(sampleStop)
	<-sampleDone
	res.peakRSS = peak
	stopConsoles()
	if cerr != nil {
		b.Fatal(cerr)
	}
	return res
}

// submitFixture submits a scan of each of the fixture's VMs.
func (s *benchServer) submitFixture(b *testing.B) map[string]int64 {
	data, err := os.ReadFile(filepath.Join(s.cb.fx, "disks.tsv"))
	if err != nil {
		b.Fatal(err)
	}
	ids := map[string]int64{}
	c := &http.Client{Timeout: 30 * time.Second}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Split(l, "\t")
		body, _ := json.Marshal(map[string]any{"vm": f[0], "disks": []map[string]string{{"datastore": f[1], "path": f[2]}}})
		req, _ := http.NewRequest("POST", s.base+"/v1/scans", strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+benchToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var v ScanView
		json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("submit %s: %s", f[0], resp.Status)
		}
		ids[f[0]] = v.ID
	}
	return ids
}

// waitScans waits for every job to end and checks the outcome: done,
// with the fixture's planted findings (the corrupt image's job fails, as
// the fixture means it to).
func (s *benchServer) waitScans(b *testing.B, ids map[string]int64, expected map[string]int) {
	c := &http.Client{Timeout: 30 * time.Second}
	end := time.Now().Add(10 * time.Minute)
	for vm, id := range ids {
		for {
			req, _ := http.NewRequest("GET", s.base+"/v1/scans/"+strconv.FormatInt(id, 10), nil)
			req.Header.Set("Authorization", "Bearer "+benchToken)
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			var v ScanView
			json.NewDecoder(bufio.NewReader(resp.Body)).Decode(&v)
			resp.Body.Close()
			if v.State.Terminal() {
				planted := 0
				for _, f := range v.Findings {
					if strings.HasPrefix(f.Rule, "SnapscanE2E_") {
						planted++
					}
				}
				if want := expected[vm]; planted != want || want > 0 && v.State != "done" {
					b.Fatalf("scan %d of %s: %s %s, %d planted findings, want %d", id, vm, v.State, v.Error, planted, want)
				}
				break
			}
			if time.Now().After(end) {
				b.Fatalf("scan %d of %s did not end within 10 minutes", id, vm)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// procCPU is a process's user and system CPU time.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (in parentheses, may hold spaces).
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procRSS is a process's resident set in bytes (0 when gone).
func procRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
