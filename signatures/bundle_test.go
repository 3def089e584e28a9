package signatures_test

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
)

func TestBuildRead(t *testing.T) {
	key := sigtest.NewKey(t)
	files := sigtest.RuleFiles(7)
	data, m, err := signatures.Build(signatures.BuildOptions{Name: "demo", Version: 7, MinEngine: "4.2",
		Externals: []string{"filename", "filename"}, Created: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)}, files, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := signatures.ReadBundle(data, signatures.NewKeySet(sigtest.Pub(key)), signatures.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if b.KeyID != signatures.KeyID(sigtest.Pub(key)) || b.Manifest.Name != "demo" || b.Manifest.Version != 7 ||
		!slices.Equal(b.Manifest.Externals, []string{"filename"}) || !b.Manifest.Created.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("manifest %+v, key %s", b.Manifest, b.KeyID)
	}
	if len(b.Files) != len(files) {
		t.Fatalf("%d files, want %d", len(b.Files), len(files))
	}
	for i := range files {
		if b.Files[i].Path != files[i].Path || !bytes.Equal(b.Files[i].Data, files[i].Data) {
			t.Errorf("file %d: %q, want %q", i, b.Files[i].Path, files[i].Path)
		}
	}
	if m.Version != 7 || len(m.Files) != 2 {
		t.Errorf("Build's manifest: %+v", m)
	}
	// Same inputs, same bytes: bundles can be rebuilt and compared.
	again, _, err := signatures.Build(signatures.BuildOptions{Name: "demo", Version: 7, MinEngine: "4.2",
		Externals: []string{"filename"}, Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}, reversed(files), key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Error("Build is not deterministic")
	}
}

