package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSigCommands runs keygen, build and verify as a user would, with
// real libyara compiling.
func TestSigCommands(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	os.MkdirAll(filepath.Join(rules, "sub"), 0o755)
	os.WriteFile(filepath.Join(rules, "a.yar"), []byte("rule a { strings: $s = \"evil\" condition: $s and filename != \"\" }\n"), 0o644)
	os.WriteFile(filepath.Join(rules, "sub", "b.yar"), []byte("rule b { condition: filesize == 0 }\n"), 0o644)
	broken := filepath.Join(dir, "broken.yar")
	os.WriteFile(broken, []byte("rule ok { condition: true }\n\nrule bad { condition: $nope }\n"), 0o644)
	p := func(name string) string { return filepath.Join(dir, name) }

	tests := []struct {
		name string
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{"keygen", []string{"sig", "keygen", "--out", p("k")}, 0, "key id", ""},
		{"keygen refuses to overwrite", []string{"sig", "keygen", "--out", p("k")}, 1, "", "exists"},
		{"other key", []string{"sig", "keygen", "--out", p("other")}, 0, "key id", ""},
		{"build", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--version", "3", "--out", p("demo.bundle"), rules}, 0, "demo version 3, 2 files, 2 rules", ""},
		{"build refuses what does not compile", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--version", "4", "--out", p("bad.bundle"), broken}, 1, "", "broken.yar:3: error"},
		{"build without version", []string{"sig", "build", "--key", p("k.key"), "--name", "demo", "--out", p("x.bundle"), rules}, 2, "", "want --key"},
		{"verify", []string{"sig", "verify", "--pub", p("k.pub"), p("demo.bundle")}, 0, `"version": 3`, ""},
		{"verify with two keys", []string{"sig", "verify", "--pub", p("other.pub"), "--pub", p("k.pub"), p("demo.bundle")}, 0, "valid: demo version 3", ""},
		{"verify with an untrusted key", []string{"sig", "verify", "--pub", p("other.pub"), p("demo.bundle")}, 1, "", "invalid (untrusted_key)"},
		{"verify a truncated bundle", []string{"sig", "verify", "--pub", p("k.pub"), p("cut.bundle")}, 1, "", "invalid (malformed)"},
		{"unknown subcommand", []string{"sig", "frobnicate"}, 2, "", "unknown subcommand"},
	}
	for _, tt := range tests {
		if tt.name == "verify a truncated bundle" {
			b, _ := os.ReadFile(p("demo.bundle"))
			os.WriteFile(p("cut.bundle"), b[:len(b)/2], 0o644)
		}
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.out) || !strings.Contains(stderr.String(), tt.err) {
			t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", tt.name, code, tt.code, stdout.String(), stderr.String())
		}
	}
	if _, err := os.Stat(p("bad.bundle")); !os.IsNotExist(err) {
		t.Error("a bundle was written for rules that do not compile")
	}
	if st, err := os.Stat(p("k.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("k.key: %v %v", st.Mode(), err)
	}
}
