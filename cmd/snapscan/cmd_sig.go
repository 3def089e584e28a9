package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/snapscan/snapscan/appliance"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

func init() {
	register(command{name: "sig", summary: "signed signature bundles: keygen, build, verify, serve", run: runSig})
}

// engineVersion is the YARA engine level this binary links: go-yara v4.2.4
// requires libyara 4.2.x. Bundles whose min_engine is higher are refused.
const engineVersion = "4.2"

const sigUsage = `Usage: snapscan sig SUBCOMMAND [flags] [args]

Subcommands:
  keygen --out PREFIX                     write PREFIX.key (0600) and PREFIX.pub
  build --key KEY --name NAME --version N --out BUNDLE RULES...
                                          compile, then sign a bundle
  verify --pub PUBKEY BUNDLE              verify a bundle and print its manifest
  serve --key KEY --rules DIR --state DIR --listen ADDR ...
                                          run the central signature server
`

func runSig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, sigUsage)
		return &exitError{code: 2}
	}
	switch args[0] {
	case "keygen":
		return runSigKeygen(args[1:], stdout, stderr)
	case "build":
		return runSigBuild(args[1:], stdout, stderr)
	case "verify":
		return runSigVerify(args[1:], stdout, stderr)
	case "serve":
		return runSigServe(ctx, args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, sigUsage)
		return nil
	}
	fmt.Fprint(stderr, sigUsage)
	return usageError("unknown subcommand %q", args[0])
}

func runSigKeygen(args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig keygen", "sig keygen --out PREFIX",
		"Generates an Ed25519 signing key: PREFIX.key (PKCS #8 PEM, mode 0600, keep it\n"+
			"on the central server only) and PREFIX.pub (PKIX PEM, for appliances to trust).\n"+
			"Existing files are never overwritten.", stderr)
	out := f.String("out", "", "write `PREFIX`.key and PREFIX.pub")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *out == "" || len(pos) != 0 {
		return usageError("want --out PREFIX and no arguments")
	}
	pub, err := signatures.WriteKeyPair(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s.key and %s.pub (key id %s)\n", *out, *out, signatures.KeyID(pub))
	return nil
}

func runSigBuild(args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig build", "sig build --key KEY --name NAME --version N --out BUNDLE RULES...",
		"Compiles RULES (files, or folders of .yar/.yara files) with this engine and, only if\n"+
			"they compile, writes a bundle signed with KEY. Compiler errors are printed with\n"+
			"file and line.", stderr)
	keyPath := f.String("key", "", "private key `FILE` (PKCS #8 PEM)")
	name := f.String("name", "", "signature set `NAME`")
	version := f.Uint64("version", 0, "bundle version `N` (higher than any published)")
	out := f.String("out", "", "write the bundle to `FILE`")
	minEngine := f.String("min-engine", engineVersion, "lowest engine `VERSION` that may load the bundle")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || *name == "" || *version == 0 || *out == "" || len(pos) == 0 {
		return usageError("want --key, --name, --version, --out and at least one rules path")
	}
	key, err := signatures.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	files, err := signatures.LoadRuleFiles(pos...)
	if err != nil {
		return err
	}
	start := time.Now()
	rules, n, err := appliance.CompileBundle(files)
	if err != nil {
		return fmt.Errorf("not signed: %w", err)
	}
	if w := rules.Warnings(); len(w) > 0 {
		fmt.Fprintf(stderr, "snapscan sig build: %d compiler warnings (first: %s)\n", len(w), w[0])
	}
	data, m, err := signatures.Build(signatures.BuildOptions{
		Name:      *name,
		Version:   *version,
		MinEngine: *minEngine,
		Externals: signatures.ReferencedExternals(files, scanner.Externals),
	}, files, key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(*out, data); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s version %d, %d files, %d rules, %d bytes, key %s, %.2fs\n",
		*out, m.Name, m.Version, len(m.Files), n, len(data), signatures.KeyID(key.Public().(ed25519.PublicKey)), time.Since(start).Seconds())
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

