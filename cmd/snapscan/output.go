package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"

	"github.com/snapscan/snapscan/scanner"
)

// schemaVersion leads every JSON document snapscan writes (scan, ls,
// jsonl records, version): it changes when a field is renamed or removed,
// not when one is added. Field names are the same in every command:
// file_system, sha256, volume, path, mtime, error.
const schemaVersion = 1

// Output formats of scan (--format).
var scanFormats = []string{"text", "json", "jsonl", "sarif", "csv"}

// reporter writes a scan's report in one format: finding as each finding
// is made (serialized by the scanner), finish once at the end.
type reporter interface {
	finding(fd scanner.Finding) error
	finish(out *scanOutput) error
}

func newReporter(format string, w io.Writer, showStrings, quiet bool) (reporter, error) {
	switch format {
	case "text":
		return &textReporter{w: w, showStrings: showStrings, quiet: quiet}, nil
	case "json":
		return jsonReporter{w}, nil
	case "jsonl":
		return &jsonlReporter{enc: json.NewEncoder(w)}, nil
	case "sarif":
		return sarifReporter{w}, nil
	case "csv":
		return newCSVReporter(w, showStrings), nil
	}
	return nil, fmt.Errorf("unknown format %q (want %s)", format, strings.Join(scanFormats, ", "))
}

type textReporter struct {
	w                  io.Writer
	showStrings, quiet bool
}

func (r *textReporter) finding(fd scanner.Finding) error {
	printFinding(r.w, fd, r.showStrings)
	return nil
}

func (r *textReporter) finish(out *scanOutput) error {
	if !r.quiet {
		printSummary(r.w, out)
	}
	return nil
}

type jsonReporter struct{ w io.Writer }

