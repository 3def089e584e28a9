package sigserver_test

import (
	"archive/tar"
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

// BenchmarkPushSignatureBase builds, compiles, signs, pushes and activates
// the signature-base rules (read in place, never copied; set
// SNAPSCAN_SIGBASE to another folder) on three receivers over HTTPS on
// loopback, and reports the seconds from the start of the build to all
// three active, and the bundle's size against a plain tar of the same rule
// files. Run by bench/sig-push.sh.
func BenchmarkPushSignatureBase(b *testing.B) {
	rules := os.Getenv("SNAPSCAN_SIGBASE")
	if rules == "" {
		rules = filepath.Join(testenv.RepoRoot(), "..", "shared", "rules", "signature-base")
	}
	if _, err := os.Stat(rules); err != nil {
		b.Skip("no signature-base rules:", err)
	}
	files, err := signatures.LoadRuleFiles(rules)
	if err != nil {
		b.Fatal(err)
	}
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.Path, Size: int64(len(f.Data)), Mode: 0o644, Typeflag: tar.TypeReg})
		tw.Write(f.Data)
	}
	tw.Close()

	var total time.Duration
	var size int
	for range b.N {
		b.StopTimer()
		tlsCfg, client := sigtest.SelfSigned(b)
		key := sigtest.NewKey(b)
		ctx, cancel := context.WithCancel(context.Background())
		recv := make([]*sigtest.Receiver, 3)
		var apps []signatures.PushTarget
		for i := range recv {
			recv[i] = sigtest.NewReceiver(b, signatures.ReceiverConfig[*scanner.Rules]{Keys: signatures.NewKeySet(sigtest.Pub(key)), Logger: discard})
			ln := sigtest.Listen(b, "127.0.0.1:0")
			sigtest.ServeTLS(b, ln, tlsCfg, httpx.RequireBearer(httpx.NewTokens("t"), recv[i].Handler(), httpx.BearerOptions{}))
			apps = append(apps, signatures.PushTarget{ID: "app-" + string(rune('a'+i)), URL: "https://" + ln.Addr().String() + "/", Token: "t"})
		}
		stateDir := b.TempDir()
		srv, err := sigserver.New(sigserver.Config{
			Key: key, Name: "signature-base", RulesDir: rules, StateDir: stateDir, Check: sigtest.CheckYARA,
			MinEngine: "4.2", Externals: scanner.Externals, Tokens: []string{"api"},
			Listener: sigtest.Listen(b, "127.0.0.1:0"), TLSConfig: tlsCfg, Targets: apps, Client: client,
			PollInterval: -1, RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond, Logger: discard,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }() // builds at start
		var built time.Duration
		for {
			if built == 0 && srv.Latest() != nil {
				built = time.Since(start)
			}
			n := 0
			for _, r := range recv {
				if a := r.Current(); a != nil && a.Manifest.Version == 1 {
					n++
				}
			}
			if n == 3 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		total += elapsed
		st, err := os.Stat(filepath.Join(stateDir, "bundles", "00000000000000000001.bundle"))
		if err != nil {
			b.Fatal(err)
		}
		size = int(st.Size())
		cancel()
		<-done
		b.Logf("built and signed in %.2fs; all three active %.2fs after the build started; %d rules",
			built.Seconds(), elapsed.Seconds(), recv[0].Current().RuleCount)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/all-active")
	b.ReportMetric(float64(size), "bundle-bytes")
	b.ReportMetric(float64(plain.Len()), "tar-bytes")
	b.ReportMetric(float64(size)/float64(plain.Len()), "bundle/tar")
}

var discard = slog.New(slog.DiscardHandler)
