package appliance

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// The in-process tests run a real Appliance (SQLite database, queue,
// scanner, receiver) on a loopback listener and talk to it over HTTP.

const testToken = "test-api-token-0123456789"

// testApp is a running appliance and what the tests need to drive it.
type testApp struct {
	t      testing.TB
	a      *Appliance
	dir    string
	fx     string // the appliance.sh fixture
	key    ed25519.PrivateKey
	base   string // http(s)://127.0.0.1:port
	client *http.Client
	cfg    *Config
	ln     net.Listener
	cancel context.CancelFunc
	served chan error
	// stopped is set once Serve's result was taken.
	stopped bool
	// lastError is the error message of the last call's answer, if it
	// was not a success.
	lastError string
	// events is the appliance's event log (JSON lines), with appOpts.events.
	events *eventLog
}

// eventLog is an event log stream tests read while the appliance writes.
type eventLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *eventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is what was written so far.
func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// applianceFixture returns the appliance.sh fixture: 20 VMs on ds-a and
// ds-b with planted matches (see testdata/appliance.sh).
func applianceFixture(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "mkfs.ext4", "sgdisk", "qemu-img")
	return testenv.Fixture(t, "appliance.sh")
}

// appOpts shape a test appliance.
type appOpts struct {
	yaml    string           // appended to the configuration file
	edit    func(*Config)    // applied to the parsed configuration
	prepare func(*Appliance) // runs after New, before Serve
	client  *http.Client     // set for HTTPS: the API client
	events  bool             // keep the event log (JSON lines) in testApp.events
}

