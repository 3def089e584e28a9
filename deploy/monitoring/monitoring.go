// Package monitoring holds what a site's monitoring needs for snapscan
// appliances: Prometheus alert rules (alerts.yml, unit-tested by
// alerts_test.yml), an example scrape configuration (prometheus.yml) and a
// Grafana dashboard (grafana-dashboard.json). README.md explains them.
//
// The files are embedded so that tests can hold them against a running
// appliance: every metric they use must be one the appliance exports.
package monitoring

import (
	"embed"
	"regexp"
	"slices"
)

// Files are alerts.yml, alerts_test.yml, prometheus.yml and
// grafana-dashboard.json.
//
//go:embed alerts.yml alerts_test.yml prometheus.yml grafana-dashboard.json
var Files embed.FS

var metricRE = regexp.MustCompile(`\bsnapscan_[a-z0-9_]+`)

// MetricNames returns the snapscan_* metric names that alerts.yml and
// the dashboard use, sorted, without the _bucket, _sum and _count
// suffixes of histograms.
func MetricNames() []string {
	var names []string
	for _, f := range []string{"alerts.yml", "grafana-dashboard.json"} {
		b, err := Files.ReadFile(f)
		if err != nil {
			panic(err) // embedded: cannot happen
		}
		for _, m := range metricRE.FindAllString(string(b), -1) {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if len(m) > len(suf) && m[len(m)-len(suf):] == suf {
					m = m[:len(m)-len(suf)]
				}
			}
			names = append(names, m)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}
