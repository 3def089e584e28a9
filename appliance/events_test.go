package appliance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/signatures"
)

// hookServer is a real webhook receiver on loopback that records what it
// gets and answers as the test says.
type hookServer struct {
	*httptest.Server
	mu       sync.Mutex
	attempts int
	events   []hookEvent
	auth     []string
	// answer gives the status of attempt n (1-based); block, when not
	// nil, holds every request until closed.
	answer func(n int) int
	block  chan struct{}
}

type hookEvent struct {
	Kind, VM, Rule, Path string
	SigVersion           uint64 `json:"sig_version"`
}

func newHookServer(t *testing.T, answer func(int) int, block chan struct{}) *hookServer {
	h := &hookServer{answer: answer, block: block}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.block != nil {
			select {
			case <-h.block:
			case <-r.Context().Done():
				return
			}
		}
		b, _ := io.ReadAll(r.Body)
		var ev hookEvent
		err := json.Unmarshal(b, &ev)
		h.mu.Lock()
		h.attempts++
		code := h.answer(h.attempts)
		h.auth = append(h.auth, r.Header.Get("Authorization"))
		if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			code = http.StatusTeapot // the test sees it as a failure
		} else if code < 300 {
			h.events = append(h.events, ev)
		}
		h.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(h.Close)
	return h
}

// sink returns the event sink's counters by name.
func (ta *testApp) sink(name string) events.SinkStats {
	ta.t.Helper()
	for _, s := range ta.a.events.Stats() {
		if s.Name == name {
			return s
		}
	}
	ta.t.Fatalf("no event sink %q", name)
	return events.SinkStats{}
}

func (h *hookServer) snapshot() (attempts int, events []hookEvent, auth []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.attempts, slices.Clone(h.events), slices.Clone(h.auth)
}

