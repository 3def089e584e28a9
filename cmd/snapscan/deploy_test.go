package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestInstallScript runs deploy/install.sh into a staging root: the
// service user made by useradd, folders, secrets and TLS material with
// their modes, a configuration that passes --check, and a unit derived
// from it (the datastore folders read-only, block devices allowed
// read-only for a datastore under /dev) that systemd-analyze verify
// passes without a word, while it does complain of a broken unit.
func TestInstallScript(t *testing.T) {
	testenv.NeedTools(t, "bash", "openssl", "useradd", "systemd-analyze")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	for _, f := range []string{"passwd", "group", "shadow", "gshadow", "login.defs"} {
		if b, err := os.ReadFile(filepath.Join("/etc", f)); err == nil {
			os.WriteFile(filepath.Join(root, "etc", f), b, 0o600)
		}
	}
	dir := t.TempDir()
	ds := filepath.Join(dir, "images with space")
	os.MkdirAll(ds, 0o755)
	if code, _, stderr := runBin(t, "sig", "keygen", "--out", filepath.Join(dir, "k")); code != 0 {
		t.Fatal(stderr)
	}
	// A datastore of block devices: a folder under /dev that this machine
	// has (/dev/mapper only exists once device-mapper was used).
	devDS := "/dev"
	for _, p := range []string{"/dev/mapper", "/dev/disk/by-id", "/dev/disk"} {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			devDS = p
			break
		}
	}
	cfg := filepath.Join(dir, "appliance.yaml")
	os.WriteFile(cfg, []byte(`name: test-01
server:
  listen: 0.0.0.0:8443
  tls: {cert: /etc/snapscan/tls/appliance.crt, key: /etc/snapscan/tls/appliance.key}
auth: {token_files: [/etc/snapscan/api.tokens]}
signatures:
  state_dir: /var/lib/snapscan/signatures
  trusted_keys: [/etc/snapscan/signing.pub]
  receiver_token_file: /etc/snapscan/receiver.token
datastores:
  - {name: images, path: "`+ds+`"}
  - {name: luns, path: `+devDS+`}
database: {path: /var/lib/snapscan/snapscan.db}
events: {log: /var/log/snapscan/events.jsonl}
`), 0o644)
	install := func() string {
		t.Helper()
		cmd := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "deploy", "install.sh"), "--root", root, "--bin", snapscanBin(t),
			"--config", cfg, "--trusted-key", filepath.Join(dir, "k.pub"), "--hostname", "scan1.test")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	out := install()
	for _, want := range []string{"created system user snapscan", "created " + root + "/etc/snapscan/api.tokens", "self-signed TLS certificate for scan1.test",
		root + "/etc/snapscan/appliance.yaml: ok", "systemd-analyze verify: ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("install.sh says nothing of %q:\n%s", want, out)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if !strings.Contains(string(passwd), ":/var/lib/snapscan:/usr/sbin/nologin\n") || !strings.Contains(string(passwd), "\nsnapscan:") {
		t.Errorf("no snapscan user in the root's passwd")
	}
	for name, mode := range map[string]os.FileMode{
		"etc/snapscan": os.ModeDir | 0o750, "etc/snapscan/tls": os.ModeDir | 0o750, "var/lib/snapscan": os.ModeDir | 0o700,
		"var/log/snapscan": os.ModeDir | 0o750, "etc/snapscan/api.tokens": 0o640, "etc/snapscan/receiver.token": 0o640,
		"etc/snapscan/tls/appliance.key": 0o640, "etc/snapscan/tls/appliance.crt": 0o644, "etc/snapscan/appliance.yaml": 0o640,
		"usr/local/bin/snapscan": 0o755, "etc/systemd/system/snapscan.service": 0o644,
	} {
		if fi, err := os.Stat(filepath.Join(root, name)); err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v, want mode %v (%v)", name, fi.Mode(), mode, err)
		}
	}
	tok, _ := os.ReadFile(filepath.Join(root, "etc", "snapscan", "api.tokens"))
	if lines := strings.Split(strings.TrimSpace(string(tok)), "\n"); len(lines) != 2 || len(lines[1]) != 64 {
		t.Errorf("api.tokens: %q", tok)
	}
	if b, err := exec.Command("openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", filepath.Join(root, "etc", "snapscan", "tls", "appliance.crt")).CombinedOutput(); err != nil ||
		!strings.Contains(string(b), "DNS:scan1.test") {
		t.Errorf("certificate: %v %s", err, b)
	}

	unitPath := filepath.Join(root, "etc", "systemd", "system", "snapscan.service")
	unit, _ := os.ReadFile(unitPath)
	for _, want := range []string{
		"\nReadOnlyPaths=" + devDS + " \"" + ds + "\"\n", "\nPrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=block-* r\nSupplementaryGroups=disk\n",
		"\nExecStart=" + root + "/usr/local/bin/snapscan serve --config " + root + "/etc/snapscan/appliance.yaml\n", "\nUser=snapscan\n",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	verify := func(path string) string {
		b, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
		if err != nil {
			return err.Error() + ": " + string(b)
		}
		return string(b)
	}
	if v := verify(unitPath); v != "" {
		t.Errorf("systemd-analyze verify on the installed unit: %s", v)
	}
	broken := filepath.Join(t.TempDir(), "snapscan.service")
	os.WriteFile(broken, []byte(strings.Replace(string(unit), "ProtectSystem=strict", "ProtectSystem=everything", 1)), 0o644)
	if v := verify(broken); !strings.Contains(v, "Failed to parse protect system value, ignoring: everything") {
		t.Errorf("systemd-analyze verify does not notice a broken unit: %q", v)
	}

	// Again, with the datastore under /dev gone: the unit follows, the
	// secrets stay as they were.
	c, _ := os.ReadFile(filepath.Join(root, "etc", "snapscan", "appliance.yaml"))
	os.WriteFile(filepath.Join(root, "etc", "snapscan", "appliance.yaml"), []byte(strings.Replace(string(c), "  - {name: luns, path: "+devDS+"}\n", "", 1)), 0o640)
	out = install()
	unit, _ = os.ReadFile(unitPath)
	if tok2, _ := os.ReadFile(filepath.Join(root, "etc", "snapscan", "api.tokens")); string(tok2) != string(tok) || strings.Contains(out, "created") {
		t.Errorf("a second run replaced secrets:\n%s", out)
	}
	if !strings.Contains(string(unit), "\nPrivateDevices=yes\n") || strings.Contains(string(unit), "DeviceAllow") || !strings.Contains(string(unit), "\nReadOnlyPaths=\""+ds+"\"\n") {
		t.Errorf("unit after removing the device datastore:\n%s", unit)
	}
}

