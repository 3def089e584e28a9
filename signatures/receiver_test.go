package signatures_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
)

// scanLoop scans in a loop until stop is closed, each scan with the set
// current when it started, and reports every error or wrong result (a
// mixed or stale set) on errs. It returns the versions seen.
func scanLoop(r *sigtest.Receiver, stop <-chan struct{}, errs chan<- error, scans *atomic.Int64) map[uint64]bool {
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
		got, err := sigtest.Scan(context.Background(), a)
		if err != nil {
			errs <- err
			continue
		}
		if want := sigtest.Expected(a.Manifest.Version); !slices.Equal(got, want) {
			errs <- fmt.Errorf("set %d matched %v, want %v", a.Manifest.Version, got, want)
		}
		seen[a.Manifest.Version] = true
		scans.Add(1)
	}
}

func TestInstallRejects(t *testing.T) {
	key, other := sigtest.NewKey(t), sigtest.NewKey(t)
	var updates []signatures.Update
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys:     signatures.NewKeySet(sigtest.Pub(key)),
		Name:     "demo",
		Limits:   signatures.Limits{MaxBundleSize: 1 << 20},
		OnUpdate: func(u signatures.Update) { updates = append(updates, u) },
	})
	ctx := context.Background()
	active := sigtest.Build(t, key, "demo", 5, sigtest.RuleFiles(5))
	if _, err := r.Install(ctx, active); err != nil {
		t.Fatal(err)
	}

	stop, errs := make(chan struct{}), make(chan error, 100)
	var scans atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { scanLoop(r, stop, errs, &scans) })

	next := sigtest.RuleFiles(6)
	good := sigtest.Build(t, key, "demo", 6, next)
	es := unpack(t, good)
	broken := slices.Clone(next)
	broken[1].Data = []byte("rule ok { condition: true }\nrule broken {\n  condition: $undefined }\n")
	big := make([]byte, 1<<20)
	rand.Read(big)
	huge := append(sigtest.RuleFiles(6), signatures.File{Path: "big.yar", Data: []byte("/* " + base64.StdEncoding.EncodeToString(big) + " */")})
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
		{"unknown key", sigtest.Build(t, other, "demo", 6, next), signatures.ErrUntrustedKey, signatures.KeyID(sigtest.Pub(other))},
		{"older version", sigtest.Build(t, key, "demo", 4, sigtest.RuleFiles(4)), signatures.ErrRollback, "version 4"},
		{"equal version", sigtest.Build(t, key, "demo", 5, sigtest.RuleFiles(6)), signatures.ErrRollback, "version 5"},
		{"replay of the active", active, signatures.ErrRollback, "version 5"},
		{"does not compile", sigtest.Build(t, key, "demo", 6, broken), signatures.ErrCompile, "sub/b.yar:3"},
		{"truncated", good[:len(good)-40], signatures.ErrMalformed, ""},
		{"oversized", sigtest.Build(t, key, "demo", 6, huge), signatures.ErrTooLarge, ""},
		{"zstd bomb", append(slices.Clone(good), zeros(t, 512<<20)...), signatures.ErrTooLarge, ""},
		{"another set", sigtest.Build(t, key, "other", 6, next), signatures.ErrWrongName, `"other"`},
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
			if n := strings.Count(err.Error(), "signatures: "); n != 1 {
				t.Errorf("%q says \"signatures: \" %d times, want once", err, n)
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
	key := sigtest.NewKey(t)
	const versions = 8
	bundles := make([][]byte, versions+1)
	for v := uint64(1); v <= versions; v++ {
		bundles[v] = sigtest.Build(t, key, "demo", v, sigtest.RuleFiles(v))
	}
	events := make(chan signatures.Update, versions)
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{
		Keys:     signatures.NewKeySet(sigtest.Pub(key)),
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
	oldKey, newKey2 := sigtest.NewKey(t), sigtest.NewKey(t)
	dir := t.TempDir()
	writePub := func(name string, k []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), k, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pemOld, _ := signatures.MarshalPublicKey(sigtest.Pub(oldKey))
	pemNew, _ := signatures.MarshalPublicKey(sigtest.Pub(newKey2))
	writePub("old.pub", pemOld)
	loadKeys := func() *signatures.KeySet {
		ks, err := signatures.LoadKeySet(dir)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: loadKeys()})
	ctx := context.Background()
	steps := []struct {
		name   string
		rotate func()
		data   []byte
		want   error
	}{
		{"old key trusted", nil, sigtest.Build(t, oldKey, "demo", 1, sigtest.RuleFiles(1)), nil},
		{"new key not yet trusted", nil, sigtest.Build(t, newKey2, "demo", 2, sigtest.RuleFiles(2)), signatures.ErrUntrustedKey},
		{"new key added", func() { writePub("new.pub", pemNew) }, sigtest.Build(t, newKey2, "demo", 2, sigtest.RuleFiles(2)), nil},
		{"old key still trusted", nil, sigtest.Build(t, oldKey, "demo", 3, sigtest.RuleFiles(3)), nil},
		{"old key removed", func() { os.Remove(filepath.Join(dir, "old.pub")) }, sigtest.Build(t, oldKey, "demo", 4, sigtest.RuleFiles(4)), signatures.ErrUntrustedKey},
		{"new key signs on", nil, sigtest.Build(t, newKey2, "demo", 4, sigtest.RuleFiles(4)), nil},
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
			got, err := sigtest.Scan(ctx, a)
			if err != nil || !slices.Equal(got, sigtest.Expected(a.Manifest.Version)) {
				t.Errorf("%s: scan %v, %v", s.name, got, err)
			}
		}
	}
}

