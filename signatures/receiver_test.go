package signatures_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// compileYARA is the Compiler snapscan uses: real libyara.
func compileYARA(files []signatures.File) (*scanner.Rules, int, error) {
	srcs := make([]scanner.Source, len(files))
	for i, f := range files {
		srcs[i] = scanner.Source{Name: f.Path, Data: f.Data}
	}
	r, err := scanner.CompileSources(srcs)
	if err != nil {
		return nil, 0, err
	}
	return r, r.Count(), nil
}

type receiver = signatures.Receiver[*scanner.Rules]

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newReceiver(t testing.TB, cfg signatures.ReceiverConfig[*scanner.Rules]) *receiver {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.Compile = compileYARA
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.EngineVersion == "" {
		cfg.EngineVersion = "4.2"
	}
	if cfg.Externals == nil {
		cfg.Externals = scanner.Externals
	}
	r, err := signatures.NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// payload is the file every test scan looks at; with ruleFiles(v) it
// matches set_v<v>_a and set_v<v>_b.
var payload = fstest.MapFS{"x.bin": {Data: []byte("...snapscan-test-payload...")}}

func expected(v uint64) []string {
	return []string{fmt.Sprintf("a.yar:set_v%d_a", v), fmt.Sprintf("sub/b.yar:set_v%d_b", v)}
}

// scan scans payload with one active set and returns the rules matched.
func scan(ctx context.Context, a *signatures.Active[*scanner.Rules]) ([]string, error) {
	s := scanner.New(a.Rules, scanner.Options{Workers: 1, MemoryBudget: 1 << 20})
	rep, err := s.Scan(ctx, scanner.Target{Name: "payload", Volumes: []scanner.Volume{{ID: "v", FileSystem: "mapfs", FS: payload}}})
	if err != nil {
		return nil, err
	}
	var got []string
	for _, f := range rep.Findings {
		for _, m := range f.Matches {
			got = append(got, m.Namespace+":"+m.Rule)
		}
	}
	slices.Sort(got)
	return got, nil
}

// scanLoop scans in a loop until stop is closed, each scan with the set
// current when it started, and reports every error or wrong result (a
// mixed or stale set) on errs. It returns the versions seen.
func scanLoop(r *receiver, stop <-chan struct{}, errs chan<- error, scans *atomic.Int64) map[uint64]bool {
	seen := map[uint64]bool{}
	for {
		select {
		case <-stop:
			return seen
		default:
		}
		a := r.Current()
		if a == nil {
			errs <- errors.New("no active set")
			return seen
		}
		got, err := scan(context.Background(), a)
		if err != nil {
			errs <- err
			continue
		}
		if want := expected(a.Manifest.Version); !slices.Equal(got, want) {
			errs <- fmt.Errorf("set %d matched %v, want %v", a.Manifest.Version, got, want)
		}
		seen[a.Manifest.Version] = true
		scans.Add(1)
	}
}

func TestInstallRejects(t *testing.T) {
	key, other := newKey(t), newKey(t)
	var updates []signatures.Update
	r := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys:     signatures.NewKeySet(pub(key)),
		Name:     "demo",
		Limits:   signatures.Limits{MaxBundleSize: 1 << 20},
		OnUpdate: func(u signatures.Update) { updates = append(updates, u) },
	})
	ctx := context.Background()
	active := build(t, key, "demo", 5, ruleFiles(5))
	if _, err := r.Install(ctx, active); err != nil {
		t.Fatal(err)
	}

	stop, errs := make(chan struct{}), make(chan error, 100)
	var scans atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { scanLoop(r, stop, errs, &scans) })

	next := ruleFiles(6)
	good := build(t, key, "demo", 6, next)
	es := unpack(t, good)
	broken := slices.Clone(next)
	broken[1].Data = []byte("rule ok { condition: true }\nrule broken {\n  condition: $undefined }\n")
	big := make([]byte, 1<<20)
	rand.Read(big)
	huge := append(ruleFiles(6), signatures.File{Path: "big.yar", Data: []byte("/* " + base64.StdEncoding.EncodeToString(big) + " */")})
	needs := func(m []byte) []byte {
		return bytes.Replace(m, []byte(`"min_engine":"4.2"`), []byte(`"min_engine":"9.1"`), 1)
	}

	tests := []struct {
		name   string
		data   []byte
		want   error
		detail string // in the error message
	}{
		{"tampered rule file", pack(t, []entry{es[0], es[1], {name: es[2].name, data: bytes.ToUpper(es[2].data)}, es[3]}), signatures.ErrHashMismatch, "a.yar"},
		{"tampered manifest", pack(t, []entry{{name: es[0].name, data: bytes.Replace(es[0].data, []byte(`"version": 6`), []byte(`"version": 60`), 1)}, es[1], es[2], es[3]}), signatures.ErrBadSignature, ""},
		{"unknown key", build(t, other, "demo", 6, next), signatures.ErrUntrustedKey, signatures.KeyID(pub(other))},
		{"older version", build(t, key, "demo", 4, ruleFiles(4)), signatures.ErrRollback, "version 4"},
		{"equal version", build(t, key, "demo", 5, ruleFiles(6)), signatures.ErrRollback, "version 5"},
		{"replay of the active", active, signatures.ErrRollback, "version 5"},
		{"does not compile", build(t, key, "demo", 6, broken), signatures.ErrCompile, "sub/b.yar:3"},
		{"truncated", good[:len(good)-40], signatures.ErrMalformed, ""},
		{"oversized", build(t, key, "demo", 6, huge), signatures.ErrTooLarge, ""},
		{"zstd bomb", append(slices.Clone(good), zeros(t, 512<<20)...), signatures.ErrTooLarge, ""},
		{"another set", build(t, key, "other", 6, next), signatures.ErrWrongName, `"other"`},
		{"newer engine", func() []byte {
			m := needs(manifestJSON(t, "demo", 6, next))
			return pack(t, []entry{{name: "manifest.json", data: m}, {name: "manifest.sig", data: signManifest(t, key, m)}, es[2], es[3]})
		}(), signatures.ErrIncompatible, "9.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := scans.Load()
			a, err := r.Install(ctx, tt.data)
			if !errors.Is(err, tt.want) || a != nil {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("error %q does not say %q", err, tt.detail)
			}
			if tt.want == signatures.ErrCompile {
				var ce *scanner.CompileError
				if !errors.As(err, &ce) || ce.Messages[0].File != "sub/b.yar" || ce.Messages[0].Line != 3 {
					t.Errorf("compiler error not kept: %#v", err)
				}
			}
			if v := r.Current().Manifest.Version; v != 5 {
				t.Errorf("active version %d after a rejection", v)
			}
			// The active set keeps scanning through every rejection.
			for deadline := time.Now().Add(10 * time.Second); scans.Load() < before+2; {
				if time.Now().After(deadline) {
					t.Fatal("scans stalled")
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	if _, err := r.Install(ctx, good); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := []signatures.Update{{Name: "demo", Version: 5, RuleCount: 2}, {Name: "demo", Version: 6, RuleCount: 2, Previous: 5}}
	if !slices.Equal(updates, want) {
		t.Errorf("updates %+v, want %+v", updates, want)
	}
	t.Logf("%d scans during the rejections", scans.Load())
}

func TestHotSwapUnderLoad(t *testing.T) {
	key := newKey(t)
	const versions = 8
	bundles := make([][]byte, versions+1)
	for v := uint64(1); v <= versions; v++ {
		bundles[v] = build(t, key, "demo", v, ruleFiles(v))
	}
	events := make(chan signatures.Update, versions)
	r := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys:     signatures.NewKeySet(pub(key)),
		OnUpdate: func(u signatures.Update) { events <- u },
	})
	ctx := context.Background()
	if _, err := r.Install(ctx, bundles[1]); err != nil {
		t.Fatal(err)
	}
	stop, errs := make(chan struct{}), make(chan error, 1000)
	var scans atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[uint64]bool{}
	for range 4 {
		wg.Go(func() {
			s := scanLoop(r, stop, errs, &scans)
			mu.Lock()
			for v := range s {
				seen[v] = true
			}
			mu.Unlock()
		})
	}
	for v := 2; v <= versions; v++ {
		// Let scans run on each set before the next swap.
		for n := scans.Load(); scans.Load() < n+8; {
			time.Sleep(time.Millisecond)
		}
		if _, err := r.Install(ctx, bundles[v]); err != nil {
			t.Fatal(err)
		}
	}
	for n := scans.Load(); scans.Load() < n+8; {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) < versions {
		t.Errorf("scans used versions %v, want all %d", seen, versions)
	}
	close(events)
	var got []uint64
	for u := range events {
		got = append(got, u.Version)
	}
	if want := []uint64{1, 2, 3, 4, 5, 6, 7, 8}; !slices.Equal(got, want) {
		t.Errorf("update events %v, want %v", got, want)
	}
	t.Logf("%d scans across %d swaps, none failed or mixed", scans.Load(), versions-1)
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey2 := newKey(t), newKey(t)
	dir := t.TempDir()
	writePub := func(name string, k []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), k, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pemOld, _ := signatures.MarshalPublicKey(pub(oldKey))
	pemNew, _ := signatures.MarshalPublicKey(pub(newKey2))
	writePub("old.pub", pemOld)
	loadKeys := func() *signatures.KeySet {
		ks, err := signatures.LoadKeySet(dir)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	r := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: loadKeys()})
	ctx := context.Background()
	steps := []struct {
		name   string
		rotate func()
		data   []byte
		want   error
	}{
		{"old key trusted", nil, build(t, oldKey, "demo", 1, ruleFiles(1)), nil},
		{"new key not yet trusted", nil, build(t, newKey2, "demo", 2, ruleFiles(2)), signatures.ErrUntrustedKey},
		{"new key added", func() { writePub("new.pub", pemNew) }, build(t, newKey2, "demo", 2, ruleFiles(2)), nil},
		{"old key still trusted", nil, build(t, oldKey, "demo", 3, ruleFiles(3)), nil},
		{"old key removed", func() { os.Remove(filepath.Join(dir, "old.pub")) }, build(t, oldKey, "demo", 4, ruleFiles(4)), signatures.ErrUntrustedKey},
		{"new key signs on", nil, build(t, newKey2, "demo", 4, ruleFiles(4)), nil},
	}
	for _, s := range steps {
		if s.rotate != nil {
			s.rotate()
			r.SetKeys(loadKeys())
		}
		before := r.Current()
		a, err := r.Install(ctx, s.data)
		if !errors.Is(err, s.want) {
			t.Fatalf("%s: err = %v, want %v", s.name, err, s.want)
		}
		if err != nil && r.Current() != before {
			t.Errorf("%s: active set changed on a rejection", s.name)
		}
		if err == nil {
			got, err := scan(ctx, a)
			if err != nil || !slices.Equal(got, expected(a.Manifest.Version)) {
				t.Errorf("%s: scan %v, %v", s.name, got, err)
			}
		}
	}
}

