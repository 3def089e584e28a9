//go:build cgo

// Package sigtest holds what the tests of signatures and sigserver share:
// keys, rule files whose matches name their version, a receiver compiling
// with real libyara, TLS on loopback. Only tests import it. It needs cgo
// (libyara through the scanner), hence its build constraint: the
// signature packages themselves build without cgo, and so does
// "go build ./signatures/..." with CGO_ENABLED=0.
package sigtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// NewKey makes a signing key.
func NewKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := signatures.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// Pub returns k's public key.
func Pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// RuleFiles returns two rule files whose rules are named after version:
// scanning Payload with them matches exactly Expected(version).
func RuleFiles(version uint64) []signatures.File {
	return []signatures.File{
		{Path: "a.yar", Data: fmt.Appendf(nil, "rule set_v%d_a { strings: $s = \"snapscan-test-payload\" condition: $s }\n", version)},
		{Path: "sub/b.yar", Data: fmt.Appendf(nil, "rule set_v%d_b { meta: v = %d strings: $s = \"payload\" condition: $s and filename == \"x.bin\" }\n", version, version)},
	}
}

// Build makes a bundle with signatures.Build.
func Build(t testing.TB, key ed25519.PrivateKey, name string, version uint64, files []signatures.File) []byte {
	t.Helper()
	data, _, err := signatures.Build(signatures.BuildOptions{Name: name, Version: version, MinEngine: "4.2",
		Externals: signatures.ReferencedExternals(files, scanner.Externals)}, files, key)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// CompileYARA is the Compiler snapscan uses: real libyara, each file in
// its own namespace.
func CompileYARA(files []signatures.File) (*scanner.Rules, int, error) {
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

// CheckYARA is CompileYARA as the server's Check.
func CheckYARA(files []signatures.File) (int, error) {
	_, n, err := CompileYARA(files)
	return n, err
}

// Receiver is the receiver snapscan runs.
type Receiver = signatures.Receiver[*scanner.Rules]

// Logger logs to the test's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// NewReceiver makes a receiver compiling with CompileYARA, engine 4.2 and
// snapscan's externals; its state folder and logger default to the
// test's.
func NewReceiver(t testing.TB, cfg signatures.ReceiverConfig[*scanner.Rules]) *Receiver {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.Compile = CompileYARA
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
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

// Payload is the file every test scan looks at.
var Payload = fstest.MapFS{"x.bin": {Data: []byte("...snapscan-test-payload...")}}

// Expected returns what a scan of Payload with RuleFiles(v) matches.
func Expected(v uint64) []string {
	return []string{fmt.Sprintf("a.yar:set_v%d_a", v), fmt.Sprintf("sub/b.yar:set_v%d_b", v)}
}

// Scan scans Payload with one active set and returns the rules matched,
// as namespace:rule, sorted.
func Scan(ctx context.Context, a *signatures.Active[*scanner.Rules]) ([]string, error) {
	s := scanner.New(a.Rules, scanner.Options{Workers: 1, MemoryBudget: 1 << 20})
	rep, err := s.Scan(ctx, scanner.Target{Name: "payload", Volumes: []scanner.Volume{{ID: "v", FileSystem: "mapfs", FS: Payload}}})
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

// SelfSigned makes a certificate for 127.0.0.1 and localhost, and a client
// that trusts only it.
func SelfSigned(t testing.TB) (*tls.Config, *http.Client) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "snapscan test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}, MinVersion: tls.VersionTLS12}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return cfg, &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// ServeTLS serves h over HTTPS on ln until the test ends.
func ServeTLS(t testing.TB, ln net.Listener, cfg *tls.Config, h http.Handler) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(tls.NewListener(ln, cfg))
	}()
	t.Cleanup(func() {
		hs.Close()
		<-done
	})
}

// Listen listens on addr ("127.0.0.1:0").
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// WriteRules replaces each file by a rename, as an editor or a deployment
// would; a server polling the folder may still see some files new and
// others old, and build that first.
func WriteRules(t testing.TB, dir string, files []signatures.File) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p+".tmp", f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			t.Fatal(err)
		}
	}
}

// WaitFor polls cond every 10 ms for up to a minute.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