func TestRestart(t *testing.T) {
	key, other := sigtest.NewKey(t), sigtest.NewKey(t)
	dir := t.TempDir()
	keys := signatures.NewKeySet(sigtest.Pub(key), sigtest.Pub(other))
	ctx := context.Background()
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	if r.Current() != nil {
		t.Fatal("a set before any install")
	}
	for v := uint64(1); v <= 3; v++ {
		if _, err := r.Install(ctx, sigtest.Build(t, key, "demo", v, sigtest.RuleFiles(v))); err != nil {
			t.Fatal(err)
		}
	}
	// A failed install leaves the persisted set alone.
	if _, err := r.Install(ctx, sigtest.Build(t, key, "demo", 4, []signatures.File{{Path: "x.yar", Data: []byte("rule {")}})); !errors.Is(err, signatures.ErrCompile) {
		t.Fatal(err)
	}

	r2 := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	a := r2.Current()
	if a == nil || a.Manifest.Version != 3 || a.RuleCount != 2 {
		t.Fatalf("restarted with %+v, want version 3", a)
	}
	if got, err := sigtest.Scan(ctx, a); err != nil || !slices.Equal(got, sigtest.Expected(3)) {
		t.Fatalf("restored set scans %v, %v", got, err)
	}
	if _, err := r2.Install(ctx, sigtest.Build(t, key, "demo", 2, sigtest.RuleFiles(2))); !errors.Is(err, signatures.ErrRollback) {
		t.Errorf("rollback after restart: %v", err)
	}

	// Its signer no longer trusted: the persisted set is not restored,
	// yet the version floor still holds against replays.
	r3 := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: signatures.NewKeySet(sigtest.Pub(other))})
	if r3.Current() != nil {
		t.Fatal("restored a set signed by a key no longer trusted")
	}
	if _, err := r3.Install(ctx, sigtest.Build(t, other, "demo", 3, sigtest.RuleFiles(3))); !errors.Is(err, signatures.ErrRollback) {
		t.Errorf("replay at the floor: %v", err)
	}
	if _, err := r3.Install(ctx, sigtest.Build(t, other, "demo", 7, sigtest.RuleFiles(7))); err != nil {
		t.Fatal(err)
	}

	// A damaged file on disk is refused at start, not trusted.
	path := filepath.Join(dir, "active.bundle")
	data, _ := os.ReadFile(path)
	os.WriteFile(path, data[:len(data)/2], 0o600)
	r4 := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{StateDir: dir, Keys: keys})
	if r4.Current() != nil {
		t.Fatal("restored a damaged bundle")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("state folder holds %d files (temporary files left?)", len(ents))
	}
}

