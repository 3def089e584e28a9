package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/snapscan/snapscan/internal/testenv"
)

func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	testenv.NeedTools(t, "promtool")
	cmd := exec.Command("promtool", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCheckRules(t *testing.T) {
	out := promtool(t, ".", "check", "rules", "alerts.yml")
	if !strings.Contains(out, "SUCCESS: 10 rules found") {
		t.Errorf("promtool check rules:\n%s", out)
	}
}

// TestAlertUnitTests runs alerts_test.yml: each alert fires on the series
// it is about, with the annotations an operator reads, and stays quiet on
// the look-alikes (a paused datastore, a budget of 0, a few failures).
func TestAlertUnitTests(t *testing.T) {
	out := promtool(t, ".", "test", "rules", "alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
	// Every alert has at least one test case.
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert string }
		}
	}
	b, _ := os.ReadFile("alerts.yml")
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	tests, _ := os.ReadFile("alerts_test.yml")
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no case in alerts_test.yml", r.Alert)
			}
		}
	}
}

// TestCheckConfig checks the example scrape configuration as a site
// would install it: its /etc/prometheus files replaced by files that exist.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"snapscan-ca.pem", "snapscan.token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := strings.ReplaceAll(string(b), "/etc/prometheus/", dir+"/")
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	rules, _ := os.ReadFile("alerts.yml")
	os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644)
	out := promtool(t, dir, "check", "config", "prometheus.yml")
	if !strings.Contains(out, "SUCCESS: 10 rules found") {
		t.Errorf("promtool check config:\n%s", out)
	}
}

// TestDashboard checks the Grafana dashboard's shape (unique panel ids,
// every panel placed, a datasource variable) and that every query is
// PromQL Prometheus accepts: each, with the dashboard's variables filled
// in, becomes a recording rule for promtool to check.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct{ Name, Type string }
		}
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos struct{ H, W, X, Y int }
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || len(d.Templating.List) == 0 || d.Templating.List[0].Type != "datasource" {
		t.Errorf("uid %q, variables %v: want a uid and a datasource variable first", d.UID, d.Templating.List)
	}
	ids := map[int]bool{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	fill := strings.NewReplacer("$instance", ".*", "$datastore", ".*", "$__rate_interval", "2m", "$__interval", "30s")
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: grid position %+v", p.Title, p.GridPos)
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			n++
			fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %q\n", n, fill.Replace(tg.Expr))
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := promtool(t, dir, "check", "rules", "dashboard.yml")
	if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Errorf("dashboard queries:\n%s", out)
	}
}

func TestMetricNames(t *testing.T) {
	names := MetricNames()
	for _, want := range []string{"snapscan_datastore_read_bytes_per_second", "snapscan_queue_wait_seconds", "snapscan_signature_server_version"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("MetricNames() = %v lacks %s", names, want)
		}
	}
}
