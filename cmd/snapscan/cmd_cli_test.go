package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestExitStatusDocumented checks that the exit statuses are written once:
// every command's --help ends with the same text, and the README's
// command-line section quotes it word for word.
func TestExitStatusDocumented(t *testing.T) {
	for _, c := range commands {
		code, stdout, stderr := runArgs(c.name, "--help")
		if help := stdout + stderr; code != 0 || !strings.Contains(help, exitStatusHelp) || !strings.Contains(help, "\nExamples:\n  snapscan "+c.name) {
			t.Errorf("snapscan %s --help: exit %d; want the exit statuses and examples:\n%s", c.name, code, help)
		}
	}
	readme, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```\n"+exitStatusHelp+"```\n") {
		t.Errorf("README.md does not quote the exit statuses of --help (exitStatusHelp) in a code block")
	}
	code, _, stderr := runBin(t, "no-such-command")
	if code != exitFailed || !strings.Contains(stderr, `unknown command "no-such-command"`) {
		t.Errorf("unknown command: exit %d %s", code, stderr)
	}
}

// TestVersion builds the binary the two ways a release is made: by
// scripts/build.sh (version and commit from git) and with -ldflags -X.
func TestVersion(t *testing.T) {
	testenv.NeedTools(t, "git")
	root := testenv.RepoRoot()
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "snapscan")
	if out, err := exec.Command(filepath.Join(root, "scripts", "build.sh"), bin).CombinedOutput(); err != nil {
		t.Fatalf("scripts/build.sh: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("version --json: %v", err)
	}
	var v buildVersion
	if err := json.Unmarshal(out, &v); err != nil || !strings.HasPrefix(string(out), "{\n  \"schema_version\": 1,") {
		t.Fatalf("version --json: %v\n%s", err, out)
	}
	if v.Commit != strings.TrimSpace(string(head)) || !regexp.MustCompile(`^v\d+\.\d+\.\d+`).MatchString(v.Version) ||
		!strings.Contains(v.Version, v.Commit[:12]) && !strings.HasPrefix(v.Version, "v") {
		t.Errorf("scripts/build.sh: version %q commit %q; want a version naming HEAD %s", v.Version, v.Commit, head)
	}
	text, _ := exec.Command(bin, "version").Output()
	if !strings.HasPrefix(string(text), "snapscan "+v.Version+"\ncommit: "+v.Commit) || strings.Contains(string(text), "dev") {
		t.Errorf("version:\n%s", text)
	}
	rel := filepath.Join(dir, "rel")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7", "-o", rel, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if text, _ := exec.Command(rel, "version").Output(); !strings.HasPrefix(string(text), "snapscan v9.8.7\n") {
		t.Errorf("-ldflags -X main.version=v9.8.7:\n%s", text)
	}
}

