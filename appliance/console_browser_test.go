package appliance

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/queue"
)

var updateConsoleDocs = flag.Bool("update-console-docs", false, "write the console's screenshots to docs/console/ for the README")

// browser is headless Chromium from Debian's package, driven through the
// DevTools protocol, with everything the page writes to its console kept.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

// startBrowser starts Chromium with a fresh profile and no network beyond
// what the page asks for, until the test ends.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	testenv.NeedTools(t, "chromium")
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath("chromium"),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx}
	// Start the browser and subscribe to the console before any page.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		acancel()
		t.Fatalf("chromium: %v", err)
	}
	msgs := chromedp.Console(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.msgs = append(b.msgs, m)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		acancel()
		wg.Wait()
	})
	return b
}

// run runs actions with a bound; a failure fails the test.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\nconsole: %v", what, err, b.take())
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, expr string, opts ...chromedp.EvaluateOption) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		b.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// poll waits, as until does (30 s at most, the page shown on failure),
// for a JavaScript expression to be truthy. 10 s was too short under
// -race beside other packages on two cores: the events page, which
// refreshes every 5 s, had not yet shown the dead collector's drops.
func (b *browser) poll(what, expr string) {
	b.t.Helper()
	b.until(what, "!!("+expr+")")
}

// until waits (30 s at most: under -race, with other packages' tests
// beside it on two cores, a navigation and the API call it makes took
// longer than 10 s) for an expression to be truthy across a navigation the
// page started itself. A failure says where the page was and what it
// showed.
func (b *browser) until(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
			where, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 2000)`))
			cancel()
			b.t.Fatalf("%s: %s still false (%v); the page:\n%s", what, expr, err, where)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// take returns and forgets what the pages wrote to the console (after a
// moment, so that the messages of what just happened have arrived).
func (b *browser) take() []chromedp.ConsoleMessage {
	time.Sleep(200 * time.Millisecond)
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.msgs
	b.msgs = nil
	return m
}

// clean fails the test if a page wrote an error or a warning to the
// console (a script error, a refused request, a CSP violation).
func (b *browser) clean(page string) {
	b.t.Helper()
	for _, m := range b.take() {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
			b.t.Errorf("page %s: console %s", page, m)
		}
	}
}

// screenshot saves the page as a test artefact, and under docs/console/
// with -update-console-docs.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{b.t.ArtifactDir()}
	if *updateConsoleDocs {
		dirs = append(dirs, filepath.Join(testenv.RepoRoot(), "docs", "console"))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
}

// TestConsoleBrowser logs in to the console of a real appliance scanning
// the real images of the appliance fixture, in headless Chromium, and
// goes through every page: each loads without a console error, the
// datastore charts show the budget line and the measured rate, pausing a
// datastore and cancelling a job from the page take effect, a wrong token
// is refused, and a request from another origin cannot act with the
// session.
func TestConsoleBrowser(t *testing.T) {
	const budget = 128 << 10 // bytes/s per datastore: scans last long enough to watch
	deadSink := listenClosed(t)
	app := startApp(t, appOpts{
		yaml: "queue: {max_scans: 2}\nserver: {shutdown_grace: 1s}\n",
		edit: func(c *Config) {
			for i := range c.Datastores {
				c.Datastores[i].BytesPerSec, c.Datastores[i].OpsPerSec, c.Datastores[i].MaxScans = budget, 400, 1
			}
			// A collector that is down: its events wait, then drop.
			c.Events.Syslog = []events.SyslogConfig{{Address: deadSink, Buffer: 2}}
		},
		prepare: func(a *Appliance) { a.trailEvery = time.Second },
	})
	app.install(1)
	var vms []string
	for vm := range app.disks() {
		vms = append(vms, vm)
	}
	app.submit(vms...)
	b := startBrowser(t)

	// Not logged in: the console sends the browser to its login page;
	// a wrong token is refused and leaves no session.
	b.run("login page", chromedp.Navigate(app.base+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if u := eval[string](b, "location.pathname"); u != "/console/login" {
		t.Fatalf("/ led to %s, want the login page", u)
	}
	b.clean("login")
	b.run("wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token-0123456789"),
		chromedp.Submit(chromedp.CSS("#token")), chromedp.WaitVisible(chromedp.CSS("#login-error")))
	if code := eval[int](b, `fetch('/v1/datastores').then(r => r.status)`, chromedp.EvalAwaitPromise); code != http.StatusUnauthorized {
		t.Errorf("API after a wrong token: %d, want 401", code)
	}
	for _, m := range b.take() { // the refused login and API call, nothing else
		if (m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning) && !strings.Contains(m.Text, "401") {
			t.Errorf("login refused: console %s", m)
		}
	}
	b.run("log in", chromedp.SendKeys(chromedp.CSS("#token"), testToken), chromedp.Submit(chromedp.CSS("#token")),
		chromedp.WaitVisible(chromedp.CSS(`section[data-datastore="ds-b"] button.pause`)))

	// Datastores: both charts of each datastore carry the measured rate
	// and the configured budget.
	b.poll("measured rates", `(() => {
		const c = window.snapscan.charts['ds-a'], d = window.snapscan.charts['ds-b'];
		return c && d && c.bytes.data[1].some(v => v > 0) && d.bytes.data[1].some(v => v > 0);
	})()`)
	for _, ds := range []string{"ds-a", "ds-b"} {
		got := eval[map[string]any](b, fmt.Sprintf(`(() => { const c = window.snapscan.charts[%q];
			return {budget: c.bytes.data[2].filter(v => v !== null), opsBudget: c.ops.data[2].filter(v => v !== null),
				measured: Math.max(...c.bytes.data[1]), series: c.bytes.series.map(s => s.label).join('|'),
				legend: document.querySelector('section[data-datastore=%q] .u-legend').textContent}; })()`, ds, ds))
		bud, _ := got["budget"].([]any)
		if len(bud) == 0 || bud[0] != float64(budget) || got["opsBudget"].([]any)[0] != 400.0 {
			t.Errorf("%s: budget series %v, ops %v; want %d and 400", ds, got["budget"], got["opsBudget"], budget)
		}
		// One-second samples: the budget holds over a second within 10%,
		// a sample's edges are as precise as a loaded machine's timers.
		if m, _ := got["measured"].(float64); m <= 0 || m > 1.5*budget {
			t.Errorf("%s: measured peak %v B/s against a %d B/s budget: %v", ds, m, budget,
				eval[any](b, fmt.Sprintf(`JSON.stringify(window.snapscan.charts[%q].bytes.data)`, ds)))
		}
		if !strings.Contains(got["legend"].(string), "budget (bytes_per_sec)") {
			t.Errorf("%s: legend %q", ds, got["legend"])
		}
	}
	b.clean("datastores")
	b.screenshot("datastores")

	// Pause ds-b from the page: the queue stops starting its jobs.
	b.run("pause ds-b", chromedp.Click(chromedp.CSS(`section[data-datastore="ds-b"] button.pause`)))
	eventually(t, "ds-b paused", 10*time.Second, func() bool {
		for _, d := range app.a.q.Metrics().Datastores {
			if d.Name == "ds-b" {
				return d.Paused
			}
		}
		return false
	})
	b.poll("the button says resume", `document.querySelector('section[data-datastore="ds-b"] button.pause').textContent === 'Resume'`)
	b.clean("datastores (pause)")

	// A request from another origin with the browser's session: it gets
	// neither the CSRF token nor, without it, any effect.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><script>fetch(%q, {method: 'POST', credentials: 'include', mode: 'no-cors'})
			.finally(() => { document.title = 'sent'; });</script>`, app.base+"/v1/datastores/ds-a/pause")
	}))
	defer evil.Close()
	b.run("cross-site page", chromedp.Navigate(evil.URL), chromedp.Poll[chromedp.Void](`document.title === 'sent'`))
	time.Sleep(200 * time.Millisecond)
	for _, d := range app.a.q.Metrics().Datastores {
		if d.Name == "ds-a" && d.Paused {
			t.Fatal("a page from another origin paused ds-a with the console's session")
		}
	}
	b.take()

	// Queue: running scans with progress, waiting ones with their reason
	// (ds-b's: paused), and cancelling one from the page.
	b.run("queue", chromedp.Navigate(app.base+"/console/queue"),
		chromedp.WaitVisible(chromedp.CSS(`#waiting tr[data-reason="paused"]`)))
	b.poll("a running scan with progress", `document.querySelectorAll('#running tr[data-scan] progress').length > 0`)
	victim := eval[string](b, `document.querySelector('#waiting tr[data-reason="paused"]').dataset.scan`)
	b.clean("queue")
	b.screenshot("queue")
	b.run("cancel", chromedp.Click(chromedp.CSS(`#waiting tr[data-scan="`+victim+`"] button.cancel`)))
	var vid int64
	fmt.Sscan(victim, &vid)
	eventually(t, "the cancelled job to end", 10*time.Second, func() bool {
		j, err := app.a.q.Job(context.Background(), vid)
		return err == nil && j.State == queue.Cancelled
	})
	b.clean("queue (cancel)")

	// VMs: every submitted VM, searchable by name.
	b.run("vms", chromedp.Navigate(app.base+"/console/vms"), chromedp.WaitVisible(chromedp.CSS(`#vms tr[data-vm]`)))
	if n := eval[int](b, `document.querySelectorAll('#vms tr[data-vm]').length`); n != len(vms) {
		t.Errorf("VMs page lists %d VMs, want %d", n, len(vms))
	}
	b.screenshot("vms")
	b.run("search", chromedp.SendKeys(chromedp.CSS("#vm-search"), "vm1"), chromedp.Click(chromedp.CSS(`#main form button[type="submit"]`)))
	b.until("the search result", `location.search === '?search=vm1' && document.querySelectorAll('#vms tr[data-vm]').length > 0`)
	if got := eval[[]string](b, `[...document.querySelectorAll('#vms tr[data-vm]')].map(r => r.dataset.vm)`); len(got) != 10 {
		t.Errorf("search vm1: %v, want vm10-vm19", got)
	}
	b.clean("vms")

	// Findings: each with its path, volume, hash and rule; details open.
	eventually(t, "findings stored", 30*time.Second, func() bool {
		f, err := app.a.results.Findings(context.Background(), results.FindingQuery{Limit: 1})
		return err == nil && len(f) > 0
	})
	b.run("findings", chromedp.Navigate(app.base+"/console/findings"), chromedp.WaitVisible(chromedp.CSS(`#findings tr.finding`)))
	b.run("detail", chromedp.Click(chromedp.CSS(`#findings tr.finding`)), chromedp.WaitVisible(chromedp.CSS(`#findings tr.detail dl`)))
	detail := eval[string](b, `document.querySelector('#findings tr.detail:not([hidden])').textContent`)
	for _, want := range []string{"SHA-256", "planted.yar:SnapscanE2E_Planted", "matched strings", "meta"} {
		if !strings.Contains(detail, want) {
			t.Errorf("finding detail lacks %q: %s", want, detail)
		}
	}
	b.clean("findings")
	b.screenshot("findings")
	// Filter by the rule of the first finding shown (which plants were
	// scanned before ds-b was paused depends on the order of the scans).
	rule := eval[string](b, `document.querySelector('#findings tr.finding td:nth-child(5)').textContent.split(':').pop()`)
	b.run("filter by rule", chromedp.SendKeys(chromedp.CSS("#f-rule"), rule), chromedp.Click(chromedp.CSS(`#finding-filters button[type="submit"]`)))
	b.until("the filtered findings", `location.search === '?rule=`+rule+`' && document.querySelectorAll('#findings tr.finding').length > 0`)
	if rules := eval[[]string](b, `[...document.querySelectorAll('#findings tr.finding td:nth-child(5)')].map(td => td.textContent)`); len(rules) == 0 {
		t.Errorf("no finding of rule %s", rule)
	} else {
		for _, r := range rules {
			if !strings.HasSuffix(r, ":"+rule) {
				t.Errorf("filter rule=%s shows %q", rule, r)
			}
		}
	}
	b.clean("findings (filter)")

	// A VM's findings, by its link on the VMs page.
	vm := eval[string](b, `document.querySelector('#findings tr.finding td:nth-child(2)').textContent`)
	b.run("vms (one)", chromedp.Navigate(app.base+"/console/vms?search="+vm), chromedp.WaitVisible(chromedp.CSS(`#vms tr[data-vm="`+vm+`"]`)))
	b.run("findings link", chromedp.Click(chromedp.CSS(`#vms tr[data-vm="`+vm+`"] td:last-child a[href^="/console/findings"]`)))
	b.until("the VM's findings", `location.search === '?vm=`+vm+`' && document.querySelectorAll('#findings tr.finding').length > 0`)
	for _, got := range eval[[]string](b, `[...document.querySelectorAll('#findings tr.finding td:nth-child(2)')].map(td => td.textContent)`) {
		if got != vm {
			t.Errorf("findings of %s show one of %s", vm, got)
		}
	}
	// By tag (PlantedB is tagged e2e, PlantedA is not), from the form.
	b.run("findings (tag)", chromedp.Navigate(app.base+"/console/findings"), chromedp.WaitVisible(chromedp.CSS(`#findings tr.finding`)),
		chromedp.SetValue(chromedp.CSS("#f-tag"), "e2e"), chromedp.Click(chromedp.CSS(`#finding-filters button[type="submit"]`)))
	b.until("the tagged findings", `location.search === '?tag=e2e' && document.querySelectorAll('#findings tr.finding').length > 0`)
	for _, r := range eval[[]string](b, `[...document.querySelectorAll('#findings tr.finding')].map(tr => tr.children[4].textContent + ' ' + tr.children[5].textContent)`) {
		if !strings.Contains(r, "SnapscanE2E_PlantedB") || !strings.HasSuffix(r, "e2e") {
			t.Errorf("filter tag=e2e shows %q", r)
		}
	}
	// By time: none found from an hour ahead, some from an hour back.
	for _, tc := range []struct {
		since time.Time
		some  bool
	}{{time.Now().Add(time.Hour), false}, {time.Now().Add(-time.Hour), true}} {
		q := "?since=" + tc.since.UTC().Format("2006-01-02T15:04:05Z")
		b.run("findings (since)", chromedp.Navigate(app.base+"/console/findings"+q), chromedp.WaitVisible(chromedp.CSS(`#findings table`)))
		if n := eval[int](b, `document.querySelectorAll('#findings tr.finding').length`); (n > 0) != tc.some {
			t.Errorf("findings since %s: %d shown, want some: %v", tc.since.Format(time.RFC3339), n, tc.some)
		}
		if f := eval[string](b, `document.querySelector('#f-since').value`); f == "" {
			t.Errorf("the since filter is not shown in its field")
		}
	}
	b.clean("findings (VM, tag, time)")

	// Signatures and events.
	b.run("signatures", chromedp.Navigate(app.base+"/console/signatures"), chromedp.WaitVisible(chromedp.CSS(`#active`)))
	active := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll('#active dt')].map(dt => [dt.textContent, dt.nextElementSibling.textContent]))`)
	if active["set"] != "test" || active["version"] != "v1" || active["rules"] != "2" || !strings.Contains(active["installed"], " ago)") {
		t.Errorf("signatures page: active set %v, want test v1 with 2 rules and when installed", active)
	}
	b.clean("signatures")
	b.screenshot("signatures")
	b.run("events", chromedp.Navigate(app.base+"/console/events"), chromedp.WaitVisible(chromedp.CSS(`#sinks tr[data-sink]`)))
	b.poll("the dead collector's drops", `/[1-9]/.test(document.querySelector('#sinks tr[data-sink] td:nth-child(5)').textContent)`)
	b.clean("events")
	b.screenshot("events")
	b.run("reports", chromedp.Navigate(app.base+"/console/reports"), chromedp.WaitVisible(chromedp.CSS(`#period`)))
	b.clean("reports")
	b.screenshot("reports")

	// Reports: the period's, from the form, and one scan's; both print.
	b.run("period report", chromedp.Click(chromedp.CSS(`#period button[type="submit"]`)))
	b.until("the period report", `document.querySelector('h1') && document.querySelector('h1').textContent.startsWith('Findings and coverage')`)
	rep := eval[string](b, `document.body.textContent`)
	for _, want := range []string{"VMs known", "VMs scanned in the period", "Not scanned within the schedule", "SnapscanE2E_Planted"} {
		if !strings.Contains(rep, want) {
			t.Errorf("period report lacks %q", want)
		}
	}
	if n := eval[int](b, `document.querySelectorAll('a[href^="/v1/reports/scans/"]').length`); n == 0 {
		t.Error("the period report links no scan")
	}
	b.clean("period report")
	b.screenshot("report-period")
	pdf, err := chromedp.Run(b.ctx, chromedp.PrintToPDF())
	if err != nil || !strings.HasPrefix(string(pdf), "%PDF-") || len(pdf) < 10<<10 {
		t.Errorf("printing the period report: %d bytes, %v", len(pdf), err)
	} else if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "report-period.pdf"), pdf, 0o644); err != nil {
		t.Error(err)
	}
	// The report of a scan with findings (the first listed may be the cancelled one).
	scanLink := eval[string](b, `(document.querySelector('tr:has(td.findings) a[href^="/v1/reports/scans/"]') ||
		document.querySelector('a[href^="/v1/reports/scans/"]')).getAttribute('href')`)
	b.run("scan report", chromedp.Navigate(app.base+scanLink), chromedp.WaitVisible(chromedp.CSS(`p.status`)))
	if h := eval[string](b, `document.querySelector('h1').textContent`); !strings.HasPrefix(h, "Scan ") {
		t.Errorf("scan report title %q", h)
	}
	b.clean("scan report")
	b.screenshot("report-scan")

	// Log out: the session is gone, the API refuses the cookie.
	b.run("log out", chromedp.Navigate(app.base+"/console/signatures"), chromedp.WaitVisible(chromedp.CSS(`#active`)),
		chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#token")))
	if code := eval[int](b, `fetch('/v1/datastores').then(r => r.status)`, chromedp.EvalAwaitPromise); code != http.StatusUnauthorized {
		t.Errorf("API after logging out: %d, want 401", code)
	}
	b.take()
}

// listenClosed returns a loopback address where nothing listens.
func listenClosed(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
