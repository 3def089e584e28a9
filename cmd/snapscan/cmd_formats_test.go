package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// scanFixture writes rules with tags and meta, a folder with two matching
// files (one whose name a spreadsheet would take for a formula) and a
// clean one, and returns the rules, the folder and a target that cannot
// be opened.
func scanFixture(t *testing.T) (rules, tree, missing string) {
	dir := t.TempDir()
	rules = filepath.Join(dir, "r.yar")
	os.WriteFile(rules, []byte(`rule evil : apt windows {
	meta:
		description = "evil marker"
		severity = 8
		confirmed = true
	strings:
		$a = "EVIL-MARKER"
	condition:
		$a
}
`), 0o644)
	tree = filepath.Join(dir, "tree")
	for p, body := range map[string]string{
		"bin/drop per.exe":     "xx EVIL-MARKER",
		"=HYPERLINK(1).txt":    "EVIL-MARKER\x00\xff",
		"etc/hosts":            "127.0.0.1 localhost\n",
		"cache/skipped.bin":    "EVIL-MARKER",
		"docs/readme.md":       "nothing here",
		"docs/notes/todo.list": "nothing",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
		os.WriteFile(filepath.Join(tree, p), []byte(body), 0o644)
	}
	return rules, tree, filepath.Join(dir, "missing.img")
}

// TestScanFormats runs the binary with each --format: the same findings
// with the rule's meta in each, SARIF valid against the OASIS SARIF 2.1.0
// schema (testdata/sarif-schema-2.1.0.json), jsonl streamed one object a
// line, csv with formula cells defused, --output and --quiet.
func TestScanFormats(t *testing.T) {
	rules, tree, missing := scanFixture(t)
	scan := func(args ...string) (int, string, string) {
		return runBin(t, append([]string{"scan", "--rules", rules, "--exclude", "cache/"}, args...)...)
	}
	wantPaths := []string{"/=HYPERLINK(1).txt", "/bin/drop per.exe"}

	// text: findings with the rule's meta.
	code, out, _ := scan(tree)
	if code != exitFindings || !strings.Contains(out, `  evil meta: description="evil marker" severity=8 confirmed=true`) {
		t.Errorf("text: exit %d\n%s", code, out)
	}

	// json: one document led by schema_version.
	code, out, _ = scan("--format", "json", tree)
	if code != exitFindings || !strings.HasPrefix(out, "{\n  \"schema_version\": 1,\n  \"snapscan_version\": ") {
		t.Errorf("json: exit %d\n%.300s", code, out)
	}
	var doc scanOutput
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range doc.Findings {
		paths = append(paths, f.Path)
		if m := f.Matches[0]; len(m.Meta) != 3 || m.Meta[0].Key != "description" || len(m.Strings) != 1 {
			t.Errorf("json finding %s: meta %v strings %v", f.Path, m.Meta, m.Strings)
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, wantPaths) {
		t.Errorf("json: findings %v, want %v", paths, wantPaths)
	}

	// jsonl: every line an object led by schema_version and type.
	code, out, _ = scan("--format", "jsonl", tree, missing)
	if code != exitFindings {
		t.Errorf("jsonl: exit %d", code)
	}
	types := map[string]int{}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	for _, l := range lines {
		var rec struct {
			SchemaVersion int    `json:"schema_version"`
			Type          string `json:"type"`
			Path          string `json:"path"`
			Error         string `json:"error"`
			Matches       []testMatch
		}
		if !strings.HasPrefix(l, `{"schema_version":1,"type":"`) || json.Unmarshal([]byte(l), &rec) != nil {
			t.Fatalf("jsonl line %q", l)
		}
		types[rec.Type]++
		if rec.Type == "finding" && (len(rec.Matches) != 1 || len(rec.Matches[0].Meta) != 3) {
			t.Errorf("jsonl finding without meta: %s", l)
		}
	}
	if types["finding"] != 2 || types["target"] != 2 || types["summary"] != 1 || !strings.Contains(lines[len(lines)-1], `"type":"summary"`) {
		t.Errorf("jsonl records %v\n%s", types, out)
	}

	// sarif: valid against the schema; results and rules as found.
	code, out, _ = scan("--format", "sarif", "--max-file-size", "13", tree, missing)
	if code != exitFindings {
		t.Errorf("sarif: exit %d", code)
	}
	validateSARIF(t, []byte(out))
	var log sarifLog
	if err := json.Unmarshal([]byte(out), &log); err != nil {
		t.Fatal(err)
	}
	r := log.Runs[0]
	if len(r.Tool.Driver.Rules) != 1 || r.Tool.Driver.Rules[0].ID != "r.yar/evil" || r.Tool.Driver.Rules[0].ShortDescription.Text != "evil marker" ||
		len(r.Results) != 1 || r.Results[0].Locations[0].PhysicalLocation.ArtifactLocation.URI != "=HYPERLINK%281%29.txt" {
		t.Errorf("sarif run: %+v", r)
	}
	if inv := r.Invocations[0]; inv.ExecutionSuccessful || len(inv.Notifications) != 2 ||
		!strings.Contains(inv.Notifications[0].Message.Text, "missing.img") || !strings.Contains(inv.Notifications[1].Message.Text, "too_large 2") {
		t.Errorf("sarif invocation: %+v", inv)
	}
	// The schema check can fail: a log that breaks it is refused.
	bad := strings.Replace(out, `"version": "2.1.0"`, `"version": "2.0.0"`, 1)
	if validateSARIFErr([]byte(bad)) == nil {
		t.Error("the SARIF schema accepted version 2.0.0")
	}

	// csv: a row per rule and file, the meta as JSON, formulas defused.
	code, out, _ = scan("--format", "csv", "--show-strings", tree)
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || code != exitFindings || len(rows) != 3 || !slices.Equal(rows[0], csvHeader) {
		t.Fatalf("csv: exit %d, %v\n%s", code, err, out)
	}
	slices.SortFunc(rows[1:], func(a, b []string) int { return strings.Compare(a[2], b[2]) })
	if rows[1][2] != "/=HYPERLINK(1).txt" || rows[2][2] != "/bin/drop per.exe" {
		t.Errorf("csv paths %q %q", rows[1][2], rows[2][2])
	}
	for in, want := range map[string]string{"=HYPERLINK(1)": "'=HYPERLINK(1)", "+1": "'+1", "-2": "'-2", "@SUM(A1)": "'@SUM(A1)", "/=x": "/=x", "": ""} {
		if got := csvCell(in); got != want {
			t.Errorf("csvCell(%q) = %q, want %q", in, got, want)
		}
	}
	if rows[2][6] != "r.yar" || rows[2][7] != "apt windows" || rows[2][8] != `[{"key":"description","value":"evil marker"},{"key":"severity","value":8},{"key":"confirmed","value":true}]` ||
		!strings.Contains(rows[2][9], `"identifier":"$a","offset":3,"data":"EVIL-MARKER"`) {
		t.Errorf("csv row %q", rows[2])
	}

	// --output: the report in FILE, nothing on stdout; --quiet: findings only.
	dst := filepath.Join(t.TempDir(), "report.sarif")
	code, out, _ = scan("--format", "sarif", "--output", dst, tree)
	written, _ := os.ReadFile(dst)
	if fi, err := os.Stat(dst); code != exitFindings || out != "" || err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("--output: exit %d, stdout %q, %v", code, out, err)
	}
	validateSARIF(t, written)
	code, out, stderr := scan("--quiet", "--exclude", "never-*", tree)
	if code != exitFindings || strings.Count(out, "FOUND ") != 2 || strings.Contains(out, "result:") || stderr != "" {
		t.Errorf("--quiet: exit %d\nstdout %s\nstderr %s", code, out, stderr)
	}
	if code, _, stderr := scan("--format", "xml", tree); code != exitFailed || !strings.Contains(stderr, "text, json, jsonl, sarif, csv") {
		t.Errorf("--format xml: exit %d %s", code, stderr)
	}
}