// TestPushHandler pushes bundles to a receiver behind the bearer check the
// appliance puts in front of it, over HTTPS on loopback.
func TestPushHandler(t *testing.T) {
	key := sigtest.NewKey(t)
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)), ApplianceID: "app", Limits: signatures.Limits{MaxBundleSize: 64 << 10}})
	tlsCfg, client := sigtest.SelfSigned(t)
	ln := sigtest.Listen(t, "127.0.0.1:0")
	sigtest.ServeTLS(t, ln, tlsCfg, httpx.RequireBearer(httpx.NewTokens("tok"), r.Handler(), httpx.BearerOptions{}))
	url := "https://" + ln.Addr().String() + "/"
	push := func(token string, body []byte) (int, signatures.PushResponse) {
		req, _ := http.NewRequest("POST", url, strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st signatures.PushResponse
		json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode, st
	}
	v1 := sigtest.Build(t, key, "demo", 1, sigtest.RuleFiles(1))
	tests := []struct {
		name   string
		token  string
		body   []byte
		code   int
		result string
		reason string
	}{
		{"no token", "", v1, 401, "", ""},
		{"installed", "tok", v1, 200, "installed", ""},
		{"repeated", "tok", v1, 200, "already_active", ""},
		{"rollback", "tok", sigtest.Build(t, key, "demo", 1, sigtest.RuleFiles(2)), 409, "rejected", "rollback"},
		{"untrusted", "tok", sigtest.Build(t, sigtest.NewKey(t), "demo", 2, sigtest.RuleFiles(2)), 403, "rejected", "untrusted_key"},
		{"garbage", "tok", []byte("hello"), 400, "rejected", "malformed"},
		{"too large", "tok", make([]byte, 65<<10), 413, "rejected", "too_large"},
		{"not compiling", "tok", sigtest.Build(t, key, "demo", 2, []signatures.File{{Path: "x.yar", Data: []byte("rule x {")}}), 422, "rejected", "compile"},
	}
	for _, tt := range tests {
		code, st := push(tt.token, tt.body)
		if code != tt.code || st.Result != tt.result || st.Reason != tt.reason {
			t.Errorf("%s: %d %+v, want %d %s %s", tt.name, code, st, tt.code, tt.result, tt.reason)
		}
		if tt.code != 401 && (st.Version != 1 || st.Appliance != "app") {
			t.Errorf("%s: reports %+v, want version 1", tt.name, st)
		}
	}
	if _, err := r.Install(context.Background(), nil); !errors.Is(err, signatures.ErrMalformed) {
		t.Errorf("empty bundle: %v", err)
	}
}

// TestOnePrefixPerLayer: each layer names itself and what it adds once:
// the package prefix, a path, a URL (issue 11.11).
func TestOnePrefixPerLayer(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	notKey := filepath.Join(dir, "k.pub")
	os.WriteFile(notKey, []byte("hello"), 0o644)
	_, e1 := signatures.LoadPrivateKey(missing)
	_, e2 := signatures.LoadPublicKey(notKey)
	_, e3 := signatures.LoadKeySet(dir)
	_, e4 := signatures.LoadRuleFiles(missing)
	_, e5 := signatures.LoadRuleFiles(dir)

	// A pull from a server whose bundle this appliance refuses.
	key := sigtest.NewKey(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(sigtest.Build(t, sigtest.NewKey(t), "demo", 1, sigtest.RuleFiles(1)))
	}))
	defer srv.Close()
	r := sigtest.NewReceiver(t, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)), ServerURL: srv.URL, ApplianceID: "app"})
	_, e6 := r.Pull(context.Background())
	// A push the receiver refuses.
	rs := httptest.NewServer(r.Handler())
	defer rs.Close()
	_, e7 := signatures.Push(context.Background(), rs.Client(), signatures.PushTarget{URL: rs.URL}, []byte("not a bundle"))

	for _, tt := range []struct {
		err  error
		once []string
	}{
		{e1, []string{"signatures: ", missing}},
		{e2, []string{"signatures: ", notKey}},
		{e3, []string{"signatures: ", dir}},
		{e4, []string{"signatures: ", missing}},
		{e5, []string{"signatures: ", dir}},
		{e6, []string{"signatures: ", srv.URL}},
		{e7, []string{"signatures: ", rs.URL}},
	} {
		if tt.err == nil {
			t.Errorf("no error where %v expected", tt.once)
			continue
		}
		for _, s := range tt.once {
			if n := strings.Count(tt.err.Error(), s); n != 1 {
				t.Errorf("%q says %q %d times, want once", tt.err, s, n)
			}
		}
	}
}