func (jsonReporter) finding(scanner.Finding) error { return nil }
func (r jsonReporter) finish(out *scanOutput) error {
	enc := json.NewEncoder(r.w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// jsonlReporter writes one JSON object a line: each finding as it is made
// ({"schema_version", "type": "finding", ...the finding}), then each
// target ("type": "target") and a last "type": "summary" line with the
// result and stats.
type jsonlReporter struct{ enc *json.Encoder }

type jsonlHead struct {
	SchemaVersion int    `json:"schema_version"`
	Type          string `json:"type"`
}

func (r *jsonlReporter) finding(fd scanner.Finding) error {
	return r.enc.Encode(struct {
		jsonlHead
		scanner.Finding
	}{jsonlHead{schemaVersion, "finding"}, fd})
}

func (r *jsonlReporter) finish(out *scanOutput) error {
	for _, t := range out.Targets {
		if err := r.enc.Encode(struct {
			jsonlHead
			targetReport
		}{jsonlHead{schemaVersion, "target"}, t}); err != nil {
			return err
		}
	}
	return r.enc.Encode(struct {
		jsonlHead
		SnapscanVersion string         `json:"snapscan_version"`
		Result          scanner.Result `json:"result"`
		Stats           scanStats      `json:"stats"`
	}{jsonlHead{schemaVersion, "summary"}, out.SnapscanVersion, out.Result, out.Stats})
}

// csvReporter writes one row per rule that matched a file. Tags are
// separated by spaces; meta and strings are JSON. A cell that a spreadsheet
// would take for a formula (starting with = + - @, a tab or a carriage
// return: a file name in a guest can be anything) is prefixed with a
// single quote.
type csvReporter struct {
	w           *csv.Writer
	showStrings bool
}

var csvHeader = []string{"target", "volume", "path", "size", "sha256", "rule", "namespace", "tags", "meta", "strings"}

func newCSVReporter(w io.Writer, showStrings bool) *csvReporter {
	r := &csvReporter{w: csv.NewWriter(w), showStrings: showStrings}
	r.w.Write(csvHeader)
	return r
}

func csvCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func (r *csvReporter) finding(fd scanner.Finding) error {
	for _, m := range fd.Matches {
		meta, _ := json.Marshal(metaOrEmpty(m.Meta))
		strs := []byte("")
		if r.showStrings {
			strs, _ = json.Marshal(stringsOrEmpty(m.Strings))
		}
		row := []string{fd.Target, fd.Volume, fd.Path, fmt.Sprint(fd.Size), fd.SHA256, m.Rule, m.Namespace,
			strings.Join(m.Tags, " "), string(meta), string(strs)}
		for i := range row {
			row[i] = csvCell(row[i])
		}
		if err := r.w.Write(row); err != nil {
			return err
		}
	}
	r.w.Flush()
	return r.w.Error()
}

func (r *csvReporter) finish(*scanOutput) error {
	r.w.Flush()
	return r.w.Error()
}

func metaOrEmpty(m []scanner.MetaEntry) []scanner.MetaEntry {
	if m == nil {
		return []scanner.MetaEntry{}
	}
	return m
}

func stringsOrEmpty(s []scanner.StringMatch) []scanner.StringMatch {
	if s == nil {
		return []scanner.StringMatch{}
	}
	return s
}

// SARIF 2.1.0 (OASIS), the subset snapscan fills: one run, the rules that
// matched as the driver's rules (tags and meta in their properties), one
// result per rule and file, failed targets and an incomplete scan as
// notifications of the invocation. testdata/sarif-schema-2.1.0.json
// checks it.
type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool        sarifTool         `json:"tool"`
	Invocations []sarifInvocation `json:"invocations"`
	Results     []sarifResult     `json:"results"`
	Properties  map[string]any    `json:"properties,omitempty"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	Version        string      `json:"version,omitempty"`
	InformationURI string      `json:"informationUri"`
	Rules          []sarifRule `json:"rules"`
}

type sarifMessage struct {
	Text string `json:"text"`
}

type sarifRule struct {
	ID               string         `json:"id"`
	Name             string         `json:"name"`
	ShortDescription *sarifMessage  `json:"shortDescription,omitempty"`
	Properties       map[string]any `json:"properties"`
}

type sarifInvocation struct {
	ExecutionSuccessful bool                `json:"executionSuccessful"`
	Notifications       []sarifNotification `json:"toolExecutionNotifications,omitempty"`
}

type sarifNotification struct {
	Level   string       `json:"level"`
	Message sarifMessage `json:"message"`
}

type sarifResult struct {
	RuleID              string            `json:"ruleId"`
	RuleIndex           int               `json:"ruleIndex"`
	Level               string            `json:"level"`
	Message             sarifMessage      `json:"message"`
	Locations           []sarifLocation   `json:"locations"`
	PartialFingerprints map[string]string `json:"partialFingerprints"`
	Properties          map[string]any    `json:"properties"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical          `json:"physicalLocation"`
	LogicalLocations []sarifLogicalLocation `json:"logicalLocations"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	ByteOffset int64 `json:"byteOffset"`
	ByteLength int64 `json:"byteLength,omitempty"` // unknown when the match data was truncated
}

type sarifLogicalLocation struct {
	Name               string `json:"name"`
	FullyQualifiedName string `json:"fullyQualifiedName"`
	Kind               string `json:"kind"`
}

type sarifReporter struct{ w io.Writer }

func (sarifReporter) finding(scanner.Finding) error { return nil }

// sarifRuleID names a rule uniquely: namespace/rule (the namespace is
// the rule file's name), or the rule alone in YARA's default namespace.
func sarifRuleID(m scanner.Match) string {
	if m.Namespace == "" || m.Namespace == "default" {
		return m.Rule
	}
	return m.Namespace + "/" + m.Rule
}

// sarifURI is a finding's file as a relative URI reference: the path in
// its volume without the leading slash, each segment escaped (an archive
// member's "!" stays, it is allowed in a URI path).
func sarifURI(p string) string {
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	u := strings.Join(segs, "/")
	if strings.HasPrefix(u, "/") || strings.Contains(strings.SplitN(u, "/", 2)[0], ":") {
		u = "./" + u // neither an authority nor a scheme
	}
	return u
}

func (r sarifReporter) finish(out *scanOutput) error {
	run := sarifRun{
		Tool: sarifTool{Driver: sarifDriver{Name: "snapscan", Version: out.SnapscanVersion,
			InformationURI: "https://github.com/snapscan/snapscan", Rules: []sarifRule{}}},
		Results:    []sarifResult{},
		Properties: map[string]any{"result": out.Result, "stats": out.Stats},
	}
	index := map[string]int{}
	for _, fd := range out.Findings {
		for _, m := range fd.Matches {
			id := sarifRuleID(m)
			i, ok := index[id]
			if !ok {
				i = len(run.Tool.Driver.Rules)
				index[id] = i
				rule := sarifRule{ID: id, Name: m.Rule, Properties: map[string]any{
					"namespace": m.Namespace, "tags": append([]string{}, m.Tags...), "meta": metaOrEmpty(m.Meta)}}
				for _, e := range m.Meta {
					if s, ok := e.Value.(string); ok && e.Key == "description" && s != "" {
						rule.ShortDescription = &sarifMessage{Text: s}
					}
				}
				run.Tool.Driver.Rules = append(run.Tool.Driver.Rules, rule)
			}
			loc := sarifLocation{
				PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: sarifURI(fd.Path)}},
				LogicalLocations: []sarifLogicalLocation{{Name: fd.Volume, FullyQualifiedName: fd.Target + " " + fd.Volume, Kind: "volume"}},
			}
			if len(m.Strings) > 0 {
				s := m.Strings[0]
				loc.PhysicalLocation.Region = &sarifRegion{ByteOffset: s.Offset}
				if !s.Truncated {
					loc.PhysicalLocation.Region.ByteLength = int64(dataLen(s.Data))
				}
			}
			run.Results = append(run.Results, sarifResult{
				RuleID: id, RuleIndex: i, Level: "error",
				Message:             sarifMessage{Text: fmt.Sprintf("YARA rule %s matched %s on %s of %s", m.Rule, fd.Path, fd.Volume, fd.Target)},
				Locations:           []sarifLocation{loc},
				PartialFingerprints: map[string]string{"sha256/v1": fd.SHA256},
				Properties: map[string]any{"target": fd.Target, "volume": fd.Volume, "path": fd.Path, "size": fd.Size,
					"sha256": fd.SHA256, "tags": append([]string{}, m.Tags...), "meta": metaOrEmpty(m.Meta), "strings": stringsOrEmpty(m.Strings)},
			})
		}
	}
	inv := sarifInvocation{ExecutionSuccessful: out.Stats.TargetsFailed == 0 && out.Result.Complete()}
	for _, t := range out.Targets {
		if t.Error != "" {
			inv.Notifications = append(inv.Notifications, sarifNotification{Level: "error", Message: sarifMessage{Text: t.Error}})
		}
	}
	if !out.Result.Complete() {
		keys := make([]string, 0, len(out.Result.NotScanned))
		for k := range out.Result.NotScanned {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, out.Result.NotScanned[k]))
		}
		inv.Notifications = append(inv.Notifications, sarifNotification{Level: "warning",
			Message: sarifMessage{Text: "incomplete: not scanned: " + strings.Join(parts, ", ")}})
	}
	run.Invocations = []sarifInvocation{inv}
	enc := json.NewEncoder(r.w)
	enc.SetIndent("", "  ")
	return enc.Encode(sarifLog{Schema: "https://json.schemastore.org/sarif-2.1.0.json", Version: "2.1.0", Runs: []sarifRun{run}})
}

// dataLen is the number of bytes StringMatch.Data stands for (\xNN and
// \\ are one byte each).
func dataLen(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			if s[i+1] == 'x' {
				i += 3
			} else {
				i++
			}
		}
		n++
	}
	return n
}