// expectedFindings reads the fixture's planted findings of the given VMs
// as "vm<TAB>rule<TAB>path".
func expectedFindings(t *testing.T, fx string, vms ...string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fx, "expected.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if slices.Contains(vms, strings.Split(l, "\t")[0]) {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// TestWebhook scans real images and checks what a real webhook receiver
// gets: each finding as a JSON POST with the token, retries bounded by
// events.webhook.retries, and no retry of a refusal.
func TestWebhook(t *testing.T) {
	const hookToken = "hook-token-0123456789"
	// vm03: plant A; vm04: plant B; vm12: both (see testdata/appliance.sh).
	vms := []string{"vm03", "vm04", "vm12"}
	tests := []struct {
		name         string
		retries      int
		answer       func(n int) int
		wantAttempts int // per finding
		wantSent     bool
	}{
		{"accepts", 3, func(int) int { return http.StatusNoContent }, 1, true},
		{"fails, retried up to the limit", 2, func(int) int { return http.StatusInternalServerError }, 3, false},
		{"unavailable once, then accepts", 2, func(n int) int {
			if n%2 == 1 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		}, 2, true},
		{"refuses: not retried", 3, func(int) int { return http.StatusBadRequest }, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hook := newHookServer(t, tt.answer, nil)
			tokFile := filepath.Join(t.TempDir(), "hook.token")
			os.WriteFile(tokFile, []byte(hookToken+"\n"), 0o600)
			app := startApp(t, appOpts{
				yaml: "queue: {max_scans: 1}\n",
				edit: func(c *Config) {
					// Retries wait 5, 10, 20 ms rather than 1, 2, 4 s;
					// only findings, so that POSTs count findings.
					c.Events.Webhook = WebhookConfig{URL: hook.URL + "/siem?key=secret", TokenFile: tokFile, Timeout: 10 * time.Second,
						Retries: tt.retries, RetryWait: 5 * time.Millisecond, Kinds: []events.Kind{events.KindFinding}}
				},
			})
			app.install(1)
			// One scan at a time, so the "once unavailable" answers
			// alternate per finding.
			ids := app.submit(vms...)
			for _, j := range app.waitJobs(ids["vm03"], ids["vm04"], ids["vm12"]) {
				if j.State != "done" {
					t.Fatalf("job %d (%s): %s: %s", j.ID, j.VM, j.State, j.Error)
				}
			}
			want := expectedFindings(t, app.fx, vms...)
			n := len(want)
			eventually(t, "every finding delivered or given up", 30*time.Second, func() bool {
				st := app.sink("webhook")
				return st.Sent+st.Failed == int64(n)
			})
			attempts, events, auth := hook.snapshot()
			if attempts != n*tt.wantAttempts {
				t.Errorf("%d POSTs for %d findings, want %d each", attempts, n, tt.wantAttempts)
			}
			for _, a := range auth {
				if a != "Bearer "+hookToken {
					t.Errorf("Authorization %q", a)
					break
				}
			}
			var got []string
			for _, e := range events {
				if e.Kind != "finding" || e.SigVersion != 1 {
					t.Errorf("event %+v", e)
				}
				got = append(got, e.VM+"\t"+e.Rule+"\t"+e.Path)
			}
			slices.Sort(got)
			sent, failed := int64(0), int64(n)
			if tt.wantSent {
				sent, failed = int64(n), 0
				if !slices.Equal(got, want) {
					t.Errorf("webhook got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			} else if len(got) != 0 {
				t.Errorf("webhook accepted %v", got)
			}
			for _, m := range []struct {
				sample string
				want   int64
			}{
				{`snapscan_events_total{outcome="sent",sink="webhook"}`, sent},
				{`snapscan_events_total{outcome="failed",sink="webhook"}`, failed},
				{`snapscan_events_total{outcome="dropped",sink="webhook"}`, 0},
			} {
				if v := app.metric(m.sample); v != float64(m.want) {
					t.Errorf("%s = %v, want %d", m.sample, v, m.want)
				}
			}
		})
	}
}

// TestWebhookSlow: a webhook that does not answer never holds up
// scanning. With a buffer of one event, every scan completes while the
// webhook hangs; what does not fit is dropped, counted, and exported.
func TestWebhookSlow(t *testing.T) {
	block := make(chan struct{})
	hook := newHookServer(t, func(int) int { return http.StatusOK }, block)
	var released sync.Once
	release := func() { released.Do(func() { close(block) }) }
	t.Cleanup(release) // before the appliance stops (cleanups run last first)
	app := startApp(t, appOpts{
		yaml: "events: {buffer: 1, webhook: {url: " + hook.URL + ", timeout: 2m, retries: 0, kinds: [finding]}}\nqueue: {max_scans: 4}\n",
	})
	app.install(1)
	var vms []string
	for vm := range app.disks() {
		vms = append(vms, vm)
	}
	slices.Sort(vms)
	ids := app.submit(vms...)
	var idList []int64
	for _, id := range ids {
		idList = append(idList, id)
	}
	start := time.Now()
	for _, j := range app.waitJobs(idList...) {
		if j.State != "done" {
			t.Errorf("job %d (%s): %s: %s", j.ID, j.VM, j.State, j.Error)
		}
	}
	t.Logf("%d scans done in %s with the webhook hanging", len(idList), time.Since(start).Round(time.Millisecond))
	n := int64(len(expectedFindings(t, app.fx, vms...)))
	// At most one event in flight and one buffered; the rest dropped.
	if d := app.sink("webhook").Dropped; d < n-2 || d > n {
		t.Errorf("%d of %d events dropped, want at least %d", d, n, n-2)
	}
	if v, d := app.metric(`snapscan_events_total{outcome="dropped",sink="webhook"}`), app.sink("webhook").Dropped; v != float64(d) || v < 1 {
		t.Errorf("dropped metric %v, counter %d", v, d)
	}
	release()
	eventually(t, "the held events to be delivered", 30*time.Second, func() bool {
		st := app.sink("webhook")
		return st.Sent+st.Dropped+st.Failed == n
	})
	if attempts, evs, _ := hook.snapshot(); attempts > 2 || len(evs) != int(app.sink("webhook").Sent) {
		t.Errorf("webhook got %d POSTs (%d events); sent counter %d", attempts, len(evs), app.sink("webhook").Sent)
	}
}

// TestSIEMEvents scans real images with a syslog collector on loopback
// (TCP, octet-counted RFC 5424 carrying CEF) and checks what reaches it:
// the signature update, every planted finding naming the appliance, VM,
// datastore, disk, volume, path, SHA-256, rule and signature version, and
// the corrupt disk as an unreadable VM.
func TestSIEMEvents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	frames := make(chan string, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			var n int
			if _, err := fmt.Fscanf(r, "%d ", &n); err != nil {
				return
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return
			}
			frames <- string(b)
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Signatures.ApplianceID = "appl-e2e"
		c.Events.Syslog = []events.SyslogConfig{{Address: ln.Addr().String()}}
	}})
	app.install(1)
	vms := []string{"vm03", "vm04", "vm12"}
	ids := app.submit(vms...)
	var bad ScanView
	if code, err := app.call("POST", "/v1/scans", testToken, map[string]any{"vm": "broken",
		"disks": []map[string]string{{"datastore": "ds-a", "path": "corrupt.qcow2"}}}, &bad); code != http.StatusAccepted {
		t.Fatalf("submit corrupt disk: %d %v", code, err)
	}
	app.waitJobs(ids["vm03"], ids["vm04"], ids["vm12"], bad.ID)

	want := expectedFindings(t, app.fx, vms...)
	disks := app.disks()
	var got []string
	var installed, unreadable string
	deadline := time.After(30 * time.Second)
	for len(got) < len(want) || installed == "" || unreadable == "" {
		var f string
		select {
		case f = <-frames:
		case <-deadline:
			t.Fatalf("after 30 s: %d of %d findings, installed %q, unreadable %q", len(got), len(want), installed, unreadable)
		}
		// RFC 5424: <PRI>1 TIME HOST APP PROCID MSGID SD MSG.
		h := strings.SplitN(f, " ", 8)
		if len(h) != 8 || !strings.HasSuffix(h[0], ">1") || h[2] != "appl-e2e" || h[3] != "snapscan" || h[6] != "-" {
			t.Fatalf("syslog header of %q", f)
		}
		cef := h[7]
		switch h[5] {
		case "signature_installed":
			installed = cef
		case "vm_unreadable":
			unreadable = cef
		case "finding":
			vm := field(cef, "dhost")
			d := disks[vm]
			for k, v := range map[string]string{"dvchost": "appl-e2e", "cs5": d.Datastore, "cs6": d.Path, "cn1": "1",
				"flexString2": "test", "cs2": "planted.yar", "cn2": fmt.Sprint(ids[vm])} {
				if got := field(cef, k); got != v {
					t.Errorf("%s = %q, want %q in %s", k, got, v, cef)
				}
			}
			if len(field(cef, "fileHash")) != 64 || field(cef, "flexString1") == "" || field(cef, "externalId") == "" {
				t.Errorf("no SHA-256, volume or finding id in %s", cef)
			}
			got = append(got, vm+"\t"+field(cef, "cs1")+"\t"+field(cef, "filePath"))
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("findings at the collector:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.HasPrefix(installed, "CEF:0|snapscan|snapscan|") || !strings.Contains(installed, "|signature_installed|Signature update installed|1|") ||
		field(installed, "cn1") != "1" || field(installed, "flexString2") != "test" {
		t.Errorf("signature event: %s", installed)
	}
	if field(unreadable, "dhost") != "broken" || field(unreadable, "cs6") != "corrupt.qcow2" || field(unreadable, "cs5") != "ds-a" ||
		!strings.Contains(field(unreadable, "reason"), "corrupt.qcow2") {
		t.Errorf("unreadable VM event: %s", unreadable)
	}
	// A signature update refused: version 1 again, signed by the trusted
	// key but with other rules (a replay under the active version).
	rule := filepath.Join(t.TempDir(), "other.yar")
	if err := os.WriteFile(rule, []byte("rule other { condition: false }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := signatures.LoadRuleFiles(rule)
	if err != nil {
		t.Fatal(err)
	}
	replay, _, err := signatures.Build(signatures.BuildOptions{Name: "test", Version: 1}, files, app.key)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", app.base+"/v1/signatures", bytes.NewReader(replay))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := app.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Fatalf("replayed version pushed: %s, want it refused", resp.Status)
	}
	var refused string
	for refused == "" {
		select {
		case f := <-frames:
			if h := strings.SplitN(f, " ", 8); len(h) == 8 && h[5] == "signature_refused" {
				refused = h[7]
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no signature_refused event within 30 s of a refused push")
		}
	}
	if !strings.Contains(refused, "|signature_refused|Signature update refused|") || field(refused, "dvchost") != "appl-e2e" ||
		field(refused, "flexString2") != "test" || field(refused, "cn1") != "1" || field(refused, "reason") == "" {
		t.Errorf("signature refused event: %s", refused)
	}
	st := app.sink("tcp://" + ln.Addr().String())
	if st.Dropped != 0 || st.Failed != 0 || !st.Connected {
		t.Errorf("sink %+v", st)
	}
	if v := app.metric(`snapscan_events_connected{sink="tcp://` + ln.Addr().String() + `"}`); v != 1 {
		t.Errorf("snapscan_events_connected = %v", v)
	}
}

// field returns a CEF extension value: from "key=" to the next " k=",
// unescaped (the appliance's values here hold no escapes but \= and \\).
func field(cef, key string) string {
	i := strings.Index(cef, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := cef[i+len(key)+2:]
	if j := regexp.MustCompile(` [A-Za-z0-9]+=`).FindStringIndex(v); j != nil {
		v = v[:j[0]]
	}
	return strings.NewReplacer(`\=`, "=", `\\`, `\`).Replace(v)
}
