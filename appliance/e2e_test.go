package appliance_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

// The end-to-end test runs the real binary as two processes on loopback: a
// central signature server ("snapscan sig serve") that builds and pushes
// signature-base plus the fixture's planted rules, and an appliance
// ("snapscan serve") that scans 20 VM disk images of five formats on two
// datastores with byte budgets, is killed with SIGKILL in the middle, and
// restarted.

const (
	apiToken = "e2e-api-token-0123456789abcdef"
	sigToken = "e2e-sig-token-0123456789abcdef"
	budgetA  = 1 << 20   // ds-a bytes/s
	budgetB  = 768 << 10 // ds-b bytes/s
)

type proc struct {
	cmd *exec.Cmd
	log string
}

func start(t *testing.T, bin, logPath string, args ...string) *proc {
	t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	p := &proc{cmd: cmd, log: logPath}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type api struct {
	t    *testing.T
	base string
}

// call sends a request with the API token (unless token is "-") and
// decodes a JSON answer into out; it returns the status code.
func (a api) call(method, path, token string, body []byte, out any) int {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.base+path, bytes.NewReader(body))
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil && resp.StatusCode < 300 {
			a.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !ok() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func copyRules(t *testing.T, dst string, srcs ...string) {
	t.Helper()
	for _, src := range srcs {
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".yar") || strings.HasSuffix(p, ".yara")) {
				return err
			}
			rel, _ := filepath.Rel(filepath.Dir(src), p)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			os.MkdirAll(filepath.Join(dst, filepath.Dir(rel)), 0o755)
			return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

type scan struct {
	ID       int64  `json:"id"`
	VM       string `json:"vm"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
	Result   *struct {
		Status     string           `json:"status"`
		Incomplete map[string]int64 `json:"incomplete"`
		Files      int64            `json:"files"`
		Cached     int64            `json:"cached"`
		Findings   int64            `json:"findings"`
		BytesRead  int64            `json:"bytes_read"`
	} `json:"result"`
}

type datastores struct {
	Datastores []struct {
		Name   string `json:"name"`
		Budget struct {
			BytesPerSec float64 `json:"bytes_per_sec"`
		} `json:"budget"`
		Delivered struct {
			BytesPerSec float64 `json:"bytes_per_sec"`
		} `json:"delivered"`
		BytesRead int64 `json:"bytes_read"`
	} `json:"datastores"`
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds the binary and runs two services (not in -short)")
	}
	testenv.NeedTools(t, "mkfs.ext4", "sgdisk", "qemu-img", "sqlite3")
	sigBase := testenv.SignatureBase(t)
	fx := testenv.Fixture(t, "appliance.sh")
	dir := t.TempDir()
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range []string{"sig.log", "appliance.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, l))
				t.Logf("%s (tail):\n%s", l, tail(string(b), 40))
			}
		}
	})
	bin := filepath.Join(dir, "snapscan")
	build := exec.Command("go", "build", "-o", bin, "./cmd/snapscan")
	build.Dir = testenv.RepoRoot()
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("snapscan %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("sig", "keygen", "--out", filepath.Join(dir, "signer"))
	rules := filepath.Join(dir, "rules")
	copyRules(t, rules, filepath.Join(sigBase, "yara"), filepath.Join(fx, "rules"))
	os.WriteFile(filepath.Join(dir, "sig.tokens"), []byte(sigToken+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "api.tokens"), []byte("# operators\n"+apiToken+"\n"), 0o600)

	sigAddr, appAddr := freePort(t), freePort(t)
	start(t, bin, filepath.Join(dir, "sig.log"), "sig", "serve", "--key", filepath.Join(dir, "signer.key"), "--name", "e2e",
		"--rules", rules, "--state", filepath.Join(dir, "sigstate"), "--token-file", filepath.Join(dir, "sig.tokens"),
		"--listen", sigAddr) // loopback: plain HTTP needs no flag

	cfgPath := filepath.Join(dir, "appliance.yaml")
	cfg := fmt.Sprintf(`
server:
  listen: %s
  shutdown_grace: 20s
auth:
  token_files: [api.tokens]
signatures:
  state_dir: state/signatures
  trusted_keys: [signer.pub]
  name: e2e
  server_url: http://%s
  server_token_file: sig.tokens
  receiver_url: http://%s/v1/signatures
  pull_interval: 3s
datastores:
  - name: ds-a
    path: %s
    max_scans: 2
    bytes_per_sec: 1MiB
  - name: ds-b
    path: %s
    bytes_per_sec: 768KiB
database:
  path: state/snapscan.db
queue:
  max_scans: 3
  backoff_base: 1s
  backoff_max: 2s
events:
  log: events.jsonl
log:
  format: text
`, appAddr, sigAddr, appAddr, filepath.Join(fx, "ds-a"), filepath.Join(fx, "ds-b"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	run("serve", "--config", cfgPath, "--check")
	appLog := filepath.Join(dir, "appliance.log")
	app := start(t, bin, appLog, "serve", "--config", cfgPath)
	c := api{t: t, base: "http://" + appAddr}
	t0 := time.Now()
	waitFor(t, "readyz (signatures pushed or pulled)", 90*time.Second, func() bool { return c.call("GET", "/readyz", "-", nil, nil) == 200 })
	t.Logf("ready after %s", time.Since(t0).Round(time.Millisecond))

	// Authentication and malformed requests.
	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
		reason                          string
	}{
		{"health needs no token", "GET", "/healthz", "-", "", 200, ""},
		{"no token", "GET", "/v1/scans", "-", "", 401, "missing"},
		{"wrong token", "GET", "/v1/scans", "wrong-token-but-long-enough", "", 401, "wrong token"},
		{"metrics need a token", "GET", "/metrics", "-", "", 401, ""},
		{"push needs a token", "POST", "/v1/signatures", "-", "x", 401, ""},
		{"malformed JSON", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": [`, 400, "malformed JSON"},
		{"unknown field", "POST", "/v1/scans", apiToken, `{"vm": "x", "disk": []}`, 400, "unknown field"},
		{"no disks", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": []}`, 400, "disks"},
		{"unknown datastore", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": [{"datastore": "nope", "path": "a.img"}]}`, 400, "not a configured datastore"},
		{"path escapes", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": [{"datastore": "ds-a", "path": "../ds-b/vm02.vmdk"}]}`, 400, "clean path"},
		{"missing file", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": [{"datastore": "ds-a", "path": "nothing.img"}]}`, 400, "not a file"},
		{"bad priority", "POST", "/v1/scans", apiToken, `{"vm": "x", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2"}], "priority": "urgent"}`, 400, "priority"},
		{"bad state", "GET", "/v1/scans?state=sleeping", apiToken, "", 400, "state"},
		{"bad time", "GET", "/v1/findings?since=yesterday", apiToken, "", 400, "RFC 3339"},
		{"bad id", "GET", "/v1/scans/abc", apiToken, "", 400, "positive integer"},
		{"unknown scan", "GET", "/v1/scans/99999", apiToken, "", 404, "no scan"},
	} {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		var e struct {
			Error string `json:"error"`
		}
		got := c.call(tc.method, tc.path, tc.token, body, &e)
		if got != tc.want || !strings.Contains(e.Error, tc.reason) {
			t.Errorf("%s: %s %s = %d %q, want %d with %q", tc.name, tc.method, tc.path, got, e.Error, tc.want, tc.reason)
		}
	}
	if b, _ := os.ReadFile(appLog); bytes.Contains(b, []byte("wrong-token-but-long-enough")) {
		t.Errorf("a refused token was logged")
	}

	// Submit the 20 VMs and the corrupt image; one through the CLI client.
	// Even VMs are submitted with the format the fixture made them in
	// (declared, as a hypervisor would), odd ones without (probed).
	type disk struct{ vm, ds, path, format string }
	var disks []disk
	df, _ := os.ReadFile(filepath.Join(fx, "disks.tsv"))
	for i, l := range strings.Split(strings.TrimSpace(string(df)), "\n") {
		f := strings.Split(l, "\t")
		d := disk{f[0], f[1], f[2], ""}
		if i%2 == 1 {
			d.format = strings.ReplaceAll(f[3], "vpc", "vhd") // qemu-img's name for VHD
		}
		disks = append(disks, d)
	}
	if len(disks) != 20 {
		t.Fatalf("fixture lists %d disks, want 20", len(disks))
	}
	disks = append(disks, disk{"broken", "ds-a", "corrupt.qcow2", ""})
	ids := map[string]int64{}
	for i, d := range disks {
		if i < 2 {
			args := []string{"submit", "--url", c.base, "--vm", d.vm, "--disk", d.ds + ":" + d.path, "--json"}
			if d.format != "" {
				args = append(args, "--format", d.format)
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), "SNAPSCAN_TOKEN="+apiToken)
			out, err := cmd.Output()
			var s scan
			if err != nil || json.Unmarshal(out, &s) != nil {
				t.Fatalf("snapscan submit: %v: %s", err, out)
			}
			ids[d.vm] = s.ID
			continue
		}
		body, _ := json.Marshal(map[string]any{"vm": d.vm, "reason": "e2e",
			"disks": []map[string]string{{"datastore": d.ds, "path": d.path, "format": d.format}}})
		var s scan
		if code := c.call("POST", "/v1/scans", apiToken, body, &s); code != 202 {
			t.Fatalf("submit %s: %d %s", d.vm, code, body)
		}
		ids[d.vm] = s.ID
	}
	submitted := time.Now()

	// Watch budgets while scanning; kill the appliance once some jobs are done.
	maxRate := map[string]float64{}
	watch := func() {
		var ds datastores
		if c.call("GET", "/v1/datastores", apiToken, nil, &ds) == 200 {
			for _, d := range ds.Datastores {
				maxRate[d.Name] = max(maxRate[d.Name], d.Delivered.BytesPerSec)
			}
		}
	}
	countDone := func() (done, terminal int) {
		var list struct{ Scans []scan }
		c.call("GET", "/v1/scans?limit=100", apiToken, nil, &list)
		for _, s := range list.Scans {
			switch s.State {
			case "done":
				done++
				terminal++
			case "failed", "cancelled":
				terminal++
			}
		}
		return
	}
	waitFor(t, "a few scans done", 2*time.Minute, func() bool { watch(); d, _ := countDone(); return d >= 5 })
	doneBefore, _ := countDone()
	if doneBefore >= 20 {
		t.Fatalf("all scans finished before the kill: budgets too loose for the test")
	}
	var running struct{ Scans []scan }
	c.call("GET", "/v1/scans?state=running", apiToken, nil, &running)
	t.Logf("SIGKILL after %s: %d done, %d running", time.Since(submitted).Round(time.Millisecond), doneBefore, len(running.Scans))
	app.cmd.Process.Signal(syscall.SIGKILL)
	app.cmd.Wait()

	app = start(t, bin, appLog, "serve", "--config", cfgPath)
	waitFor(t, "restarted appliance ready", 60*time.Second, func() bool { return c.call("GET", "/readyz", "-", nil, nil) == 200 })
	waitFor(t, "every scan to end", 3*time.Minute, func() bool { watch(); _, n := countDone(); return n == len(disks) })
	elapsed := time.Since(submitted)

	// Every job ended once, in the right state; the corrupt one alone failed.
	var list struct{ Scans []scan }
	c.call("GET", "/v1/scans?limit=100", apiToken, nil, &list)
	if len(list.Scans) != len(disks) {
		t.Errorf("%d jobs, want %d (one per VM)", len(list.Scans), len(disks))
	}
	ef, _ := os.ReadFile(filepath.Join(fx, "expected.tsv"))
	want := strings.Split(strings.TrimSpace(string(ef)), "\n")
	sort.Strings(want)
	planted := map[string]bool{}
	for _, w := range want {
		planted[strings.Split(w, "\t")[0]] = true
	}
	var files, cached int64
	for _, s := range list.Scans {
		var full scan
		c.call("GET", fmt.Sprintf("/v1/scans/%d", s.ID), apiToken, nil, &full)
		switch {
		case s.VM == "broken":
			if s.State != "failed" || !strings.Contains(s.Error, "qcow2") || s.Attempts != 1 {
				t.Errorf("corrupt image: state %s after %d attempts, error %q; want failed at once, naming qcow2", s.State, s.Attempts, s.Error)
			}
		case s.State != "done" || full.Result == nil:
			t.Errorf("%s: state %s (error %q), want done with results", s.VM, s.State, s.Error)
		default:
			files += full.Result.Files
			cached += full.Result.Cached
			// Every file of the guests is read: a VM is clean or has
			// findings, never incomplete.
			if wantStatus := map[bool]string{true: "findings", false: "clean"}[planted[s.VM]]; full.Result.Status != wantStatus || len(full.Result.Incomplete) != 0 {
				t.Errorf("%s: result %s (incomplete %v), want %s", s.VM, full.Result.Status, full.Result.Incomplete, wantStatus)
			}
			if full.Result.BytesRead <= 0 {
				t.Errorf("%s: %d bytes read from the datastore", s.VM, full.Result.BytesRead)
			}
		}
		if s.ID != ids[s.VM] {
			t.Errorf("%s: job %d, submitted as %d", s.VM, s.ID, ids[s.VM])
		}
	}
	if cached == 0 {
		t.Errorf("no verdict came from the cache (%d files): identical binaries in 20 VMs should hit it", files)
	}
	t.Logf("%d files checked, %d from the verdict cache", files, cached)

	// Findings equal the plants, each once, through the CLI client, which
	// exits 1 when it listed findings, as scan does.
	cmd := exec.Command(bin, "findings", "--url", c.base, "--json")
	cmd.Env = append(os.Environ(), "SNAPSCAN_TOKEN="+apiToken)
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("snapscan findings: %v (want exit status 1: findings listed)", err)
	}
	var rows []struct{ VM, Rule, Path string }
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("findings JSON: %v: %s", err, out)
	}
	var got []string
	for _, r := range rows {
		got = append(got, r.VM+"\t"+r.Rule+"\t"+r.Path)
	}
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The results are queryable with the sqlite3 tool, one row per job.
	q := exec.Command("sqlite3", filepath.Join(dir, "state/snapscan.db"),
		"SELECT count(*), count(DISTINCT job_id) FROM scan_results; SELECT count(*) FROM scan_findings; SELECT count(*) FROM verdict_cache;")
	sq, err := q.CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3: %v: %s", err, sq)
	}
	lines := strings.Fields(string(sq))
	if len(lines) != 3 || lines[0] != "20|20" || lines[1] != fmt.Sprint(len(want)) || lines[2] == "0" {
		t.Errorf("sqlite3: %q; want 20|20 results, %d findings, a filled verdict cache", lines, len(want))
	}

	// No datastore exceeded its budget: the delivered rate (mean over the
	// last seconds) and the whole run's mean.
	var ds datastores
	c.call("GET", "/v1/datastores", apiToken, nil, &ds)
	for _, d := range ds.Datastores {
		budget := map[string]float64{"ds-a": budgetA, "ds-b": budgetB}[d.Name]
		if d.Budget.BytesPerSec != budget {
			t.Errorf("%s: budget %v, want %v", d.Name, d.Budget.BytesPerSec, budget)
		}
		if maxRate[d.Name] > budget*1.1 {
			t.Errorf("%s: delivered %.0f B/s, budget %.0f", d.Name, maxRate[d.Name], budget)
		}
		t.Logf("%s: peak delivered %.0f B/s of %.0f (%.0f%%); %d bytes read since restart", d.Name, maxRate[d.Name], budget, 100*maxRate[d.Name]/budget, d.BytesRead)
	}

	// Events: one JSON line per finding (a job re-run after the kill may
	// repeat its own), the corrupt disk as an unreadable VM, and the
	// signature set installed.
	ev, _ := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(ev))
	for sc.Scan() {
		var e struct{ Kind, VM, Rule, Path, Disk string }
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Errorf("event line %q: %v", sc.Text(), err)
		}
		switch e.Kind {
		case "finding":
			seen[e.VM+"\t"+e.Rule+"\t"+e.Path] = true
		case "vm_unreadable", "signature_installed":
			seen[e.Kind+"\t"+e.Disk] = true
		default:
			t.Errorf("event line %q: unexpected kind", sc.Text())
		}
	}
	for _, w := range []string{"vm_unreadable\tcorrupt.qcow2", "signature_installed\t"} {
		if !seen[w] {
			t.Errorf("no %q event", w)
		}
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("no event for finding %q", w)
		}
	}

	// Metrics.
	req, _ := http.NewRequest("GET", c.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`snapscan_signature_version{name="e2e"} 1`, `snapscan_signature_server_version{name="e2e"} 1`,
		`snapscan_datastore_budget_bytes_per_second{datastore="ds-a"} 1.048576e+06`,
		`snapscan_queue_depth{class=`, `snapscan_running_jobs 0`, "snapscan_datastore_read_bytes_per_second", "snapscan_queue_wait_seconds_bucket"} {
		if !bytes.Contains(mb, []byte(m)) {
			t.Errorf("metrics lack %q", m)
		}
	}

	// Graceful stop.
	app.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- app.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("appliance exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("appliance did not stop within 30 s of SIGTERM")
	}
	t.Logf("20 VMs + 1 corrupt image in %s (with one SIGKILL and restart)", elapsed.Round(time.Millisecond))
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
