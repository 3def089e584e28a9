package scanner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		dir           bool
		want          bool
	}{
		{"**/*.vhdx", "/a/b/c.vhdx", false, true},
		{"**/*.vhdx", "/c.vhdx", false, true},
		{"**/*.vhdx", "/a/c.vhdx.txt", false, false},
		{"/var/lib/pacemaker/**", "/var/lib/pacemaker", true, true},
		{"/var/lib/pacemaker/**", "/var/lib/pacemaker/cib/cib.xml", false, true},
		{"/var/lib/pacemaker/**", "/var/lib/pacemakerx/a", false, false},
		{"var/lib/*", "/var/lib/dpkg", true, true},
		{"var/lib/*", "/var/lib/dpkg/status", false, false},
		{"/home/*/.cache/**", "/home/ann/.cache/x/y", false, true},
		{"/home/*/.cache/**", "/home/.cache/x", false, false},
		{"**", "/anything/at/all", false, true},
		{"/a/**/b", "/a/b", false, true},
		{"/a/**/b", "/a/x/y/b", false, true},
		{"/a/**/b", "/a/x/y/c", false, false},
		{"*.EXE", "/x.exe", false, false}, // case-sensitive
		// gitignore: no slash matches at any depth.
		{"eicar.com", "/eicar.com", false, true},
		{"eicar.com", "/home/ann/Downloads/eicar.com", false, true},
		{"eicar.com", "/home/eicar.com.txt", false, false},
		{"*.zip", "/a/b/c.zip", false, true},
		{"*.zip", "/c.zip", false, true},
		{"node_modules", "/srv/app/node_modules", true, true},
		// A slash at the start or in the middle anchors.
		{"/eicar.com", "/home/eicar.com", false, false},
		{"/eicar.com", "/eicar.com", false, true},
		{"tmp/x", "/a/tmp/x", false, false},
		{"tmp/x", "/tmp/x", false, true},
		// A trailing slash matches folders only.
		{"cache/", "/var/cache", true, true},
		{"cache/", "/var/cache", false, false},
		{"/var/cache/", "/var/cache", true, true},
		{"/var/cache/", "/x/var/cache", true, false},
		{`\!x`, "/a/!x", false, true},
	} {
		g, err := CompileGlob(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if got := g.Match(tc.path, tc.dir); got != tc.want {
			t.Errorf("%q matching %q (dir %v) = %v, want %v", tc.pattern, tc.path, tc.dir, got, tc.want)
		}
	}
	for _, bad := range []string{"", "/", "//", "a//b", "a**", "!x", "[z-a"} {
		if _, err := CompileGlob(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestFiletype(t *testing.T) {
	tar := make([]byte, 512)
	copy(tar[257:], "ustar\x0000")
	for _, tc := range []struct {
		name string
		b    string
		want string
	}{
		{"pe", "MZ\x90\x00", TypeEXE},
		{"elf", "\x7fELF\x02\x01", TypeELF},
		{"macho64", "\xcf\xfa\xed\xfe", TypeMachO},
		{"fat macho", "\xca\xfe\xba\xbe\x00\x00\x00\x02", TypeMachO},
		{"java class", "\xca\xfe\xba\xbe\x00\x00\x00\x34", TypeClass},
		{"zip", "PK\x03\x04", TypeZIP},
		{"gzip", "\x1f\x8b\x08", TypeGZIP},
		{"zstd", "\x28\xb5\x2f\xfd", TypeZSTD},
		{"bzip2", "BZh91AY", TypeBZIP2},
		{"not bzip2", "BZhx", ""},
		{"xz", "\xfd7zXZ\x00", TypeXZ},
		{"tar", string(tar), TypeTAR},
		{"ole", "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", TypeOLE},
		{"pdf", "%PDF-1.7", TypePDF},
		{"pdf late", "junk\n%PDF-1.4", TypePDF},
		{"script", "#!/bin/sh", TypeScript},
		{"php", "<?php echo 1;", TypeScript},
		{"text", "hello", ""},
		{"empty", "", ""},
	} {
		if got := Filetype([]byte(tc.b)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestStreamMemberName(t *testing.T) {
	for _, tc := range [][3]string{
		{"a.tar.gz", TypeGZIP, "a.tar"},
		{"x.tgz", TypeGZIP, "x.tar"},
		{"log.ZST", TypeZSTD, "log"},
		{"deep", TypeGZIP, "deep"},
		{".gz", TypeGZIP, ".gz"},
		{"", TypeXZ, "xz"},
	} {
		if got := streamMemberName(tc[0], tc[1]); got != tc[2] {
			t.Errorf("%q: %q, want %q", tc[0], got, tc[2])
		}
	}
}

func TestMemoryCache(t *testing.T) {
	c := NewMemoryCache(2)
	k := func(b byte) CacheKey { return CacheKey{Content: [32]byte{b}, Rules: "r"} }
	c.Put(k(1), Verdict{})
	c.Put(k(2), Verdict{Matches: []Match{{Rule: "x"}}})
	c.Get(k(1)) // 1 is now the most recent: 2 is evicted next
	c.Put(k(3), Verdict{})
	if _, ok := c.Get(k(2)); ok {
		t.Error("2 not evicted")
	}
	if _, ok := c.Get(k(1)); !ok {
		t.Error("1 evicted")
	}
	if c.Len() != 2 {
		t.Errorf("len %d", c.Len())
	}
	if _, ok := c.Get(CacheKey{Content: [32]byte{1}, Rules: "other"}); ok {
		t.Error("hit under other rules")
	}
}

// TestXZLayouts checks the dictionary check against what xz writes:
// several blocks, several streams, stream padding.
func TestXZLayouts(t *testing.T) {
	testenv.NeedTools(t, "xz")
	var plain bytes.Buffer
	for i := range 200000 {
		fmt.Fprintf(&plain, "line %d\n", i)
	}
	run := func(args ...string) []byte {
		cmd := exec.Command("xz", args...)
		cmd.Stdin = bytes.NewReader(plain.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	single := run("-c", "-6")
	blocks := run("-c", "-T2", "--block-size=300KiB")
	two := append(append(append([]byte{}, single...), 0, 0, 0, 0), blocks...)
	for name, tc := range map[string]struct {
		data []byte
		want int
	}{
		"single":                  {single, plain.Len()},
		"blocks":                  {blocks, plain.Len()},
		"two streams and padding": {two, 2 * plain.Len()},
	} {
		if err := checkXZ(tc.data); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		r, _, err := decompressor(TypeXZ, tc.data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		n, err := io.Copy(io.Discard, r)
		if err != nil || int(n) != tc.want {
			t.Errorf("%s: %d bytes, %v", name, n, err)
		}
	}
}

// TestFileTarget checks the one-file FS against the fs.FS contract, and
// that only regular files are targets.
func TestFileTarget(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.exe")
	os.WriteFile(p, []byte("MZ hello"), 0o644)
	tg, err := FileTarget(p)
	if err != nil {
		t.Fatal(err)
	}
	if tg.Kind != KindFile || len(tg.Volumes) != 1 {
		t.Fatalf("%+v", tg)
	}
	if err := fstest.TestFS(tg.Volumes[0].FS, "a.exe"); err != nil {
		t.Error(err)
	}
	if _, err := FileTarget(dir); err == nil {
		t.Error("a folder is a file target")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := FileTarget(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: %v", err)
	}
}

// TestJobQueue: largest first; after abort push refuses (also a push
// waiting on a full queue) while pop drains what is queued.
func TestJobQueue(t *testing.T) {
	q := newJobQueue()
	ctx := context.Background()
	for _, n := range []int64{3, 1, 4, 1, 5, 9, 2, 6} {
		if err := q.push(ctx, job{size: n, name: fmt.Sprint(n)}); err != nil {
			t.Fatal(err)
		}
	}
	q.close()
	var got []int64
	for {
		j, ok := q.pop()
		if !ok {
			break
		}
		got = append(got, j.size)
	}
	if fmt.Sprint(got) != "[9 6 5 4 3 2 1 1]" {
		t.Errorf("order %v", got)
	}

	q = newJobQueue()
	for i := range maxQueued {
		q.push(ctx, job{size: int64(i)})
	}
	done := make(chan error)
	go func() { done <- q.push(ctx, job{size: -1}) }()
	select {
	case err := <-done:
		t.Fatalf("push on a full queue returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	q.abort()
	if err := <-done; err == nil {
		t.Error("push after abort succeeded")
	}
	q.close()
	n := 0
	for _, ok := q.pop(); ok; _, ok = q.pop() {
		n++
	}
	if n != maxQueued {
		t.Errorf("drained %d of %d", n, maxQueued)
	}
}