type testMatch struct {
	Meta []struct{ Key string }
}

func validateSARIFErr(doc []byte) error {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	sch, err := c.Compile(filepathToURL("testdata/sarif-schema-2.1.0.json"))
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return err
	}
	return sch.Validate(v)
}

func validateSARIF(t *testing.T, doc []byte) {
	t.Helper()
	if err := validateSARIFErr(doc); err != nil {
		t.Errorf("SARIF output fails the SARIF 2.1.0 schema: %v\n%.2000s", err, doc)
	}
}

func filepathToURL(p string) string {
	abs, _ := filepath.Abs(p)
	return "file://" + filepath.ToSlash(abs)
}

// TestScanListsFromFiles runs the binary with --targets-from (a file, and
// stdin) and --exclude-from.
func TestScanListsFromFiles(t *testing.T) {
	rules, tree, missing := scanFixture(t)
	dir := t.TempDir()
	list := filepath.Join(dir, "targets")
	os.WriteFile(list, []byte("# targets\n"+filepath.Join(tree, "bin")+"\r\n\n"+missing+"\n"), 0o644)
	ex := filepath.Join(dir, "excludes")
	os.WriteFile(ex, []byte("# gitignore-like\n*.exe\nnotes/\n"), 0o644)

	code, out, stderr := runBin(t, "scan", "--rules", rules, "--json", "--targets-from", list, filepath.Join(tree, "etc"))
	var doc scanOutput
	json.Unmarshal([]byte(out), &doc)
	var targets []string
	for _, tg := range doc.Targets {
		targets = append(targets, tg.Target)
	}
	want := []string{filepath.Join(tree, "etc"), filepath.Join(tree, "bin"), missing}
	if code != exitFindings || !slices.Equal(targets, want) || len(doc.Findings) != 1 || !strings.Contains(stderr, "missing.img") {
		t.Errorf("--targets-from: exit %d, targets %v (want %v), %d findings\n%s", code, targets, want, len(doc.Findings), stderr)
	}

	cmd := exec.Command(snapscanBin(t), "scan", "--rules", rules, "--json", "--exclude-from", ex, "--targets-from", "-")
	cmd.Stdin = strings.NewReader(tree + "\n")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	doc = scanOutput{}
	json.Unmarshal(stdout.Bytes(), &doc)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFindings || len(doc.Findings) != 2 {
		t.Fatalf("--targets-from - --exclude-from: %v, %d findings\n%s", err, len(doc.Findings), stdout.String())
	}
	skipped := doc.Stats.Skipped
	if skipped["excluded"] != 1 || skipped["excluded_dir"] != 1 {
		t.Errorf("--exclude-from: skipped %v, want one excluded file and one folder", skipped)
	}
	for _, f := range doc.Findings {
		if f.Path == "/bin/drop per.exe" {
			t.Errorf("--exclude-from *.exe did not exclude %s", f.Path)
		}
	}
	if code, _, stderr := runBin(t, "scan", "--rules", rules, "--targets-from", filepath.Join(dir, "nope")); code != exitFailed || !strings.Contains(stderr, "--targets-from") {
		t.Errorf("missing --targets-from file: exit %d %s", code, stderr)
	}
}