func runSigVerify(args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig verify", "sig verify --pub PUBKEY [--pub PUBKEY]... BUNDLE",
		"Verifies BUNDLE: signed by a trusted key, every file matching the manifest, and\n"+
			"(unless --no-compile) compiling with this engine. Prints the manifest; exits 1\n"+
			"with the reason (untrusted_key, bad_signature, hash_mismatch, ...) when invalid.", stderr)
	var pubs stringList
	f.Var(&pubs, "pub", "trusted public key `FILE` or folder of .pub files (repeatable)")
	noCompile := f.Bool("no-compile", false, "skip compiling the rules")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pubs) == 0 || len(pos) != 1 {
		return usageError("want at least one --pub and one BUNDLE")
	}
	keys, err := signatures.LoadKeySet(pubs...)
	if err != nil {
		return err
	}
	data, err := readBundleFile(pos[0])
	if err != nil {
		return err
	}
	b, err := signatures.ReadBundle(data, keys, signatures.Limits{})
	if err != nil {
		return fmt.Errorf("%s: invalid (%s): %w", pos[0], signatures.Reason(err), err)
	}
	if signatures.CompareEngine(b.Manifest.MinEngine, engineVersion) > 0 {
		return fmt.Errorf("%s: invalid (incompatible): needs engine %s, this is %s", pos[0], b.Manifest.MinEngine, engineVersion)
	}
	rules := -1
	if !*noCompile {
		if _, rules, err = appliance.CompileBundle(b.Files); err != nil {
			return fmt.Errorf("%s: invalid (compile): %w", pos[0], err)
		}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(b.Manifest); err != nil {
		return err
	}
	msg := fmt.Sprintf("%s: valid: %s version %d, signed by key %s", pos[0], b.Manifest.Name, b.Manifest.Version, b.KeyID)
	if rules >= 0 {
		msg += fmt.Sprintf(", %d rules compile", rules)
	}
	fmt.Fprintln(stdout, msg)
	return nil
}

func readBundleFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, signatures.DefaultMaxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > signatures.DefaultMaxBundleSize {
		return nil, fmt.Errorf("%s: invalid (too_large): %w", path, signatures.ErrTooLarge)
	}
	return data, nil
}

func runSigServe(ctx context.Context, args []string, stderr io.Writer) error {
	f := newFlags("sig serve", "sig serve --key KEY --name NAME --rules DIR --state DIR --token-file FILE [--listen ADDR] --tls-cert CERT --tls-key KEY",
		"Runs the central signature server: builds and signs a new bundle version when the\n"+
			"rules folder changes (or on POST /v1/build), keeps every version under --state,\n"+
			"pushes new versions to registered appliances and serves pulls. API: signatures/API.md.", stderr)
	keyPath := f.String("key", "", "signing key `FILE`")
	name := f.String("name", "", "signature set `NAME`")
	rulesDir := f.String("rules", "", "rules `DIR`")
	stateDir := f.String("state", "", "state `DIR` (bundle history, registered appliances)")
	listen := f.String("listen", ":8443", "listen `ADDR`")
	tlsCert := f.String("tls-cert", "", "TLS certificate `FILE` (PEM)")
	tlsKey := f.String("tls-key", "", "TLS key `FILE` (PEM)")
	plain := f.Bool("plain-http", false, "serve plain HTTP (only behind a proxy that terminates TLS)")
	tokenFile := f.String("token-file", "", "`FILE` of API bearer tokens, one per line")
	appFile := f.String("appliances", "", "JSON `FILE`: [{\"id\", \"url\", \"token\"}] push targets")
	caFile := f.String("ca", "", "PEM `FILE` of CAs to trust for appliances' HTTPS (default: system roots)")
	poll := f.Duration("poll", 10*time.Second, "check the rules folder every `DURATION`")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || *name == "" || *rulesDir == "" || *stateDir == "" || *tokenFile == "" || len(pos) != 0 {
		return usageError("want --key, --name, --rules, --state and --token-file")
	}
	if (*tlsCert == "" || *tlsKey == "") && !*plain {
		return usageError("want --tls-cert and --tls-key (or --plain-http)")
	}
	key, err := signatures.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	tokens, err := readTokens(*tokenFile)
	if err != nil {
		return err
	}
	cfg := sigserver.Config{
		Key:          key,
		Name:         *name,
		RulesDir:     *rulesDir,
		StateDir:     *stateDir,
		MinEngine:    engineVersion,
		Externals:    scanner.Externals,
		Tokens:       tokens,
		Addr:         *listen,
		PollInterval: *poll,
		Logger:       slog.New(slog.NewTextHandler(stderr, nil)),
		Check: func(files []signatures.File) (int, error) {
			_, n, err := appliance.CompileBundle(files)
			return n, err
		},
	}
	if !*plain {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return err
		}
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if *appFile != "" {
		b, err := os.ReadFile(*appFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &cfg.Targets); err != nil {
			return fmt.Errorf("%s: %w", *appFile, err)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s: no PEM certificates", *caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	cfg.Client = &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	s, err := sigserver.New(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// readTokens reads one token per line; blank lines and lines starting
// with # are skipped.
func readTokens(path string) ([]string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var tokens []string
	sc := bufio.NewScanner(io.LimitReader(fh, 1<<20))
	for sc.Scan() {
		t := strings.TrimSpace(sc.Text())
		if t != "" && !strings.HasPrefix(t, "#") {
			tokens = append(tokens, t)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(tokens) == 0 {
		return nil, errors.New(path + ": no tokens")
	}
	return tokens, nil
}
