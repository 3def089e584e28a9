package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true},
		{"256MiB", 256 << 20, true},
		{"1.5GB", 1_500_000_000, true},
		{"64kib", 64 << 10, true},
		{"10M", 10 << 20, true},
		{"", 0, false},
		{"-1MB", 0, false},
		{"lots", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestScanCommand runs "snapscan scan" on the README's sample disk, a
// corrupt image and a folder: findings in the JSON schema of issue 4, the
// corrupt image reported without stopping the others, and clamscan-style
// exit codes.
func TestScanCommand(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	sample := filepath.Join(testenv.Fixture(t, "sample-disk.sh"), "sample.qcow2")
	rules := filepath.Join(testenv.RepoRoot(), "testdata", "rules", "demo.yar")
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.qcow2")
	b, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	// A qcow2 header whose L1 table lies past the end of the file.
	if err := os.WriteFile(corrupt, b[:64<<10], 0o644); err != nil {
		t.Fatal(err)
	}
	clean := filepath.Join(dir, "clean")
	os.MkdirAll(filepath.Join(clean, "etc"), 0o755)
	os.WriteFile(filepath.Join(clean, "etc", "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)

	scan := func(args ...string) (int, string, string) {
		return runArgs(append([]string{"scan", "--rules", rules}, args...)...)
	}

	code, out, stderr := scan("--json", sample, corrupt, clean)
	if code != 1 || !strings.Contains(stderr, "corrupt.qcow2") {
		t.Errorf("exit %d, want 1 (findings win over a target that could not be scanned, named on stderr); stderr %s", code, stderr)
	}
	var res struct {
		Targets []struct {
			Target, Error string
			Volumes       []struct{ ID string }
		}
		Findings []struct {
			Target, Volume, Path, SHA256 string
			Size                         int64
			Matches                      []struct {
				Rule, Namespace string
				Tags            []string
				Meta            []struct{ Key string }
			}
		}
		Stats struct {
			Files, Findings int64
			TargetsFailed   int64 `json:"targets_failed"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	var got []string
	for _, f := range res.Findings {
		got = append(got, f.Volume+" "+f.Path+" "+f.Matches[0].Rule)
		if f.Target != sample || len(f.SHA256) != 64 || f.Size == 0 || f.Matches[0].Namespace == "" || len(f.Matches[0].Meta) == 0 {
			t.Errorf("finding lacks fields: %+v", f)
		}
	}
	want := []string{"p2 /home/alice/Downloads/invoice.pdf.exe EICAR_Test_File", "p2 /tmp/.cache/run.sh Coinminer_Stratum", "p2 /var/www/html/status.php PHP_Eval_Webshell"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("findings\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(res.Targets) != 3 || res.Targets[1].Error == "" || !strings.Contains(res.Targets[1].Error, "corrupt.qcow2") {
		t.Errorf("targets: %+v", res.Targets)
	}
	if res.Stats.TargetsFailed != 1 || res.Stats.Findings != 3 {
		t.Errorf("stats: %+v", res.Stats)
	}

	if code, _, stderr := scan(sample); code != 1 {
		t.Errorf("scan of the sample: exit %d, want 1; %s", code, stderr)
	}
	if code, out, stderr := scan(clean); code != 0 || !strings.Contains(out, "0 findings") {
		t.Errorf("scan of a clean folder: exit %d, want 0; %s%s", code, out, stderr)
	}
	if code, _, _ := scan(); code != 2 {
		t.Errorf("no target: exit %d, want 2", code)
	}
	if code, _, stderr := scan(corrupt, clean); code != 2 || !strings.Contains(stderr, "corrupt.qcow2") {
		t.Errorf("a clean folder and a corrupt image: exit %d, want 2; %s", code, stderr)
	}
	code, _, stderr = runArgs("scan", "--rules", filepath.Join(dir, "missing.yar"), clean)
	if code != 2 || !strings.Contains(stderr, "missing.yar") {
		t.Errorf("missing rules: exit %d, %s", code, stderr)
	}
}

// runArgs runs a snapscan command line in-process.
func runArgs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestLsCommand checks "snapscan ls --json" against the schema of issue 2
// and "snapscan cat" on the README's sample disk.
func TestLsCommand(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	sample := filepath.Join(testenv.Fixture(t, "sample-disk.sh"), "sample.qcow2")
	code, out, stderr := runArgs("ls", "--json", sample)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var ls struct {
		Image, Format string
		VirtualSize   int64 `json:"virtual_size"`
		Volumes       []map[string]any
		Files         []struct{ Volume, Path, Type, Mode, MTime string }
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatal(err)
	}
	if ls.Format != "qcow2" || ls.VirtualSize != 256<<20 || len(ls.Volumes) != 2 {
		t.Errorf("header: %+v", ls)
	}
	for _, v := range ls.Volumes {
		for _, k := range []string{"id", "file_system", "offset", "size", "label", "error"} {
			if _, ok := v[k]; !ok {
				t.Errorf("volume lacks %q: %v", k, v)
			}
		}
	}
	types := map[string]string{}
	for _, f := range ls.Files {
		types[f.Volume+" "+f.Path] = f.Type
	}
	for path, typ := range map[string]string{"p2 /bin/ls": "file", "p2 /etc": "dir", "p2 /alice-home": "symlink", "p1 /EFI/BOOT/README.txt": "file"} {
		if types[path] != typ {
			t.Errorf("%s: type %q, want %q", path, types[path], typ)
		}
	}
	code, out, stderr = runArgs("cat", sample, "p2", "/etc/hostname")
	if code != 0 || out != "sample-vm\n" {
		t.Errorf("cat: exit %d, %q, %s", code, out, stderr)
	}
	for _, args := range [][]string{{"cat", sample, "p9", "/etc/hostname"}, {"cat", sample, "p2", "/nope"}, {"cat", sample, "p2", "/alice-home"}, {"ls"}} {
		if code, _, stderr := runArgs(args...); code == 0 || stderr == "" {
			t.Errorf("%v: exit %d with no error", args, code)
		}
	}
}

// TestScanResult runs the binary: each exit status of scan, the result in
// the JSON output, and a plain file scanned as a file.
func TestScanResult(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "r.yar")
	os.WriteFile(rules, []byte(`rule evil { strings: $a = "EVIL-MARKER" condition: $a }`), 0o644)
	clean := filepath.Join(dir, "clean")
	os.MkdirAll(filepath.Join(clean, "etc"), 0o755)
	os.WriteFile(filepath.Join(clean, "etc", "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	os.WriteFile(filepath.Join(clean, "big.db"), bytes.Repeat([]byte("x"), 10000), 0o644)
	plain := filepath.Join(dir, "eicar.com")
	os.WriteFile(plain, []byte("a file, not a disk image: EVIL-MARKER\n"), 0o644)
	missing := filepath.Join(dir, "missing.img")

	type res struct {
		Result struct {
			Status     string
			Findings   int
			NotScanned map[string]int64 `json:"not_scanned"`
		}
		Targets []struct {
			Target, Kind, Format, Error string
			Result                      *struct{ Status string }
		}
		Findings []struct{ Target, Volume, Path string }
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		status string
		stderr string
	}{
		{"clean", []string{clean}, 0, "clean", ""},
		{"incomplete", []string{"--max-file-size", "5000", clean}, 3, "incomplete", "incomplete: not scanned: too_large 1"},
		{"findings in a plain file", []string{plain}, 1, "findings", ""},
		{"findings and a failed target", []string{plain, missing}, 1, "findings", "missing.img"},
		{"findings and incomplete", []string{"--max-file-size", "5000", clean, plain}, 1, "findings", "too_large 1"},
		{"nothing scannable", []string{missing}, 2, "clean", "missing.img"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runBin(t, append([]string{"scan", "--json", "--rules", rules}, tc.args...)...)
			var r res
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			if code != tc.code || r.Result.Status != tc.status || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d status %q, want %d %q; stderr %q\n%s", code, r.Result.Status, tc.code, tc.status, stderr, out)
			}
			for _, tg := range r.Targets {
				want := map[string]string{clean: "folder", plain: "file", missing: ""}[tg.Target]
				if tg.Kind != want || (tg.Error == "") != (tg.Result != nil) {
					t.Errorf("target %s: kind %q (want %q), error %q, result %v", tg.Target, tg.Kind, want, tg.Error, tg.Result)
				}
			}
		})
	}
	code, out, _ := runBin(t, "scan", "--rules", rules, plain)
	if code != 1 || !strings.Contains(out, "FOUND "+plain+" file /eicar.com: evil") || !strings.Contains(out, "result: findings") {
		t.Errorf("text output of a plain file: exit %d\n%s", code, out)
	}
	// Compiled rules are kept by the digest of their sources.
	cache := filepath.Join(dir, "rules-cache")
	for range 2 {
		if code, _, stderr := runBin(t, "scan", "--rules-cache", cache, "--rules", rules, clean); code != 0 {
			t.Fatalf("with a rules cache: exit %d %s", code, stderr)
		}
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 1 || !strings.HasSuffix(ents[0].Name(), ".yarc") {
		t.Errorf("rules cache holds %v", ents)
	}
	code, _, stderr := runBin(t, "scan", "--help")
	if code != 0 || !strings.Contains(stderr, "3  incomplete") {
		t.Errorf("--help does not document the exit statuses: %d %s", code, stderr)
	}
}

// TestScanFilters runs the binary with --show-strings, --tags, --skip-tags
// and --exclude (gitignore-like, and a warning for a pattern that matched
// nothing in the whole run).
func TestScanFilters(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "r.yar")
	os.WriteFile(rules, []byte(`rule evil : apt { strings: $a = "EVIL-MARKER" condition: $a }
rule test_file : test { strings: $t = "TEST-MARKER" condition: $t }`), 0o644)
	tree := filepath.Join(dir, "tree")
	for p, body := range map[string]string{
		"a/eicar.com":     "x\x01EVIL-MARKER\n",
		"b/c/eicar.com":   "EVIL-MARKER",
		"b/keep.txt":      "TEST-MARKER EVIL-MARKER",
		"cache/x.bin":     "EVIL-MARKER",
		"d/cache":         "EVIL-MARKER", // a file named cache: not a folder
		"z/archive.zip.1": "TEST-MARKER",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
		os.WriteFile(filepath.Join(tree, p), []byte(body), 0o644)
	}
	scan := func(args ...string) (int, string, string) {
		return runBin(t, append([]string{"scan", "--rules", rules}, append(args, tree)...)...)
	}
	found := func(out string) []string {
		var paths []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "FOUND ") {
				f := strings.Fields(l)
				paths = append(paths, f[3]+" "+strings.Join(f[4:len(f)-2], " "))
			}
		}
		sort.Strings(paths) // streamed as found, in no fixed order
		return paths
	}
	code, out, stderr := scan("--exclude", "eicar.com", "--exclude", "cache/", "--exclude", "nothing-*.txt", "--exclude", "/keep.txt")
	want := []string{"/b/keep.txt: evil [apt], test_file [test]", "/d/cache: evil [apt]", "/z/archive.zip.1: test_file [test]"}
	if code != 1 || strings.Join(found(out), "\n") != strings.Join(want, "\n") {
		t.Errorf("excludes: exit %d, found\n%s\nwant\n%s", code, strings.Join(found(out), "\n"), strings.Join(want, "\n"))
	}
	for _, p := range []string{`"nothing-*.txt"`, `"/keep.txt"`} {
		if !strings.Contains(stderr, "--exclude "+p+" matched nothing") {
			t.Errorf("no warning for %s: %s", p, stderr)
		}
	}
	if strings.Contains(stderr, `"eicar.com" matched nothing`) {
		t.Errorf("warning for a pattern that matched: %s", stderr)
	}

	code, out, _ = scan("--tags", "apt", "--skip-tags", "test")
	want = []string{"/a/eicar.com: evil [apt]", "/b/c/eicar.com: evil [apt]", "/b/keep.txt: evil [apt]", "/cache/x.bin: evil [apt]", "/d/cache: evil [apt]"}
	if code != 1 || strings.Join(found(out), "\n") != strings.Join(want, "\n") {
		t.Errorf("tags: exit %d, found %v", code, found(out))
	}
	code, out, _ = scan("--tags", "apt,test", "--skip-tags", "apt", "--show-strings", "--exclude", "/z")
	if code != 1 || !strings.Contains(out, "test_file 0x0:$t: TEST-MARKER\n") || strings.Contains(out, "evil") {
		t.Errorf("--show-strings: exit %d\n%s", code, out)
	}
	code, out, _ = scan("--show-strings", "--exclude", "b/", "--exclude", "cache", "--exclude", "z/")
	if code != 1 || !strings.Contains(out, "evil 0x2:$a: EVIL-MARKER\n") || !strings.Contains(out, "FOUND "+tree+" dir /a/eicar.com") {
		t.Errorf("--show-strings on a plain match: exit %d\n%s", code, out)
	}
	if code, _, _ := scan("--tags", "none"); code != 0 {
		t.Errorf("every rule filtered out: exit %d, want 0", code)
	}
	var res struct {
		Findings []struct {
			Matches []struct {
				Strings []struct {
					Identifier, Data string
					Offset           int64
				}
			}
		}
	}
	_, out, _ = scan("--json", "--exclude", "b/", "--exclude", "cache", "--exclude", "z/", "--exclude", "/d")
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Findings) != 1 {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if s := res.Findings[0].Matches[0].Strings; len(s) != 1 || s[0].Identifier != "$a" || s[0].Offset != 2 || s[0].Data != "EVIL-MARKER" {
		t.Errorf("json strings: %+v", s)
	}
	if code, _, stderr := scan("--exclude", "!x"); code != 2 || !strings.Contains(stderr, "negation") {
		t.Errorf("negation: exit %d %s", code, stderr)
	}
}