func TestRestart(t *testing.T) {
	key, other := newKey(t), newKey(t)
	dir := t.TempDir()
	keys := signatures.NewKeySet(pub(key), pub(other))
	ctx := context.Background()
	r := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	if r.Current() != nil {
		t.Fatal("a set before any install")
	}
	for v := uint64(1); v <= 3; v++ {
		if _, err := r.Install(ctx, build(t, key, "demo", v, ruleFiles(v))); err != nil {
			t.Fatal(err)
		}
	}
	// A failed install leaves the persisted set alone.
	if _, err := r.Install(ctx, build(t, key, "demo", 4, []signatures.File{{Path: "x.yar", Data: []byte("rule {")}})); !errors.Is(err, signatures.ErrCompile) {
		t.Fatal(err)
	}

	r2 := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	a := r2.Current()
	if a == nil || a.Manifest.Version != 3 || a.RuleCount != 2 {
		t.Fatalf("restarted with %+v, want version 3", a)
	}
	if got, err := scan(ctx, a); err != nil || !slices.Equal(got, expected(3)) {
		t.Fatalf("restored set scans %v, %v", got, err)
	}
	if _, err := r2.Install(ctx, build(t, key, "demo", 2, ruleFiles(2))); !errors.Is(err, signatures.ErrRollback) {
		t.Errorf("rollback after restart: %v", err)
	}

	// Its signer no longer trusted: the persisted set is not restored,
	// yet the version floor still holds against replays.
	r3 := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: signatures.NewKeySet(pub(other))})
	if r3.Current() != nil {
		t.Fatal("restored a set signed by a key no longer trusted")
	}
	if _, err := r3.Install(ctx, build(t, other, "demo", 3, ruleFiles(3))); !errors.Is(err, signatures.ErrRollback) {
		t.Errorf("replay at the floor: %v", err)
	}
	if _, err := r3.Install(ctx, build(t, other, "demo", 7, ruleFiles(7))); err != nil {
		t.Fatal(err)
	}

	// A damaged file on disk is refused at start, not trusted.
	path := filepath.Join(dir, "active.bundle")
	data, _ := os.ReadFile(path)
	os.WriteFile(path, data[:len(data)/2], 0o600)
	r4 := newReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	if r4.Current() != nil {
		t.Fatal("restored a damaged bundle")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("state folder holds %d files (temporary files left?)", len(ents))
	}
}

// TestPureGo checks that the package builds without cgo: it must never
// pull in go-yara or the scanner.
func TestPureGo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "github.com/snapscan/snapscan/signatures")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "go-yara") || strings.HasSuffix(dep, "/scanner") || dep == "C" {
			t.Errorf("signatures depends on %s", dep)
		}
	}
	cmd = exec.Command("go", "build", "-o", os.DevNull, "github.com/snapscan/snapscan/signatures")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
}