// TestLsOptions runs the binary's ls with --volume, a path prefix, --hash
// (checked against the source tree's files), ISO 8601 times and ls -l
// modes, and cat -o.
func TestLsOptions(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	fix := testenv.Fixture(t, "sample-disk.sh")
	sample := filepath.Join(fix, "sample.qcow2")

	code, out, stderr := runBin(t, "ls", "--json", "--hash", "--volume", "p2", sample, "/bin")
	if code != 0 {
		t.Fatalf("ls --hash --volume p2 /bin: exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(out, "{\n  \"schema_version\": 1,") {
		t.Errorf("the JSON does not lead with schema_version:\n%.200s", out)
	}
	var ls lsOutput
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range ls.Files {
		paths = append(paths, f.Volume+" "+f.Path)
		if f.Type == "dir" {
			if f.SHA256 != "" || f.Mode[0] != 'd' {
				t.Errorf("%s: a folder with sha256 %q mode %s", f.Path, f.SHA256, f.Mode)
			}
			continue
		}
		want, err := os.ReadFile(filepath.Join(fix, "tree", "root", f.Path))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(want); f.SHA256 != hex.EncodeToString(sum[:]) || f.Mode[0] != '-' {
			t.Errorf("%s: sha256 %s mode %s, want %x", f.Path, f.SHA256, f.Mode, sum)
		}
	}
	if strings.Join(paths, ",") != "p2 /bin,p2 /bin/cat,p2 /bin/env,p2 /bin/ls" && strings.Join(paths, ",") != "p2 /bin/cat,p2 /bin/env,p2 /bin/ls" {
		t.Errorf("ls --volume p2 /bin lists %v", paths)
	}
	if len(ls.Volumes) != 1 || ls.Volumes[0].ID != "p2" || ls.Volumes[0].FileSystem != "ext4" {
		t.Errorf("--volume p2: volumes %+v", ls.Volumes)
	}

	code, out, stderr = runBin(t, "ls", sample, "/alice-home")
	link := regexp.MustCompile(`(?m)^p2\s+lrwxrwxrwx\s+\d+\s+(\S+)\s+/alice-home -> /home/alice$`).FindStringSubmatch(out)
	if code != 0 || link == nil {
		t.Fatalf("ls IMAGE /alice-home: exit %d, %s\n%s", code, stderr, out)
	}
	if _, err := time.Parse(time.RFC3339, link[1]); err != nil {
		t.Errorf("time %q is not ISO 8601: %v", link[1], err)
	}
	if !strings.Contains(out, "CHAIN") || !strings.Contains(out, sample) {
		t.Errorf("ls does not show the image's chain:\n%s", out)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "--volume", "p7", sample}, `"p7" (volumes: p1, p2)`},
		{[]string{"ls", sample, "/nope"}, "/nope: no such file or folder on any volume (p1, p2)"},
		{[]string{"ls", sample, "/a", "/b"}, "at most one PATH"},
	} {
		if code, _, stderr := runBin(t, tt.args...); code != exitFailed || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, want 2 and %q: %s", tt.args, code, tt.want, stderr)
		}
	}

	dst := filepath.Join(t.TempDir(), "sample.bin")
	os.WriteFile(dst, []byte("old content, replaced"), 0o644)
	if code, _, stderr := runBin(t, "cat", "-o", dst, sample, "p2", "/home/alice/Downloads/invoice.pdf.exe"); code != 0 {
		t.Fatalf("cat -o: exit %d %s", code, stderr)
	}
	got, _ := os.ReadFile(dst)
	want, _ := os.ReadFile(filepath.Join(fix, "tree", "root", "home", "alice", "Downloads", "invoice.pdf.exe"))
	if fi, _ := os.Stat(dst); string(got) != string(want) || fi.Mode().Perm() != 0o600 {
		t.Errorf("cat -o wrote %q mode %v", got, fi.Mode())
	}
	if code, _, _ := runBin(t, "cat", "-o", dst, sample, "p2", "/nope"); code != exitFailed {
		t.Errorf("cat -o of a missing file: exit %d", code)
	}
	if got2, _ := os.ReadFile(dst); string(got2) != string(want) {
		t.Errorf("a failed cat -o changed the file: %q", got2)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
		t.Errorf("cat -o left temporary files: %v", ents)
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[os.FileMode]string{
		0o644:                                     "-rw-r--r--",
		os.ModeDir | 0o755:                        "drwxr-xr-x",
		os.ModeSymlink | 0o777:                    "lrwxrwxrwx",
		os.ModeSetuid | 0o755:                     "-rwsr-xr-x",
		os.ModeSetgid | 0o745:                     "-rwxr-Sr-x",
		os.ModeDir | os.ModeSticky | 0o777:        "drwxrwxrwt",
		os.ModeDevice | os.ModeCharDevice | 0o620: "crw--w----",
		os.ModeDevice | 0o660:                     "brw-rw----",
		os.ModeNamedPipe | 0o600:                  "prw-------",
		os.ModeSocket | 0o777:                     "srwxrwxrwx",
	} {
		if got := modeString(m); got != want {
			t.Errorf("modeString(%v) = %q, want %q", m, got, want)
		}
	}
}
