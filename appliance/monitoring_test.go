package appliance

import (
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/deploy/monitoring"
	"github.com/snapscan/snapscan/internal/testenv"
)

// TestMonitoringMetrics holds deploy/monitoring against a real appliance:
// every metric its alert rules and dashboard use is one the appliance
// exports, the exposition passes `promtool check metrics`, and label
// values are the API's names (datastores as GET /v1/datastores names them,
// priority classes as POST /v1/scans takes them).
func TestMonitoringMetrics(t *testing.T) {
	testenv.NeedTools(t, "promtool")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Events.Syslog = []events.SyslogConfig{{Address: ln.Addr().String()}}
	}})
	app.install(1)
	ids := app.submit("vm01", "vm02")
	app.waitJobs(ids["vm01"], ids["vm02"])

	// Every family the registry can export, samples or not yet.
	descs := make(chan *prometheus.Desc, 256)
	go func() { app.a.m.reg.Describe(descs); close(descs) }()
	have := map[string]bool{}
	nameRE := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		if m := nameRE.FindStringSubmatch(d.String()); m != nil {
			have[m[1]] = true
		}
	}
	for _, n := range monitoring.MetricNames() {
		if !have[n] {
			t.Errorf("deploy/monitoring uses %s, which the appliance does not export", n)
		}
	}

	req, _ := http.NewRequest("GET", app.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := app.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cmd := exec.Command("promtool", "check", "metrics")
	var body strings.Builder
	cmd.Stdin = teeReader(resp, &body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	text := body.String()

	var ds struct {
		Datastores []DatastoreView `json:"datastores"`
	}
	if code, err := app.call("GET", "/v1/datastores", testToken, nil, &ds); code != 200 {
		t.Fatalf("datastores: %d %v", code, err)
	}
	var apiNames []string
	for _, d := range ds.Datastores {
		apiNames = append(apiNames, d.Name)
	}
	labels := func(label string) []string {
		var out []string
		for _, m := range regexp.MustCompile(label+`="([^"]*)"`).FindAllStringSubmatch(text, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	if got := labels("datastore"); !slices.Equal(got, apiNames) {
		t.Errorf("datastore labels %v, API names %v", got, apiNames)
	}
	if got := labels("class"); !slices.Equal(got, []string{"on_demand", "rescan", "scheduled"}) {
		t.Errorf("class labels %v, want the API's priorities", got)
	}
	if got, want := labels("sink"), []string{"tcp://" + ln.Addr().String()}; !slices.Equal(got, want) {
		t.Errorf("sink labels %v, want %v (GET /v1/events names)", got, want)
	}
}

// teeReader copies what the command reads into b.
func teeReader(resp *http.Response, b *strings.Builder) *strings.Reader {
	buf := new(strings.Builder)
	_, _ = io.Copy(buf, resp.Body)
	b.WriteString(buf.String())
	return strings.NewReader(buf.String())
}
