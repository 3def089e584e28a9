package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResolve checks the rule that keeps a hostile image from making
// snapscan read the appliance's own files: related files only from the
// image's folder (and below) or from folders the caller allows.
func TestResolve(t *testing.T) {
	root := t.TempDir()
	ds := filepath.Join(root, "datastore", "vm1")
	other := filepath.Join(root, "other")
	for _, d := range []string{filepath.Join(ds, "sub"), other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(ds, "base.qcow2"), filepath.Join(ds, "sub", "b.vmdk"), filepath.Join(other, "o.qcow2")} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A link inside the folder that points out of it.
	if err := os.Symlink(filepath.Join(other, "o.qcow2"), filepath.Join(ds, "escape.qcow2")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(ds, "disk.qcow2")
	tests := []struct {
		name, ref string
		allowed   []string
		want      string // "" means refused
		wantErr   error
	}{
		{"same folder", "base.qcow2", nil, filepath.Join(ds, "base.qcow2"), nil},
		{"below", "sub/b.vmdk", nil, filepath.Join(ds, "sub", "b.vmdk"), nil},
		{"absolute inside", filepath.Join(ds, "base.qcow2"), nil, filepath.Join(ds, "base.qcow2"), nil},
		{"climbs out", "../../other/o.qcow2", nil, "", ErrUnsafePath},
		{"absolute outside", "/etc/passwd", nil, "", ErrUnsafePath},
		{"link escapes", "escape.qcow2", nil, "", ErrUnsafePath},
		{"allowed folder", "../../other/o.qcow2", []string{other}, filepath.Join(other, "o.qcow2"), nil},
		{"missing", "nope.qcow2", nil, "", os.ErrNotExist},
		{"empty", "", nil, "", ErrUnsafePath},
		{"NUL", "base.qcow2\x00x", nil, "", ErrUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := &Options{AllowedDirs: tt.allowed}
			got, err := opts.Resolve(img, tt.ref)
			if tt.want != "" {
				want, _ := filepath.EvalSymlinks(tt.want)
				if err != nil || got != want {
					t.Fatalf("Resolve(%q) = %q, %v; want %q", tt.ref, got, err, want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Resolve(%q) = %q, %v; want an error wrapping %v", tt.ref, got, err, tt.wantErr)
			}
		})
	}
}

// TestRelatedFileOracle (issue 10.6): a related file outside the allowed
// folders is refused with one message whether or not it exists, naming it
// only as the image does, never where a link leads on the host.
func TestRelatedFileOracle(t *testing.T) {
	ds := t.TempDir()
	img := filepath.Join(ds, "disk.qcow2")
	for link, target := range map[string]string{"exe": "/proc/self/exe", "gone": "/nonexistent/secret.key", "shadow": "/etc/shadow"} {
		if err := os.Symlink(target, filepath.Join(ds, link)); err != nil {
			t.Fatal(err)
		}
	}
	exe, _ := os.Executable()
	var msgs []string
	for _, name := range []string{"/etc/passwd", "/nonexistent/secret.key", "../../../etc/passwd", "exe", "gone", "shadow"} {
		_, err := (&Options{}).Resolve(img, name)
		var re *RelatedError
		if !errors.Is(err, ErrUnsafePath) || !errors.As(err, &re) {
			t.Fatalf("Resolve(%q) = %v, want a RelatedError wrapping ErrUnsafePath", name, err)
		}
		msg := err.Error()
		if exe != "" && strings.Contains(msg, exe) || strings.Contains(msg, "/proc/self") && name != "/proc/self/exe" {
			t.Errorf("Resolve(%q): message %q tells where a link leads", name, msg)
		}
		if re.Name != name || re.Image != img {
			t.Errorf("Resolve(%q): RelatedError %+v", name, re)
		}
		msgs = append(msgs, strings.Replace(msg, fmt.Sprintf("%q", name), "NAME", 1))
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Errorf("messages differ by more than the name:\n%s\n%s", msgs[0], m)
		}
	}
	// The resolved path stays available to a caller that logs it.
	_, err := (&Options{}).Resolve(img, "exe")
	var re *RelatedError
	if errors.As(err, &re); re == nil || re.Resolved == "" {
		t.Errorf("RelatedError.Resolved not kept: %+v", re)
	}
}

func TestClip(t *testing.T) {
	p := make([]byte, 10)
	tests := []struct {
		off          int64
		wantLen      int
		wantEOF      bool
		empty, isErr bool
	}{
		{0, 10, false, false, false},
		{95, 5, true, false, false},
		{100, 0, false, true, false},
		{-1, 0, false, true, true},
	}
	for _, tt := range tests {
		q, eof, empty, err := Clip(p, tt.off, 100, "disk")
		if len(q) != tt.wantLen || (eof == io.EOF) != tt.wantEOF || empty != tt.empty || (err != nil && err != io.EOF) != tt.isErr {
			t.Errorf("Clip(off %d) = len %d, %v, %v, %v", tt.off, len(q), eof, empty, err)
		}
	}
}