// startApp writes a configuration over the appliance.sh fixture's two
// datastores, opens the appliance and serves it on a loopback port until
// the test ends.
func startApp(t testing.TB, o appOpts) *testApp {
	t.Helper()
	fx := applianceFixture(t)
	dir := t.TempDir()
	pub, priv, err := signatures.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pb, err := signatures.MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "signer.pub"), pb, 0o644); err != nil {
		t.Fatal(err)
	}
	// Paths quoted: test names put commas and colons in them.
	cfgText := fmt.Sprintf(`
auth:
  tokens: [%s]
signatures:
  state_dir: %q
  trusted_keys: [%q]
  name: test
datastores:
  - {name: ds-a, path: %q}
  - {name: ds-b, path: %q}
database:
  path: %q
%s`, testToken, filepath.Join(dir, "sig"), filepath.Join(dir, "signer.pub"),
		filepath.Join(fx, "ds-a"), filepath.Join(fx, "ds-b"), filepath.Join(dir, "db", "snapscan.db"), o.yaml)
	cfg, err := Parse([]byte(cfgText))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	if o.edit != nil {
		o.edit(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	opts := Options{Listener: ln, Logger: testLogger(t)}
	var evlog *eventLog
	if o.events {
		evlog = &eventLog{}
		opts.EventLog = evlog
	}
	a, err := New(ctx, cfg, opts)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	if o.prepare != nil {
		o.prepare(a)
	}
	ta := &testApp{t: t, a: a, dir: dir, fx: fx, key: priv, cfg: cfg, ln: ln, base: "http://" + ln.Addr().String(), client: &http.Client{Timeout: 30 * time.Second}, events: evlog}
	if o.client != nil {
		ta.base, ta.client = "https://"+ln.Addr().String(), o.client
	}
	sctx, cancel := context.WithCancel(ctx)
	ta.cancel, ta.served = cancel, make(chan error, 1)
	go func() { ta.served <- a.Serve(sctx) }()
	t.Cleanup(ta.stop)
	return ta
}

// stop ends Serve (the graceful shutdown), which closes the appliance.
func (ta *testApp) stop() {
	if ta.stopped {
		return
	}
	ta.cancel()
	if err := ta.wait(90 * time.Second); err != nil {
		ta.t.Errorf("Serve: %v", err)
	}
	if err := ta.a.Close(); err != nil {
		ta.t.Errorf("Close: %v", err)
	}
}

// wait waits up to d for Serve to return and returns its error; it fails
// the test if Serve did not return in time.
func (ta *testApp) wait(d time.Duration) error {
	ta.t.Helper()
	ta.stopped = true
	select {
	case err := <-ta.served:
		return err
	case <-time.After(d):
		ta.t.Fatalf("Serve did not return within %s", d)
		return nil
	}
}

// reopen opens the appliance's database and state again, as a restart
// would, without serving it: for looking at what a stopped appliance left.
func (ta *testApp) reopen() *Appliance {
	ta.t.Helper()
	a, err := New(context.Background(), ta.cfg, Options{Logger: testLogger(ta.t)})
	if err != nil {
		ta.t.Fatal(err)
	}
	ta.t.Cleanup(func() { a.Close() })
	return a
}

// install signs the fixture's planted rules as version v of set "test"
// and installs them through the appliance's signature receiver, as a push
// or a pull would.
func (ta *testApp) install(v uint64) {
	ta.t.Helper()
	ta.installRules(v, filepath.Join(ta.fx, "rules", "planted.yar"))
}

// installRules is install with other rule files.
func (ta *testApp) installRules(v uint64, paths ...string) {
	ta.t.Helper()
	files, err := signatures.LoadRuleFiles(paths...)
	if err != nil {
		ta.t.Fatal(err)
	}
	data, _, err := signatures.Build(signatures.BuildOptions{Name: "test", Version: v,
		Externals: signatures.ReferencedExternals(files, scanner.Externals)}, files, ta.key)
	if err != nil {
		ta.t.Fatal(err)
	}
	if _, err := ta.a.recv.Install(context.Background(), data); err != nil {
		ta.t.Fatalf("install version %d: %v", v, err)
	}
}

// call sends a request bearing token (none when empty) and decodes a
// JSON answer into out; it returns the status code, or 0 and the error
// when the request did not get an answer.
func (ta *testApp) call(method, path, token string, body any, out any) (int, error) {
	ta.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, ta.base+path, rd)
	if err != nil {
		ta.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := ta.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	ta.lastError = ""
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil {
			ta.lastError = e.Error
		}
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			ta.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, nil
}

// submit enqueues a scan of each fixture VM named, through the API.
func (ta *testApp) submit(vms ...string) map[string]int64 {
	ta.t.Helper()
	disks := ta.disks()
	ids := map[string]int64{}
	for _, vm := range vms {
		d, ok := disks[vm]
		if !ok {
			ta.t.Fatalf("no fixture VM %s", vm)
		}
		body := map[string]any{"vm": vm, "disks": []map[string]string{{"datastore": d.Datastore, "path": d.Path}}}
		var s ScanView
		if code, err := ta.call("POST", "/v1/scans", testToken, body, &s); code != http.StatusAccepted {
			ta.t.Fatalf("submit %s: %d %v", vm, code, err)
		}
		ids[vm] = s.ID
	}
	return ids
}

// disks maps each fixture VM to its disk.
func (ta *testApp) disks() map[string]queue.Disk {
	ta.t.Helper()
	b, err := os.ReadFile(filepath.Join(ta.fx, "disks.tsv"))
	if err != nil {
		ta.t.Fatal(err)
	}
	out := map[string]queue.Disk{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(l, "\t")
		out[f[0]] = queue.Disk{Datastore: f[1], Path: f[2]}
	}
	return out
}

// waitJobs waits until every job id is in a terminal state and returns
// them.
func (ta *testApp) waitJobs(ids ...int64) []queue.Job {
	ta.t.Helper()
	var jobs []queue.Job
	eventually(ta.t, fmt.Sprintf("%d jobs to end", len(ids)), 60*time.Second, func() bool {
		jobs = jobs[:0]
		for _, id := range ids {
			j, err := ta.a.q.Job(context.Background(), id)
			if err != nil {
				ta.t.Fatal(err)
			}
			if !j.State.Terminal() {
				return false
			}
			jobs = append(jobs, j)
		}
		return true
	})
	return jobs
}

func eventually(t testing.TB, what string, d time.Duration, ok func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !ok() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLogger keeps the appliance's log and shows it if the test fails.
func testLogger(t testing.TB) *slog.Logger {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if t.Failed() {
			t.Logf("appliance log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// metric returns the value of one sample line of /metrics ("name{labels}"),
// or -1 when absent.
func (ta *testApp) metric(sample string) float64 {
	ta.t.Helper()
	req, _ := http.NewRequest("GET", ta.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := ta.client.Do(req)
	if err != nil {
		ta.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, sample+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}
