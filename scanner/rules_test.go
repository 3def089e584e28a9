package scanner_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
)

func TestCompileErrors(t *testing.T) {
	bad, _ := filepath.Abs("testdata/rules/bad")
	broken := filepath.Join(bad, "broken.yar")
	for _, tc := range []struct {
		name    string
		compile func() (*scanner.Rules, error)
		file    string
		line    int
		text    string
	}{
		{"folder", func() (*scanner.Rules, error) { return scanner.Compile(bad) }, broken, 8, "undefined identifier"},
		{"file", func() (*scanner.Rules, error) { return scanner.Compile(broken) }, broken, 8, "undefined identifier"},
		{"sources", func() (*scanner.Rules, error) {
			return scanner.CompileSources([]scanner.Source{
				{Name: "one.yar", Data: []byte("rule a { condition: true }")},
				{Name: "two.yar", Data: []byte("rule b {\n condition:\n  true and\n}")},
			})
		}, "two.yar", 4, "syntax error"},
		{"include refused in memory", func() (*scanner.Rules, error) {
			return scanner.CompileSources([]scanner.Source{{Name: "inc.yar", Data: []byte(`include "/etc/passwd"`)}})
		}, "inc.yar", 1, "include"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.compile()
			if !errors.Is(err, scanner.ErrCompile) {
				t.Fatalf("err = %v, want ErrCompile", err)
			}
			var ce *scanner.CompileError
			if !errors.As(err, &ce) || len(ce.Messages) == 0 {
				t.Fatalf("err = %#v, want *CompileError", err)
			}
			m := ce.Messages[0]
			if m.File != tc.file || m.Line != tc.line || !strings.Contains(m.Text, tc.text) || m.Warning {
				t.Errorf("first message %+v, want %s:%d %q", m, tc.file, tc.line, tc.text)
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Errorf("message %q does not name the file", err)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		paths []string
	}{
		{"nothing", nil},
		{"no rules in folder", []string{t.TempDir()}},
		{"missing", []string{"testdata/rules/nope.yar"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := scanner.Compile(tc.paths...); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestRulesID(t *testing.T) {
	a, err := scanner.Compile("testdata/rules/parity")
	if err != nil {
		t.Fatal(err)
	}
	b, err := scanner.Compile("testdata/rules/parity")
	if err != nil {
		t.Fatal(err)
	}
	c, err := scanner.Compile("testdata/rules/parity/planted.yar")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() || a.ID() == c.ID() || len(a.ID()) != 64 {
		t.Errorf("IDs %s %s %s", a.ID(), b.ID(), c.ID())
	}
	if a.Count() != 21 || c.Count() != 5 {
		t.Errorf("counts %d %d", a.Count(), c.Count())
	}
}

// TestCompiledRules loads a file written by yarac and mixes it with
// nothing else.
func TestCompiledRules(t *testing.T) {
	testenv.NeedTools(t, "yarac")
	out := filepath.Join(t.TempDir(), "planted.yarc")
	cmd := exec.Command("yarac", "-d", "filename=", "testdata/rules/parity/planted.yar", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("yarac: %v\n%s", err, b)
	}
	r, err := scanner.Compile(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Count() != 5 {
		t.Errorf("count %d", r.Count())
	}
	if _, err := scanner.Compile(out, "testdata/rules/parity/planted.yar"); !errors.Is(err, scanner.ErrCompile) {
		t.Errorf("mixing compiled and source rules: %v", err)
	}
	tree, _ := fixture(t)
	rep := scanDir(t, scanner.New(r, scanner.Options{}), filepath.Join(tree, "text"))
	if got := pairs(rep, func(string) bool { return true }); len(got) != 4 { // planted, planted-copy, dropper (2 rules)
		t.Errorf("matches %v", got)
	}
}

// signatureBase is the public rule set the product must run.
func signatureBase(t testing.TB) string {
	dir := filepath.Join(testenv.RepoRoot(), "..", "shared", "rules", "signature-base")
	if _, err := os.Stat(dir); err != nil {
		testenv.Skip(t, "needs signature-base at", dir)
	}
	return dir
}

// TestSignatureBase compiles signature-base and scans the fixture tree.
func TestSignatureBase(t *testing.T) {
	dir := signatureBase(t)
	start := time.Now()
	cache := t.TempDir()
	r, err := scanner.CompileCached(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("signature-base: %d rules, %d warnings, compiled in %v", r.Count(), len(r.Warnings()), time.Since(start))
	start = time.Now()
	if c, err := scanner.CompileCached(cache, dir); err != nil || c.ID() != r.ID() || c.Count() != r.Count() {
		t.Fatalf("cached signature-base: %v", err)
	}
	t.Logf("signature-base from the compiled cache in %v", time.Since(start))
	if r.Count() < 3000 {
		t.Errorf("only %d rules", r.Count())
	}
	tree, files := fixture(t)
	rep, err := scanner.New(r, scanner.Options{}).Scan(context.Background(), scanner.Target{
		Name: "tree", Volumes: []scanner.Volume{{ID: "v", FS: os.DirFS(tree)}}})
	if err != nil {
		t.Fatal(err)
	}
	v := rep.Volumes[0]
	for _, e := range v.Errors {
		if e.Reason != scanner.SkipLimitHit && e.Reason != scanner.SkipReadError {
			t.Errorf("%s: %s %v", e.Path, e.Reason, e.Err)
		}
	}
	if v.Files < int64(len(files)-1) {
		t.Errorf("scanned %d files of %d", v.Files, len(files))
	}
	t.Logf("%d files, %d findings, %v", v.Files, len(rep.Findings), rep.Duration)
}

// TestCompileCached: the second compilation of the same sources loads the
// cached set (same ID, same verdicts), a corrupt cache entry is compiled
// again, and sources with include are never cached.
func TestCompileCached(t *testing.T) {
	tree, _ := fixture(t)
	dir := filepath.Join(t.TempDir(), "cache")
	fresh, err := scanner.CompileCached(dir, "testdata/rules/parity")
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(dir, fresh.ID()+".yarc")
	st, err := os.Stat(entry)
	if err != nil {
		t.Fatalf("nothing cached: %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("cache folder mode %v", fi.Mode())
	}
	cached, err := scanner.CompileCached(dir, "testdata/rules/parity")
	if err != nil {
		t.Fatal(err)
	}
	if cached.ID() != fresh.ID() || cached.Count() != fresh.Count() {
		t.Errorf("cached %s/%d, fresh %s/%d", cached.ID(), cached.Count(), fresh.ID(), fresh.Count())
	}
	want := pairs(scanDir(t, scanner.New(fresh, scanner.Options{}), tree), func(string) bool { return true })
	got := pairs(scanDir(t, scanner.New(cached, scanner.Options{}), tree), func(string) bool { return true })
	if !slices.Equal(got, want) || len(want) < 40 {
		t.Errorf("cached rules scan differently\n%s", diff(got, want))
	}
	if st2, _ := os.Stat(entry); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("the cached set was written again")
	}
	os.WriteFile(entry, []byte("YARA garbage"), 0o600)
	if r, err := scanner.CompileCached(dir, "testdata/rules/parity"); err != nil || r.Count() != fresh.Count() {
		t.Errorf("corrupt cache entry: %v", err)
	}
	if b, _ := os.ReadFile(entry); bytes.HasPrefix(b, []byte("YARA garbage")) {
		t.Error("corrupt cache entry not replaced")
	}

	inc := t.TempDir()
	os.WriteFile(filepath.Join(inc, "a.yar"), []byte(`include "b.inc"`+"\nrule a { condition: b }\n"), 0o644)
	os.WriteFile(filepath.Join(inc, "b.inc"), []byte("rule b { condition: true }\n"), 0o644)
	r, err := scanner.CompileCached(dir, filepath.Join(inc, "a.yar"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, r.ID()+".yarc")); err == nil {
		t.Error("rules with include were cached")
	}
}

// TestPathDependent: rules that read a path-like external say so (snapscan
// scan then keeps no verdict cache for one target alone); rules that read
// only the bytes, or only filetype, do not.
func TestPathDependent(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{`rule a { strings: $a = "x" condition: $a }`, false},
		{`rule a { condition: filetype == "ELF" }`, false},
		{`rule a { condition: filename == "a.exe" }`, true},
		{`rule a { condition: filepath contains "/tmp/" }`, true},
		{`rule a { condition: extension == ".php" }`, true},
		{`rule a { condition: owner == "root" }`, true},
	} {
		r, err := scanner.CompileSources([]scanner.Source{{Name: "t.yar", Data: []byte(tc.src)}})
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		if got := r.PathDependent(); got != tc.want {
			t.Errorf("%s: PathDependent %v, want %v", tc.src, got, tc.want)
		}
	}
}
