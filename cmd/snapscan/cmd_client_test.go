package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

// runBinEnv runs the binary with extra environment variables.
func runBinEnv(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(snapscanBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	} else if err != nil {
		t.Fatalf("snapscan %v: %v", args, err)
	}
	return 0, out.String(), errb.String()
}

// TestClientCommands runs a real "snapscan serve" on loopback and drives
// it with every client command of the binary: signatures (installed with
// sig build and sig push), datastores, pause and resume, submit, scans,
// status, cancel and findings, with the endpoint and token from flags, the
// environment and a client configuration file, and the exit statuses of
// the shared scheme.
func TestClientCommands(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	sample := filepath.Join(testenv.Fixture(t, "sample-disk.sh"), "sample.qcow2")
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	ds := p("ds")
	os.MkdirAll(ds, 0o755)
	if b, err := os.ReadFile(sample); err != nil {
		t.Fatal(err)
	} else {
		os.WriteFile(filepath.Join(ds, "vm1.qcow2"), b, 0o644)
	}
	const token, pushToken = "api-token-0123456789abcdef", "push-token-0123456789abcdef"
	os.WriteFile(p("api.token"), []byte(token+"\n"), 0o600)
	os.WriteFile(p("push.token"), []byte(pushToken+"\n"), 0o600)
	os.WriteFile(p("wrong.token"), []byte("wrong-token-0123456789abcdef\n"), 0o600)
	if code, _, stderr := runBin(t, "sig", "keygen", "--out", p("k")); code != 0 {
		t.Fatal(stderr)
	}
	rules := filepath.Join(testenv.RepoRoot(), "testdata", "rules")
	if code, _, stderr := runBin(t, "sig", "build", "--key", p("k.key"), "--name", "demo", "--version", "1", "--out", p("demo.bundle"), rules); code != 0 {
		t.Fatal(stderr)
	}
	addr := freeAddr(t, "127.0.0.1")
	os.WriteFile(p("appliance.yaml"), fmt.Appendf(nil, `
server: {listen: %q}
auth: {token_files: [api.token]}
signatures: {state_dir: sig, trusted_keys: [k.pub], name: demo, receiver_token_file: push.token}
datastores: [{name: ds, path: %q}]
database: {path: db/snapscan.db}
events: {log: none}
log: {level: warn}
`, addr, ds), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", p("appliance.yaml")}, logs, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("serve did not stop")
		}
	})
	base := "http://" + addr
	flags := []string{"--url", base, "--token-file", p("api.token")}
	env := []string{"SNAPSCAN_URL=" + base, "SNAPSCAN_TOKEN_FILE=" + p("api.token"), "XDG_CONFIG_HOME=" + p("noconfig")}
	os.WriteFile(p("client.yaml"), []byte("url: "+base+"\ntoken_file: api.token\n"), 0o600)
	conf := []string{"SNAPSCAN_CLIENT_CONFIG=" + p("client.yaml")}
	cli := func(args ...string) (int, string, string) { return runBin(t, append(args, flags...)...) }
	waitUntil(t, "serve listening", func() bool { code, _, _ := cli("datastores"); return code == 0 })

	if code, out, _ := runBinEnv(t, conf, "signatures"); code != 0 || !strings.HasPrefix(out, "active: none") {
		t.Errorf("signatures before a push: exit %d\n%s", code, out)
	}
	if code, out, stderr := runBin(t, "sig", "push", "--url", base, "--token-file", p("push.token"), p("demo.bundle")); code != 0 {
		t.Fatalf("sig push: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, _ := runBinEnv(t, conf, "signatures"); code != 0 || !strings.HasPrefix(out, "active: demo version 1: ") {
		t.Errorf("signatures: exit %d\n%s", code, out)
	}

	// pause, datastores, submit while paused, scans, cancel, status.
	if code, out, _ := runBinEnv(t, env, "pause", "ds"); code != 0 || out != "datastore ds: paused (0 running, 0 queued)\n" {
		t.Errorf("pause: exit %d %q", code, out)
	}
	if code, out, _ := cli("datastores"); code != 0 || !regexp.MustCompile(`(?m)^ds\s+paused\s+0\s+0\s+1\s`).MatchString(out) {
		t.Errorf("datastores: exit %d\n%s", code, out)
	}
	code, out, stderr := cli("submit", "--vm", "vm1", "--disk", "ds:vm1.qcow2", "--disk-format", "qcow2")
	m := regexp.MustCompile(`^scan (\d+) queued \(vm vm1\)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("submit: exit %d %q %s", code, out, stderr)
	}
	id := m[1]
	if code, out, _ := runBinEnv(t, env, "scans", "--state", "queued"); code != 0 || !regexp.MustCompile(`(?m)^`+id+`\s+vm1\s+queued\s+-\s+on_demand`).MatchString(out) {
		t.Errorf("scans: exit %d\n%s", code, out)
	}
	if code, out, _ := cli("cancel", id); code != 0 || out != "scan "+id+" (vm vm1): cancelled\n" {
		t.Errorf("cancel: exit %d %q", code, out)
	}
	if code, _, stderr := cli("cancel", id); code != exitFailed || !strings.Contains(stderr, "already finished") {
		t.Errorf("cancel twice: exit %d %s", code, stderr)
	}
	if code, out, _ := cli("status", id); code != exitFailed || !strings.Contains(out, "cancelled") {
		t.Errorf("status of a cancelled scan: exit %d\n%s", code, out)
	}
	if code, out, _ := runBinEnv(t, conf, "resume", "--json", "ds"); code != 0 || !strings.Contains(out, `"paused":false`) {
		t.Errorf("resume --json: exit %d %q", code, out)
	}

	// A scan that finds something: exit 1 from submit --wait and findings.
	code, out, stderr = runBinEnv(t, conf, "submit", "--vm", "vm1", "--disk", "ds:vm1.qcow2", "--wait")
	if code != exitFindings || !strings.Contains(out, "EICAR_Test_File") {
		t.Errorf("submit --wait: exit %d\n%s%s\nappliance log:\n%s", code, out, stderr, tail(logs.String(), 3000))
	}
	if code, out, _ := cli("findings", "--vm", "vm1"); code != exitFindings || !strings.Contains(out, "EICAR_Test_File") {
		t.Errorf("findings: exit %d\n%s", code, out)
	}
	if code, out, _ := cli("findings", "--vm", "nobody", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("findings of nobody: exit %d %q", code, out)
	}

	// Failures: exit 2 with the server's reason.
	for _, tt := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"datastores", "--url", base, "--token-file", p("wrong.token")}, "401"},
		{nil, []string{"pause", "nosuch", "--url", base, "--token-file", p("api.token")}, `no datastore "nosuch"`},
		{env, []string{"status", "999999"}, "404"},
		{[]string{"SNAPSCAN_TOKEN_FILE=", "SNAPSCAN_TOKEN=", "XDG_CONFIG_HOME=" + p("noconfig")}, []string{"scans"}, "no token"},
		{[]string{"SNAPSCAN_CLIENT_CONFIG=" + p("none.yaml")}, []string{"scans"}, "none.yaml: no such file"},
		{[]string{"SNAPSCAN_CLIENT_CONFIG=" + p("bad.yaml")}, []string{"scans"}, `field tokenfile not found`},
		{nil, []string{"cancel", "x1", "--url", base}, `"x1" is not a number`},
	} {
		os.WriteFile(p("bad.yaml"), []byte("tokenfile: x\n"), 0o600)
		if code, _, stderr := runBinEnv(t, tt.env, tt.args...); code != exitFailed || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, want 2 and %q: %s", tt.args, code, tt.want, stderr)
		}
	}
	var list struct {
		Scans []struct{ State string }
	}
	_, raw, _ := cli("scans", "--json")
	if json.Unmarshal([]byte(raw), &list) != nil || len(list.Scans) != 2 {
		t.Errorf("scans --json: %s", raw)
	}
}

// TestCompletionBash sources "snapscan completion bash" in a real bash and
// completes with it: commands, flags of a command and of a sig
// subcommand, the values of --format.
func TestCompletionBash(t *testing.T) {
	testenv.NeedTools(t, "bash")
	script := filepath.Join(t.TempDir(), "snapscan.bash")
	code, out, stderr := runBin(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("completion bash: exit %d %s", code, stderr)
	}
	os.WriteFile(script, []byte(out), 0o644)
	complete := func(words ...string) string {
		t.Helper()
		// COMP_WORDS as bash fills them for "snapscan WORDS", the cursor on the last.
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = fmt.Sprintf("%q", w)
		}
		sh := fmt.Sprintf(`source %q
complete -p snapscan
COMP_WORDS=(snapscan %s); COMP_CWORD=%d
_snapscan
printf '%%s\n' "${COMPREPLY[@]}"`, script, strings.Join(quoted, " "), len(words))
		b, err := exec.Command("bash", "--norc", "--noprofile", "-c", sh).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, b)
		}
		return string(b)
	}
	lines := func(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
	got := lines(complete("s"))
	if got[0] != "complete -o filenames -F _snapscan snapscan" || strings.Join(got[1:], " ") != "scan scans serve sig signatures status submit" {
		t.Errorf("snapscan s<TAB>: %q", got)
	}
	if got := strings.Join(lines(complete("scan", "--for"))[1:], " "); got != "--format" {
		t.Errorf("scan --for<TAB>: %q", got)
	}
	if got := strings.Join(lines(complete("scan", "--format", ""))[1:], " "); got != "text json jsonl sarif csv" {
		t.Errorf("scan --format <TAB>: %q", got)
	}
	if got := strings.Join(lines(complete("sig", "push", "--t"))[1:], " "); !strings.Contains(got, "--targets") || !strings.Contains(got, "--token-file") {
		t.Errorf("sig push --t<TAB>: %q", got)
	}
	if got := strings.Join(lines(complete("cat", "-"))[1:], " "); !strings.Contains(got, "-o") || !strings.Contains(got, "--disk-format") {
		t.Errorf("cat -<TAB>: %q", got)
	}
	if code, out, _ := runBin(t, "completion", "zsh"); code != 0 || !strings.HasPrefix(out, "#compdef snapscan\n") || !strings.Contains(out, "'--format[") {
		t.Errorf("completion zsh: exit %d\n%.300s", code, out)
	}
	if code, _, _ := runBin(t, "completion", "fish"); code != exitFailed {
		t.Errorf("completion fish: exit %d", code)
	}
}