// TestPlainHTTPRefused: --check and start-up refuse a plain-HTTP
// listener other machines can reach, unless allow_plain_http says so.
func TestPlainHTTPRefused(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runArgs("sig", "keygen", "--out", filepath.Join(dir, "k")); code != 0 {
		t.Fatal(stderr)
	}
	write := func(listen, extra string) string {
		p := filepath.Join(dir, "a.yaml")
		os.WriteFile(p, []byte("server: {listen: \""+listen+"\""+extra+"}\nauth: {tokens: [api-token-0123456789abcdef]}\n"+
			"signatures: {state_dir: sig, trusted_keys: [k.pub]}\ndatastores: [{name: ds, path: .}]\ndatabase: {path: db.sqlite}\n"), 0o600)
		return p
	}
	for _, tt := range []struct {
		listen, extra string
		code          int
		want          string
	}{
		{"0.0.0.0:8480", "", exitFailed, "plain HTTP outside loopback"},
		{":8480", "", exitFailed, "plain HTTP outside loopback"},
		{"127.0.0.1:8480", "", 0, ": ok"},
		{"localhost:8480", "", 0, ": ok"},
		{"[::1]:8480", "", 0, ": ok"},
		{"0.0.0.0:8480", ", allow_plain_http: true", 0, ": ok"},
	} {
		code, out, stderr := runArgs("serve", "--check", "--config", write(tt.listen, tt.extra))
		if code != tt.code || !strings.Contains(out+stderr, tt.want) {
			t.Errorf("listen %s%s: exit %d, want %d and %q: %s%s", tt.listen, tt.extra, code, tt.code, tt.want, out, stderr)
		}
	}
	// Start-up too (serve loads and checks the same way before listening).
	if code, _, stderr := runArgs("serve", "--config", write("0.0.0.0:0", "")); code != exitFailed || !strings.Contains(stderr, "server.allow_plain_http") {
		t.Errorf("serve on 0.0.0.0 without TLS: exit %d %s", code, stderr)
	}
}
