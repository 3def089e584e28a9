package appliance

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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
					c.Events.Webhook = WebhookConfig{URL: hook.URL + "/siem?key=secret", TokenFile: tokFile, Timeout: 10 * time.Second, Retries: tt.retries}
				},
				// Retries wait 5, 10, 20 ms rather than 1, 2, 4 s.
				prepare: func(a *Appliance) { a.events.retryMin = 5 * time.Millisecond },
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
			ev := app.a.events
			eventually(t, "every finding delivered or given up", 30*time.Second, func() bool {
				return ev.HookSent.Load()+ev.HookFailed.Load() == int64(n)
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
		yaml: "events: {buffer: 1, webhook: {url: " + hook.URL + ", timeout: 2m, retries: 0}}\nqueue: {max_scans: 4}\n",
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
	ev := app.a.events
	// At most one event in flight and one buffered; the rest dropped.
	if d := ev.HookDropped.Load(); d < n-2 || d > n {
		t.Errorf("%d of %d events dropped, want at least %d", d, n, n-2)
	}
	if v := app.metric(`snapscan_events_total{outcome="dropped",sink="webhook"}`); v != float64(ev.HookDropped.Load()) || v < 1 {
		t.Errorf("dropped metric %v, counter %d", v, ev.HookDropped.Load())
	}
	release()
	eventually(t, "the held events to be delivered", 30*time.Second, func() bool {
		return ev.HookSent.Load()+ev.HookDropped.Load()+ev.HookFailed.Load() == n
	})
	if attempts, events, _ := hook.snapshot(); attempts > 2 || len(events) != int(ev.HookSent.Load()) {
		t.Errorf("webhook got %d POSTs (%d events); sent counter %d", attempts, len(events), ev.HookSent.Load())
	}
}