func TestBuildRefuses(t *testing.T) {
	key := sigtest.NewKey(t)
	tests := []struct {
		name  string
		opts  signatures.BuildOptions
		files []signatures.File
	}{
		{"no files", signatures.BuildOptions{Name: "x", Version: 1}, nil},
		{"bad name", signatures.BuildOptions{Name: "a b", Version: 1}, sigtest.RuleFiles(1)},
		{"version 0", signatures.BuildOptions{Name: "x"}, sigtest.RuleFiles(1)},
		{"dotdot", signatures.BuildOptions{Name: "x", Version: 1}, []signatures.File{{Path: "../a.yar"}}},
		{"absolute", signatures.BuildOptions{Name: "x", Version: 1}, []signatures.File{{Path: "/a.yar"}}},
		{"duplicate", signatures.BuildOptions{Name: "x", Version: 1}, []signatures.File{{Path: "a.yar"}, {Path: "a.yar"}}},
		{"bad engine", signatures.BuildOptions{Name: "x", Version: 1, MinEngine: "4.x"}, sigtest.RuleFiles(1)},
		{"bad external", signatures.BuildOptions{Name: "x", Version: 1, Externals: []string{"a-b"}}, sigtest.RuleFiles(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := signatures.Build(tt.opts, tt.files, key); !errors.Is(err, signatures.ErrMalformed) {
				t.Errorf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

// zeros returns a zstd stream of n zero bytes, made by repeating one
// frame: tiny compressed, huge expanded.
func zeros(t testing.TB, n int) []byte {
	t.Helper()
	const chunk = 16 << 20
	frame := compress(t, make([]byte, chunk))
	return bytes.Repeat(frame, n/chunk)
}

func TestReadBundleRejects(t *testing.T) {
	key, other := sigtest.NewKey(t), sigtest.NewKey(t)
	keys := signatures.NewKeySet(sigtest.Pub(key))
	files := sigtest.RuleFiles(3)
	good := sigtest.Build(t, key, "demo", 3, files)
	ents := unpack(t, good)
	m, sig := ents[0].data, ents[1].data

	with := func(change func(es []entry) []entry) []byte {
		es := slices.Clone(ents)
		return pack(t, change(es))
	}
	signed := func(m []byte, rest ...entry) []byte {
		return pack(t, append([]entry{{name: "manifest.json", data: m}, {name: "manifest.sig", data: signManifest(t, key, m)}}, rest...))
	}
	forged := func() []byte {
		// The trusted key's ID over another key's signature.
		s := signManifest(t, other, m)
		s = bytes.Replace(s, []byte(signatures.KeyID(sigtest.Pub(other))), []byte(signatures.KeyID(sigtest.Pub(key))), 1)
		return with(func(es []entry) []entry { es[1] = entry{name: "manifest.sig", data: s}; return es })
	}

	tests := []struct {
		name string
		data []byte
		lim  signatures.Limits
		want error
	}{
		{"tampered file, same size", with(func(es []entry) []entry {
			es[2].data = bytes.Replace(es[2].data, []byte("payload"), []byte("PAYLOAD"), 1)
			return es
		}), signatures.Limits{}, signatures.ErrHashMismatch},
		{"tampered file, longer", with(func(es []entry) []entry {
			es[3].data = append(slices.Clone(es[3].data), " "...)
			return es
		}), signatures.Limits{}, signatures.ErrHashMismatch},
		{"tampered manifest", with(func(es []entry) []entry {
			es[0].data = bytes.Replace(m, []byte(`"version": 3`), []byte(`"version": 4`), 1)
			return es
		}), signatures.Limits{}, signatures.ErrBadSignature},
		{"renamed set", with(func(es []entry) []entry {
			es[0].data = bytes.Replace(m, []byte(`"demo"`), []byte(`"prod"`), 1)
			return es
		}), signatures.Limits{}, signatures.ErrBadSignature},
		{"unknown key", sigtest.Build(t, other, "demo", 3, files), signatures.Limits{}, signatures.ErrUntrustedKey},
		{"forged key id", forged(), signatures.Limits{}, signatures.ErrBadSignature},
		{"missing file", with(func(es []entry) []entry { return es[:3] }), signatures.Limits{}, signatures.ErrMalformed},
		{"extra file", with(func(es []entry) []entry {
			return append(es, entry{name: "rules/c.yar", data: []byte("rule c {condition: true}")})
		}), signatures.Limits{}, signatures.ErrMalformed},
		{"duplicate file", with(func(es []entry) []entry { return append(es[:3], es[2], es[3]) }), signatures.Limits{}, signatures.ErrMalformed},
		{"file outside rules/", with(func(es []entry) []entry { es[2].name = "a.yar"; return es }), signatures.Limits{}, signatures.ErrMalformed},
		{"symlink entry", with(func(es []entry) []entry { es[2].typ = '2'; return es }), signatures.Limits{}, signatures.ErrMalformed},
		{"signature first", with(func(es []entry) []entry { es[0], es[1] = es[1], es[0]; return es }), signatures.Limits{}, signatures.ErrMalformed},
		{"no signature", with(func(es []entry) []entry { return append(es[:1], es[2:]...) }), signatures.Limits{}, signatures.ErrMalformed},
		{"signature not base64", with(func(es []entry) []entry {
			es[1].data = bytes.Replace(sig, []byte(`"signature":"`), []byte(`"signature":"!`), 1)
			return es
		}), signatures.Limits{}, signatures.ErrMalformed},
		{"other algorithm", with(func(es []entry) []entry {
			es[1].data = bytes.Replace(sig, []byte("ed25519"), []byte("rsa"), 1)
			return es
		}), signatures.Limits{}, signatures.ErrMalformed},
		{"signed path with dotdot", signed(manifestJSON(t, "demo", 3, []signatures.File{{Path: "../x.yar", Data: []byte("x")}}),
			entry{name: "rules/../x.yar", data: []byte("x")}), signatures.Limits{}, signatures.ErrMalformed},
		{"signed absolute path", signed(manifestJSON(t, "demo", 3, []signatures.File{{Path: "/x.yar", Data: []byte("x")}}),
			entry{name: "rules//x.yar", data: []byte("x")}), signatures.Limits{}, signatures.ErrMalformed},
		{"signed backslash path", signed(manifestJSON(t, "demo", 3, []signatures.File{{Path: `a\..\x.yar`, Data: []byte("x")}}),
			entry{name: `rules/a\..\x.yar`, data: []byte("x")}), signatures.Limits{}, signatures.ErrMalformed},
		{"signed duplicate paths", signed(manifestJSON(t, "demo", 3, []signatures.File{{Path: "x.yar", Data: []byte("x")}, {Path: "x.yar", Data: []byte("x")}}),
			entry{name: "rules/x.yar", data: []byte("x")}), signatures.Limits{}, signatures.ErrMalformed},
		{"signed unknown field", signed(bytes.Replace(manifestJSON(t, "demo", 3, files), []byte(`"format"`), []byte(`"extra":1,"format"`), 1)),
			signatures.Limits{}, signatures.ErrMalformed},
		{"signed format 2", signed(bytes.Replace(manifestJSON(t, "demo", 3, files), []byte(`"format":1`), []byte(`"format":2`), 1)),
			signatures.Limits{}, signatures.ErrMalformed},
		{"signed version 0", signed(manifestJSON(t, "demo", 0, files)), signatures.Limits{}, signatures.ErrMalformed},
		{"truncated", good[:len(good)/2], signatures.Limits{}, signatures.ErrMalformed},
		{"truncated to header", good[:20], signatures.Limits{}, signatures.ErrMalformed},
		{"empty", nil, signatures.Limits{}, signatures.ErrMalformed},
		{"not zstd", []byte("PK\x03\x04 this is a zip"), signatures.Limits{}, signatures.ErrMalformed},
		{"plain tar", unpackTar(t, good), signatures.Limits{}, signatures.ErrMalformed},
		{"oversized", good, signatures.Limits{MaxBundleSize: int64(len(good) - 1)}, signatures.ErrTooLarge},
		{"file over the cap", good, signatures.Limits{MaxFileSize: 10}, signatures.ErrTooLarge},
		{"too many files", good, signatures.Limits{MaxFiles: 1}, signatures.ErrTooLarge},
		{"manifest entry huge", pack(t, []entry{{name: "manifest.json", data: make([]byte, 5<<20)}}), signatures.Limits{MaxFiles: 1}, signatures.ErrTooLarge},
		{"signature entry huge", pack(t, []entry{{name: "manifest.json", data: m}, {name: "manifest.sig", data: make([]byte, 5<<10)}}), signatures.Limits{}, signatures.ErrTooLarge},
		{"huge PAX header", paxBomb(t), signatures.Limits{MaxExpandedSize: 512 << 10}, signatures.ErrTooLarge},
		{"data after the archive", append(slices.Clone(good), compress(t, []byte("trailing junk"))...), signatures.Limits{}, signatures.ErrMalformed},
		// 512 MiB of zeros after a valid archive in 40 KiB: the expanded
		// stream is capped, never held.
		{"zstd bomb after the archive", append(slices.Clone(good), zeros(t, 512<<20)...), signatures.Limits{}, signatures.ErrTooLarge},
		{"zstd bomb as the archive", zeros(t, 512<<20), signatures.Limits{}, signatures.ErrMalformed},
		{"zstd bomb in a file", pack(t, []entry{{name: "manifest.json", data: make([]byte, 300<<20)}}), signatures.Limits{}, signatures.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			b, err := signatures.ReadBundle(tt.data, keys, tt.lim)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if b != nil {
				t.Error("a bundle returned with an error")
			}
			if n := strings.Count(err.Error(), "signatures: "); n != 1 {
				t.Errorf("%q says \"signatures: \" %d times, want once", err, n)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("allocated %d MiB for a %d-byte bundle", alloc>>20, len(tt.data))
			}
			t.Logf("%s (%d bytes, %v)", err, len(tt.data), time.Since(start).Round(time.Millisecond))
		})
	}
}

// unpackTar returns the tar stream inside a bundle.
func unpackTar(t testing.TB, bundle []byte) []byte {
	zr, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	out, err := zr.DecodeAll(bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReadBundleWindowCap(t *testing.T) {
	// A frame that asks for a 64 MiB window: refused before any buffer
	// that size is made.
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithWindowSize(64<<20), zstd.WithEncoderConcurrency(1), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(bytes.Repeat([]byte("snapscan"), 1<<20))
	zw.Close()
	_, err = signatures.ReadBundle(buf.Bytes(), signatures.NewKeySet(), signatures.Limits{})
	if !errors.Is(err, signatures.ErrTooLarge) || !strings.Contains(err.Error(), "window") {
		t.Errorf("err = %v, want ErrTooLarge about the window size", err)
	}
}

// TestOtherTools makes a bundle the way the package documentation tells
// other tools to: openssl for the key and signature, tar and zstd for the
// file.
func TestOtherTools(t *testing.T) {
	testenv.NeedTools(t, "openssl", "tar", "zstd")
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run("openssl", "genpkey", "-algorithm", "ed25519", "-out", "k.key")
	run("openssl", "pkey", "-in", "k.key", "-pubout", "-out", "k.pub")
	files := sigtest.RuleFiles(9)
	for _, f := range files {
		p := filepath.Join(dir, "rules", f.Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := manifestJSON(t, "tools", 9, files)
	os.WriteFile(filepath.Join(dir, "manifest.json"), m, 0o644)
	os.WriteFile(filepath.Join(dir, "msg"), append([]byte("snapscan-bundle-v1\n"), m...), 0o644)
	run("openssl", "pkeyutl", "-sign", "-rawin", "-inkey", "k.key", "-in", "msg", "-out", "sig.bin")
	rawSig, _ := os.ReadFile(filepath.Join(dir, "sig.bin"))
	pubKey, err := signatures.LoadPublicKey(filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pubKey, append([]byte("snapscan-bundle-v1\n"), m...), rawSig) {
		t.Fatal("openssl's signature does not verify")
	}
	sigJSON := `{"algorithm":"ed25519","key_id":"` + signatures.KeyID(pubKey) + `","signature":"` + b64(rawSig) + `"}`
	os.WriteFile(filepath.Join(dir, "manifest.sig"), []byte(sigJSON), 0o644)
	run("sh", "-c", "tar --format=ustar -cf - manifest.json manifest.sig rules/a.yar rules/sub/b.yar | zstd -q -19 -o set.bundle")
	data, _ := os.ReadFile(filepath.Join(dir, "set.bundle"))
	keys, err := signatures.LoadKeySet(dir) // the folder: k.pub
	if err != nil {
		t.Fatal(err)
	}
	b, err := signatures.ReadBundle(data, keys, signatures.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Manifest.Name != "tools" || b.Manifest.Version != 9 || len(b.Files) != 2 {
		t.Errorf("manifest %+v", b.Manifest)
	}
	// And openssl reads the keys snapscan writes.
	if _, err := signatures.WriteKeyPair(filepath.Join(dir, "ours")); err != nil {
		t.Fatal(err)
	}
	run("openssl", "pkey", "-in", "ours.key", "-noout")
	run("openssl", "pkey", "-pubin", "-in", "ours.pub", "-noout")
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	p1, err := signatures.WriteKeyPair(filepath.Join(dir, "one"))
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"one.key": 0o600, "one.pub": 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %v", name, st.Mode().Perm(), err, mode)
		}
	}
	if _, err := signatures.WriteKeyPair(filepath.Join(dir, "one")); err == nil {
		t.Error("WriteKeyPair overwrote a key")
	}
	priv, err := signatures.LoadPrivateKey(filepath.Join(dir, "one.key"))
	if err != nil || !sigtest.Pub(priv).Equal(p1) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	p2, err := signatures.WriteKeyPair(filepath.Join(dir, "two"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := signatures.LoadKeySet(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{signatures.KeyID(p1), signatures.KeyID(p2)}
	slices.Sort(want)
	if !slices.Equal(ks.IDs(), want) {
		t.Errorf("IDs %v, want %v", ks.IDs(), want)
	}
	bad := []struct {
		name string
		load func(string) error
		data string
	}{
		{"private as public", func(p string) error { _, err := signatures.LoadPublicKey(p); return err }, readFile(t, filepath.Join(dir, "one.key"))},
		{"public as private", func(p string) error { _, err := signatures.LoadPrivateKey(p); return err }, readFile(t, filepath.Join(dir, "one.pub"))},
		{"not PEM", func(p string) error { _, err := signatures.LoadPublicKey(p); return err }, "hello"},
		{"garbage DER", func(p string) error { _, err := signatures.LoadPublicKey(p); return err }, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
	}
	for _, tt := range bad {
		p := filepath.Join(t.TempDir(), "k")
		os.WriteFile(p, []byte(tt.data), 0o600)
		if err := tt.load(p); !errors.Is(err, signatures.ErrKey) {
			t.Errorf("%s: err = %v, want ErrKey", tt.name, err)
		}
	}
	if _, err := signatures.LoadKeySet(t.TempDir()); !errors.Is(err, signatures.ErrKey) {
		t.Errorf("empty folder: err = %v, want ErrKey", err)
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLoadRuleFiles(t *testing.T) {
	dir := t.TempDir()
	for p, s := range map[string]string{"r/a.yar": "a", "r/x/b.YARA": "b", "r/notes.txt": "n", "single.rules": "s"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644)
	}
	os.Symlink("/etc/passwd", filepath.Join(dir, "r", "link.yar"))
	files, err := signatures.LoadRuleFiles(filepath.Join(dir, "r"), filepath.Join(dir, "single.rules"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f.Path+"="+string(f.Data))
	}
	if want := []string{"a.yar=a", "x/b.YARA=b", "single.rules=s"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := signatures.LoadRuleFiles(filepath.Join(dir, "r", "a.yar"), filepath.Join(dir, "r", "a.yar")); err == nil {
		t.Error("two files under one name accepted")
	}
	if ext := signatures.ReferencedExternals(sigtest.RuleFiles(1), []string{"filename", "owner"}); !slices.Equal(ext, []string{"filename"}) {
		t.Errorf("externals %v", ext)
	}
}

func TestCompareEngine(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"4.2", "4.2.0", 0}, {"4.2", "4.2.3", -1}, {"4.10", "4.9", 1}, {"5", "4.99.99", 1}, {"0", "4.2", -1}} {
		if got := signatures.CompareEngine(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareEngine(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func reversed[T any](s []T) []T {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// paxBomb is a bundle whose first header carries 900 KiB of PAX records:
// the expanded-size cap stops it, whatever the entry sizes say.
func paxBomb(t *testing.T) []byte {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg, Size: 2, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"comment": strings.Repeat("x", 900<<10)}})
	tw.Write([]byte("{}"))
	tw.Close()
	// Streamed, so no frame header announces the size: only the cap on
	// what is read stops it.
	var zb bytes.Buffer
	zw, _ := zstd.NewWriter(&zb, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(64<<10))
	zw.ReadFrom(&tb)
	zw.Close()
	return zb.Bytes()
}
