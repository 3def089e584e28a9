package scanner_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
)

// fixture builds (once per machine) the tree of testdata/scanner.sh.
func fixture(t testing.TB) (tree string, files []string) {
	t.Helper()
	testenv.NeedTools(t, "zip", "tar", "gzip", "zstd", "bzip2", "xz", "perl", "go")
	out := testenv.Fixture(t, "scanner.sh")
	b, err := os.ReadFile(filepath.Join(out, "files.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(out, "tree"), strings.Fields(string(b))
}

func parityRules(t testing.TB) (*scanner.Rules, string) {
	t.Helper()
	dir, err := filepath.Abs("testdata/rules/parity")
	if err != nil {
		t.Fatal(err)
	}
	r, err := scanner.Compile(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

func scanDir(t testing.TB, s *scanner.Scanner, dir string) *scanner.Report {
	t.Helper()
	rep, err := s.Scan(context.Background(), scanner.Target{
		Name:    "tree",
		Volumes: []scanner.Volume{{ID: "v", FileSystem: "dir", FS: os.DirFS(dir)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// pairs flattens findings to "path rule" lines, sorted.
func pairs(rep *scanner.Report, keep func(path string) bool) []string {
	var out []string
	for _, f := range rep.Findings {
		if !keep(f.Path) {
			continue
		}
		for _, m := range f.Matches {
			out = append(out, f.Path+" "+m.Namespace+":"+m.Rule)
		}
	}
	sort.Strings(out)
	return out
}

// yaraCLI runs the yara tool on one file with the externals snapscan sets,
// each rules file in the namespace snapscan gives it. owner is what the
// file system records ("" for os.DirFS).
func yaraCLI(t *testing.T, rulesDir, tree, p, owner string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tree, p))
	if err != nil {
		t.Fatal(err)
	}
	name := path.Base(p)
	args := []string{"-e", // print namespaces
		"-d", "filename=" + name,
		"-d", "filepath=" + p,
		"-d", "extension=" + strings.ToLower(path.Ext(name)),
		"-d", "filetype=" + scanner.Filetype(data),
		"-d", "owner=" + owner,
	}
	ents, err := os.ReadDir(rulesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		args = append(args, e.Name()+":"+filepath.Join(rulesDir, e.Name()))
	}
	args = append(args, filepath.Join(tree, p))
	out, err := exec.Command("yara", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("yara %v: %v\n%s", args, err, out)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rule, file, ok := strings.Cut(sc.Text(), " ")
		if !ok || file != filepath.Join(tree, p) {
			t.Fatalf("unexpected yara output %q", sc.Text())
		}
		lines = append(lines, p+" "+rule)
	}
	return lines
}

// TestParity checks that snapscan's (path, rule) matches over the fixture
// tree equal the yara tool's, file by file, with the same externals.
func TestParity(t *testing.T) {
	testenv.NeedTools(t, "yara")
	tree, files := fixture(t)
	rules, dir := parityRules(t)
	rep := scanDir(t, scanner.New(rules, scanner.Options{}), tree)
	got := pairs(rep, func(p string) bool { return !strings.Contains(p, "!") })

	var want []string
	for _, p := range files {
		switch p {
		case "/empty/empty.dat": // yara cannot map an empty file: see TestEmptyFile
			continue
		}
		want = append(want, yaraCLI(t, dir, tree, p, "")...)
	}
	want = append(want, "/empty/empty.dat planted.yar:empty_file")
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("snapscan and yara differ\n-snapscan +yara:\n%s", diff(got, want))
	}
	if len(want) < 40 {
		t.Errorf("only %d matches from yara: the fixture or the rules lost their teeth", len(want))
	}
	// Every rule of the parity set matched somewhere, or it tests nothing.
	matched := map[string]bool{}
	for _, p := range got {
		matched[strings.SplitN(p, ":", 2)[1]] = true
	}
	if len(matched) != rules.Count()-1 { // is_tiny is private
		t.Errorf("%d of %d public rules matched: %v", len(matched), rules.Count()-1, slices.Sorted(maps.Keys(matched)))
	}
	// The hostile archives are incomplete by design: limits hit, members
	// unreadable; the result says so next to its findings.
	want2 := map[string]int64{scanner.SkipLimitHit: 3, scanner.SkipReadError: 2}
	if r := rep.Result; r.Status != scanner.StatusFindings || r.Findings != len(rep.Findings) || !maps.Equal(r.NotScanned, want2) || r.Complete() {
		t.Errorf("result %+v, want findings with not_scanned %v", r, want2)
	}
}

func diff(a, b []string) string {
	in := func(s []string, x string) bool { return slices.Contains(s, x) }
	var out strings.Builder
	for _, x := range a {
		if !in(b, x) {
			out.WriteString("- " + x + "\n")
		}
	}
	for _, x := range b {
		if !in(a, x) {
			out.WriteString("+ " + x + "\n")
		}
	}
	return out.String()
}

// TestEmptyFile: empty files are scanned, and "filesize == 0" matches.
func TestEmptyFile(t *testing.T) {
	r, err := scanner.CompileSources([]scanner.Source{{Name: "e", Data: []byte(`rule empty { condition: filesize == 0 }`)}})
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"a/empty": {Data: nil}, "a/full": {Data: []byte("x")}}
	rep, err := scanner.New(r, scanner.Options{}).Scan(context.Background(), scanner.Target{Name: "m", Volumes: []scanner.Volume{{ID: "1", FS: fsys}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := pairs(rep, func(string) bool { return true }); !slices.Equal(got, []string{"/a/empty e:empty"}) {
		t.Errorf("got %v", got)
	}
	if rep.Volumes[0].Files != 2 {
		t.Errorf("files = %d, want 2", rep.Volumes[0].Files)
	}
}

// TestArchives checks members, their paths and every hostile archive.
func TestArchives(t *testing.T) {
	tree, _ := fixture(t)
	rules, _ := parityRules(t)
	rep := scanDir(t, scanner.New(rules, scanner.Options{}), tree)
	got := map[string][]string{}
	for _, f := range rep.Findings {
		if strings.Contains(f.Path, "!") {
			for _, m := range f.Matches {
				got[f.Path] = append(got[f.Path], m.Rule)
			}
		}
	}
	for _, tc := range []struct{ path, rule string }{
		{"/arch/planted.zip!planted.txt", "planted_by_hash"},
		{"/arch/planted.zip!dir/inner.exe", "pe_signed"},
		{"/arch/bundle.tar.gz!bundle.tar!etc/echo", "elf_x86_64_dyn"},
		{"/arch/bundle.tar.gz!bundle.tar!dropper.sh", "planted_script"},
		{"/arch/planted.txt.zst!planted.txt", "planted_by_hash"},
		{"/arch/dropper.sh.bz2!dropper.sh", "planted_script"},
		{"/arch/signed.exe.xz!signed.exe", "pe_signed"},
		{"/arch/signed.exe.xz!signed.exe", "ext_extension_exe"},
		{"/arch/nested.tar.xz!nested.tar!inner.zip!planted.txt", "planted_by_hash"},
		{"/arch/nested.tar.xz!nested.tar!inner.zip!dir/inner.exe", "pe_signed"},
		{"/arch/gz-in.zip!planted.txt.gz!planted.txt", "planted_by_hash"},
		{"/hostile/deep.gz!deep!deep!deep!deep", "ext_filetype_archive"},
	} {
		if !slices.Contains(got[tc.path], tc.rule) {
			t.Errorf("%s: no %s in %v", tc.path, tc.rule, got[tc.path])
		}
	}
	if n := len(got["/hostile/deep.gz!deep!deep!deep!deep!deep"]); n != 0 {
		t.Errorf("expanded deeper than the limit")
	}

	v := rep.Volumes[0]
	errs := map[string]string{}
	for _, e := range v.Errors {
		errs[e.Path] = e.Reason
	}
	for _, tc := range []struct{ path, reason string }{
		{"/hostile/bomb.zip!zeros.bin", scanner.SkipLimitHit},
		{"/hostile/deep.gz!deep!deep!deep!deep", scanner.SkipLimitHit},
		{"/hostile/bigdict.xz!bigdict", scanner.SkipLimitHit},
		{"/hostile/truncated.tar.gz!truncated.tar", scanner.SkipReadError},
		{"/hostile/liar.zip!planted.txt", scanner.SkipReadError},
	} {
		if errs[tc.path] != tc.reason {
			t.Errorf("%s: reason %q, want %q (errors %v)", tc.path, errs[tc.path], tc.reason, errs)
		}
	}
	if v.Skipped[scanner.SkipLimitHit] != 3 || v.Skipped[scanner.SkipReadError] != 2 {
		t.Errorf("skipped = %v", v.Skipped)
	}
	// The hostile files themselves were scanned, as files.
	for _, p := range []string{"/hostile/bomb.zip", "/hostile/liar.zip"} {
		if len(got[p]) != 0 {
			continue
		}
		found := slices.ContainsFunc(rep.Findings, func(f scanner.Finding) bool { return f.Path == p })
		if !found {
			t.Errorf("%s not scanned as a file", p)
		}
	}
}

// TestLimits checks size limits, exclusions, the counts of skips and the
// result they give: excluded files leave a scan clean, a file too large
// makes it incomplete.
func TestLimits(t *testing.T) {
	tree, files := fixture(t)
	rules, _ := parityRules(t)
	var globs []scanner.Glob
	for _, p := range []string{"*.zip", "hostile/", "/bin/l?", "never-there.txt", "ls/"} {
		g, err := scanner.CompileGlob(p)
		if err != nil {
			t.Fatal(err)
		}
		globs = append(globs, g)
	}
	var last scanner.Progress
	s := scanner.New(rules, scanner.Options{
		Exclude:     globs,
		NoArchives:  true,
		MaxFileSize: 100_000,
		OnProgress:  func(p scanner.Progress) { last = p },
	})
	rep := scanDir(t, s, tree)
	v := rep.Volumes[0]
	want := map[string]int64{
		scanner.SkipExcluded:    3, // arch/planted.zip, arch/gz-in.zip, bin/ls
		scanner.SkipExcludedDir: 1, // hostile
		scanner.SkipTooLarge:    1, // lib/libz.so.1, 121280 bytes
	}
	if !maps.Equal(v.Skipped, want) {
		t.Errorf("skipped %v, want %v", v.Skipped, want)
	}
	hostile := 0
	for _, f := range files {
		if strings.HasPrefix(f, "/hostile/") {
			hostile++
		}
	}
	if want := int64(len(files) - hostile - 3 - 1); v.Files != want {
		t.Errorf("files = %d, want %d", v.Files, want)
	}
	if !last.Listed || last.Files != last.TotalFiles || last.Bytes != last.TotalBytes {
		t.Errorf("final progress %+v", last)
	}
	if r := rep.Result; r.Status != scanner.StatusFindings || !maps.Equal(r.NotScanned, map[string]int64{scanner.SkipTooLarge: 1}) {
		t.Errorf("result %+v", r)
	}
	if len(v.Errors) != 1 || v.Errors[0].Path != "/lib/libz.so.1" || v.Errors[0].Reason != scanner.SkipTooLarge {
		t.Errorf("too large file not named: %v", v.Errors)
	}
	wantEx := []scanner.ExcludeCount{{"*.zip", 2}, {"hostile/", 1}, {"/bin/l?", 1}, {"never-there.txt", 0}, {"ls/", 0}}
	if !slices.Equal(rep.Excludes, wantEx) {
		t.Errorf("exclude counts %v, want %v", rep.Excludes, wantEx)
	}
	if u := scanner.UnusedExcludes(rep, rep); !slices.Equal(u, []string{"never-there.txt", "ls/"}) {
		t.Errorf("unused excludes %v", u)
	}

	// A folder where nothing matches is clean when everything was
	// scanned, and incomplete, never clean, when a file was too large.
	planted, err := scanner.Compile("testdata/rules/parity/planted.yar")
	if err != nil {
		t.Fatal(err)
	}
	rep = scanDir(t, scanner.New(planted, scanner.Options{MaxFileSize: 100_000}), filepath.Join(tree, "lib"))
	if r := rep.Result; r.Status != scanner.StatusIncomplete || r.Complete() || r.NotScanned[scanner.SkipTooLarge] != 1 {
		t.Errorf("lib with a file too large: %+v", r)
	}
	rep = scanDir(t, scanner.New(planted, scanner.Options{}), filepath.Join(tree, "lib"))
	if r := rep.Result; r.Status != scanner.StatusClean || !r.Complete() || r.Findings != 0 {
		t.Errorf("lib: %+v", r)
	}
}

// TestCache: identical content is scanned once, under rules that ignore
// paths; and a second scan is answered by the cache.
func TestCache(t *testing.T) {
	tree, _ := fixture(t)
	r, err := scanner.CompileSources([]scanner.Source{{Name: "pe", Data: []byte(`import "pe"
rule signed { condition: pe.number_of_signatures > 0 }`)}})
	if err != nil {
		t.Fatal(err)
	}
	cache := scanner.NewMemoryCache(1000)
	// One worker, so that two copies are never scanned at the same time.
	s := scanner.New(r, scanner.Options{Workers: 1, Cache: cache})
	rep := scanDir(t, s, filepath.Join(tree, "pe"))
	if v := rep.Volumes[0]; v.Files != 2 || v.Cached != 1 || len(rep.Findings) != 2 {
		t.Errorf("first scan: files %d cached %d findings %d", v.Files, v.Cached, len(rep.Findings))
	}
	rep = scanDir(t, s, filepath.Join(tree, "pe"))
	if v := rep.Volumes[0]; v.Cached != 2 || len(rep.Findings) != 2 {
		t.Errorf("second scan: cached %d findings %d", v.Cached, len(rep.Findings))
	}

	// Rules that read filename: the same bytes under another name are
	// scanned again, and must not inherit a verdict.
	r2, err := scanner.CompileSources([]scanner.Source{{Name: "n", Data: []byte(`rule named { condition: filename == "Signed.EXE" }`)}})
	if err != nil {
		t.Fatal(err)
	}
	s2 := scanner.New(r2, scanner.Options{Workers: 1, Cache: cache})
	rep = scanDir(t, s2, filepath.Join(tree, "pe"))
	if v := rep.Volumes[0]; v.Cached != 0 || len(rep.Findings) != 1 || rep.Findings[0].Path != "/Signed.EXE" {
		t.Errorf("path-dependent rules: cached %d findings %v", v.Cached, rep.Findings)
	}
}

// failFS fails to open one file: a disk read error, injected.
type failFS struct {
	fs.FS
	bad string
}

var errDisk = errors.New("input/output error")

func (f failFS) Open(name string) (fs.File, error) {
	if name == f.bad {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errDisk}
	}
	return f.FS.Open(name)
}

// TestBadInput: an unreadable file, a broken volume and a rule that times
// out are reported, and the scan goes on.
func TestBadInput(t *testing.T) {
	tree, _ := fixture(t)
	dir, _ := filepath.Abs("testdata/rules/slow")
	slow, err := scanner.Compile(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := scanner.New(slow, scanner.Options{Timeout: time.Second}).Scan(context.Background(), scanner.Target{
		Name: "bad",
		Volumes: []scanner.Volume{
			{ID: "ok", FS: failFS{os.DirFS(filepath.Join(tree, "text")), "README"}},
			{ID: "broken", FileSystem: "ext4", Err: errors.New("bad superblock")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v: the timeout did not stop the scans", d)
	}
	v := rep.Volumes[0]
	reasons := map[string]string{}
	for _, e := range v.Errors {
		reasons[e.Path] = e.Reason
		if e.Reason == scanner.SkipReadError && !errors.Is(e.Err, errDisk) {
			t.Errorf("%s: error %v does not wrap the cause", e.Path, e.Err)
		}
	}
	if reasons["/README"] != scanner.SkipReadError {
		t.Errorf("README: %q (errors %v)", reasons["/README"], v.Errors)
	}
	if reasons["/random.bin"] != scanner.SkipTimeout || reasons["/planted.txt"] != scanner.SkipTimeout {
		t.Errorf("no timeouts reported: %v", reasons)
	}
	if rep.Volumes[1].Err != "bad superblock" {
		t.Errorf("broken volume: %+v", rep.Volumes[1])
	}
	r := rep.Result
	if r.Status != scanner.StatusIncomplete || r.NotScanned[scanner.SkipReadError] != 1 || r.NotScanned[scanner.SkipTimeout] < 2 || r.NotScanned[scanner.SkipVolume] != 1 {
		t.Errorf("result %+v, want incomplete: read_error 1, timeout 2+, volume_error 1", r)
	}
	b, err := json.Marshal(v.Errors[0])
	if err != nil || !bytes.Contains(b, []byte(`"reason"`)) || !bytes.Contains(b, []byte(`"error":"`)) {
		t.Errorf("FileError JSON %s %v", b, err)
	}
}

// TestCancel: canceling stops the scan promptly with a partial report.
func TestCancel(t *testing.T) {
	tree, _ := fixture(t)
	rules, _ := parityRules(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var done atomic.Int64
	var canceled atomic.Pointer[time.Time]
	s := scanner.New(rules, scanner.Options{OnProgress: func(p scanner.Progress) {
		if done.Add(1) == 5 {
			now := time.Now()
			canceled.Store(&now)
			cancel()
		}
	}})
	var vols []scanner.Volume
	for i := range 200 {
		vols = append(vols, scanner.Volume{ID: string(rune('a'+i%26)) + string(rune('0'+i/26)), FS: os.DirFS(tree)})
	}
	start := time.Now()
	rep, err := s.Scan(ctx, scanner.Target{Name: "many", Volumes: vols})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(*canceled.Load()); d > 5*time.Second {
		t.Errorf("cancel took %v (the whole scan %v)", d, time.Since(start))
	}
	if n := rep.Files(); n == 0 || n > 200 {
		t.Errorf("files scanned after cancel: %d", n)
	}
	if r := rep.Result; r.Status == scanner.StatusClean || r.NotScanned[scanner.SkipCanceled] == 0 {
		t.Errorf("a canceled scan gave %+v", r)
	}
}

// TestConcurrentHooks: hooks are serialized and every finding streams.
func TestConcurrentHooks(t *testing.T) {
	tree, _ := fixture(t)
	rules, _ := parityRules(t)
	var mu sync.Mutex
	busy := false
	var streamed []scanner.Finding
	check := func() {
		mu.Lock()
		if busy {
			t.Error("hooks called concurrently")
		}
		busy = true
		mu.Unlock()
		time.Sleep(50 * time.Microsecond)
		mu.Lock()
		busy = false
		mu.Unlock()
	}
	s := scanner.New(rules, scanner.Options{Workers: 4,
		OnFinding:  func(f scanner.Finding) { check(); streamed = append(streamed, f) },
		OnProgress: func(scanner.Progress) { check() },
	})
	rep := scanDir(t, s, tree)
	if len(streamed) != len(rep.Findings) {
		t.Errorf("streamed %d findings, report has %d", len(streamed), len(rep.Findings))
	}
}

func TestFindingJSON(t *testing.T) {
	f := scanner.Finding{Target: "t", Volume: "v", Path: "/p", Size: 1, SHA256: "00",
		Matches: []scanner.Match{{Rule: "r", Namespace: "n", Tags: []string{"a"}, Meta: []scanner.MetaEntry{{Key: "k", Value: 1}}}}}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	// A Match with every field round-trips through JSON (meta ints stay
	// int64), as the appliance stores verdicts.
	m := scanner.Match{Rule: "r", Namespace: "n", Tags: []string{}, Meta: []scanner.MetaEntry{{"i", int64(-3)}, {"s", "x"}, {"b", true}, {"f", 1.5}},
		Strings: []scanner.StringMatch{{Identifier: "$a", Offset: 7, Data: `a\x00`, Truncated: true}}, StringsDropped: 2}
	mb, _ := json.Marshal(m)
	var back scanner.Match
	if err := json.Unmarshal(mb, &back); err != nil || !reflect.DeepEqual(back, m) {
		t.Errorf("round trip: %v\n%+v\n%+v", err, back, m)
	}
	const want = `{"target":"t","volume":"v","path":"/p","size":1,"sha256":"00","matches":[{"rule":"r","namespace":"n","tags":["a"],"meta":[{"key":"k","value":1}],"strings":null}]}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}
