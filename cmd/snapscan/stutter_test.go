package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestErrorsNameOnce damages the committed ext4 example (the directory
// entry of /etc/hostname: its block's checksum no longer matches) and
// checks that ls and cat name the disk and the volume once each (issue
// 11.11: errors stuttered, one prefix per layer).
func TestErrorsNameOnce(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "snapshot", "ext4", "testdata", "example.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("hostname"))
	if i < 8 {
		t.Fatal("no directory entry of hostname in the example")
	}
	binary.LittleEndian.PutUint32(b[i-8:], 9999)
	img := filepath.Join(t.TempDir(), "bad.ext4")
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	once := func(what, msg string) {
		t.Helper()
		for _, s := range []string{"bad.ext4", " disk"} {
			if n := strings.Count(msg, s); n != 1 {
				t.Errorf("%s: %q names %s %d times, want once", what, msg, s, n)
			}
		}
	}
	code, out, stderr := runArgs("ls", img)
	if code != exitIncomplete || !strings.Contains(stderr, "directory inode 12") {
		t.Fatalf("ls: exit %d, stderr %q; want 3 (incomplete) and the damaged directory", code, stderr)
	}
	if !strings.Contains(out, "/etc") {
		t.Errorf("ls does not list the rest: %s", out)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 1 {
		t.Errorf("ls: %d error lines, want 1: %q", len(lines), stderr)
	}
	once("ls", lines[0])
	code, _, stderr = runArgs("cat", img, "disk", "/etc/hostname")
	if code == 0 || !strings.Contains(stderr, "directory inode 12") {
		t.Fatalf("cat: exit %d, stderr %q", code, stderr)
	}
	once("cat", strings.TrimSpace(stderr))
}
