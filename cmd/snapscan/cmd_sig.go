package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/snapscan/snapscan/appliance"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

func init() {
	register(command{name: "sig", summary: "signed signature bundles: keygen, build, verify, push, serve", run: runSig})
}

// engineVersion is the YARA engine level this binary links: go-yara v4.2.4
// requires libyara 4.2.x. Bundles whose min_engine is higher are refused.
const engineVersion = "4.2"

const sigUsage = `Usage: snapscan sig SUBCOMMAND [flags] [args]

Subcommands:
  keygen --out PREFIX                     write PREFIX.key (0600) and PREFIX.pub
  build --key KEY --name NAME (--version N | --server URL) --out BUNDLE RULES...
                                          compile, then sign a bundle
  verify --pub PUBKEY BUNDLE              verify a bundle and print its manifest
  push (--url URL | --targets FILE) BUNDLE
                                          push a bundle to appliances by hand
  serve --key KEY --name NAME --rules DIR --state DIR --token-file FILE
                                          run the central signature server

Run 'snapscan sig SUBCOMMAND --help' for its flags and examples.

Examples:
  snapscan sig keygen --out /etc/snapscan/sig
  snapscan sig build --key sig.key --name corp --server https://sig.corp:8443 --out corp.bundle rules/
  snapscan sig push --url https://app1:8480 --token-file push.token corp.bundle

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
		return runSigBuild(ctx, args[1:], stdout, stderr)
	case "verify":
		return runSigVerify(args[1:], stdout, stderr)
	case "push":
		return runSigPush(ctx, args[1:], stdout, stderr)
	case "serve":
		return runSigServe(ctx, args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, sigUsage+exitStatusHelp)
		return nil
	}
	fmt.Fprint(stderr, sigUsage)
	return usageError("unknown subcommand %q", args[0])
}

func runSigKeygen(args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig keygen", "sig keygen --out PREFIX",
		`Generates an Ed25519 signing key: PREFIX.key (PKCS #8 PEM, mode 0600, keep it
on the central server only) and PREFIX.pub (PKIX PEM, for appliances to trust:
signatures.trusted_keys). Existing files are never overwritten. openssl reads
both (openssl pkey -in PREFIX.key).

Examples:
  snapscan sig keygen --out /etc/snapscan/signing
  snapscan sig keygen --out signing-2025 && scp signing-2025.pub app-a:/etc/snapscan/trusted/
`, stderr)
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

// serverFlags are the flags of a command that talks to the central
// server's API.
type serverFlags struct {
	url, tokenFile, ca *string
}

// The central server's token comes from its own variables: SNAPSCAN_TOKEN
// and SNAPSCAN_TOKEN_FILE are an appliance's.
const (
	envSigToken     = "SNAPSCAN_SIG_TOKEN"
	envSigTokenFile = "SNAPSCAN_SIG_TOKEN_FILE"
)

func addServerFlags(f *flag.FlagSet, what string) serverFlags {
	return serverFlags{
		url:       f.String("server", "", "central signature server `URL` (https://central:8443)"+what),
		tokenFile: f.String("token-file", envOr(envSigTokenFile, ""), "`FILE` holding the server's API token (first line; default env "+envSigTokenFile+", or the token in "+envSigToken+")"),
		ca:        f.String("ca", "", "PEM `FILE` of CAs to trust for the server's HTTPS (default: system roots)"),
	}
}

// httpClient returns a client trusting caFile's CAs (the system's when
// empty).
func httpClient(caFile string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pool, err := httpx.ReadCertPool(caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// bearer returns the token to send: the first of tokenFile, else the
// environment variable env; "" when neither is set.
func bearer(tokenFile, env string) (string, error) {
	if tokenFile != "" {
		toks, err := httpx.ReadTokenFile(tokenFile)
		if err != nil {
			return "", err
		}
		return toks[0], nil
	}
	return os.Getenv(env), nil
}

// reserve asks the central server for version v of set name (0: the next
// free one) and returns the version reserved.
func reserve(ctx context.Context, sf serverFlags, name string, v uint64) (uint64, error) {
	tok, err := bearer(*sf.tokenFile, envSigToken)
	if err != nil {
		return 0, err
	}
	if tok == "" {
		return 0, usageError("--server needs the server's API token: --token-file FILE, %s or %s", envSigTokenFile, envSigToken)
	}
	c, err := httpClient(*sf.ca, time.Minute)
	if err != nil {
		return 0, err
	}
	u, err := url.JoinPath(*sf.url, "/v1/versions")
	if err != nil {
		return 0, usageError("--server %q: %v", *sf.url, err)
	}
	body, _ := json.Marshal(sigserver.Reservation{Name: name, Version: v})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reserving a version: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var out struct {
		sigserver.Reservation
		Error string `json:"error"`
	}
	json.Unmarshal(data, &out)
	switch {
	case resp.StatusCode == http.StatusOK && out.Version > 0:
		return out.Version, nil
	case out.Error != "":
		return 0, fmt.Errorf("the server refused the version: %s", out.Error)
	}
	return 0, fmt.Errorf("reserving a version at %s: %s", u, resp.Status)
}

func runSigBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig build", "sig build --key KEY --name NAME (--version N | --server URL [--version N]) --out BUNDLE RULES...",
		`Compiles RULES (files, or folders of .yar/.yara files) with this engine and, only if
they compile, writes a bundle signed with KEY. Compiler errors are printed with
file and line.

The central signature server numbers its set's versions. With --server, the
version is reserved there first (the next free one without --version): a
number the server already issued or reserved is refused, and the server's
next build is numbered above this bundle, so neither is refused later as a
rollback. Without --server, --version is required and nothing checks it: an
appliance refuses a bundle not numbered above the one it runs.

Examples:
  snapscan sig build --key signing.key --name signature-base --server https://central:8443 \
      --token-file api.token --out sb.bundle rules/
  snapscan sig build --key signing.key --name demo --version 7 --out demo-7.bundle demo.yar extra/
`, stderr)
	keyPath := f.String("key", "", "private key `FILE` (PKCS #8 PEM)")
	name := f.String("name", "", "signature set `NAME`")
	version := f.Uint64("version", 0, "bundle version `N` (with --server: default the next free one)")
	out := f.String("out", "", "write the bundle to `FILE`")
	minEngine := f.String("min-engine", engineVersion, "lowest engine `VERSION` that may load the bundle")
	sf := addServerFlags(f, ": reserve the version there")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || *name == "" || *version == 0 && *sf.url == "" || *out == "" || len(pos) == 0 {
		return usageError("want --key, --name, --version (or --server), --out and at least one rules path")
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
	v := *version
	if *sf.url != "" {
		// Reserved only once the rules compile: a refused build costs
		// no number.
		if v, err = reserve(ctx, sf, *name, v); err != nil {
			return fmt.Errorf("not signed: %w", err)
		}
	}
	data, m, err := signatures.Build(signatures.BuildOptions{
		Name:      *name,
		Version:   v,
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
		`Verifies BUNDLE: signed by a trusted key, every file matching the manifest, and
(unless --no-compile) compiling with this engine. Prints the manifest; exits 1
with the reason (untrusted_key, bad_signature, hash_mismatch, ...) when invalid.

Examples:
  snapscan sig verify --pub signing.pub sb-7.bundle
  snapscan sig verify --pub /etc/snapscan/trusted/ --no-compile sb-7.bundle
`, stderr)
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

// readBundleFile reads a bundle file of at most the default size cap.
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

// readTargets reads a JSON array of push targets ([{"id", "url",
// "token"}]), strictly: a misspelt field is an error, not an appliance
// pushed to without its token.
func readTargets(path string) ([]signatures.PushTarget, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ts []signatures.PushTarget
	if err := httpx.UnmarshalStrict(data, &ts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, t := range ts {
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", path, i, err)
		}
	}
	return ts, nil
}

// receiverURL turns an appliance's base URL (https://app-a:8480) into its
// receiver's (https://app-a:8480/v1/signatures); a URL with a path is
// kept as it is.
func receiverURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s) URL", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/signatures"
	}
	return u.String(), nil
}

// pushResult is one line of sig push's report (one element with --json).
type pushResult struct {
	ID     string `json:"id,omitempty"`
	URL    string `json:"url"`
	OK     bool   `json:"ok"`
	Result string `json:"result"` // installed, already_active, rejected, failed
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	// The set the appliance runs after the push, when it answered.
	Name      string `json:"name,omitempty"`
	Version   uint64 `json:"version,omitempty"`
	RuleCount int    `json:"rule_count,omitempty"`
}

func (p pushResult) String() string {
	who := p.URL
	if p.ID != "" {
		who = p.ID + " (" + p.URL + ")"
	}
	switch p.Result {
	case signatures.ResultInstalled:
		return fmt.Sprintf("%s: installed: runs %s version %d, %d rules", who, p.Name, p.Version, p.RuleCount)
	case signatures.ResultAlreadyActive:
		return fmt.Sprintf("%s: already active: runs %s version %d", who, p.Name, p.Version)
	case signatures.ResultRejected:
		runs := "runs no set"
		if p.Version > 0 {
			runs = fmt.Sprintf("still runs %s version %d", p.Name, p.Version)
		}
		return fmt.Sprintf("%s: rejected (%s): %s; %s", who, p.Reason, p.Error, runs)
	}
	return fmt.Sprintf("%s: failed: %s", who, p.Error)
}

func runSigPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("sig push", "sig push (--url URL... | --targets FILE) [--token-file FILE] [--ca FILE] BUNDLE",
		`Pushes BUNDLE by hand to one or more appliances, through the receiver API the
central server pushes through (POST /v1/signatures on the appliance). Each
appliance verifies the bundle (trusted key, files, version above the one it
runs, compiles) before it activates it, and reports a refusal to its central
server. Appliances are pushed to in parallel; one line per appliance says
what became of the bundle there.

--url takes an appliance's base URL (its receiver is /v1/signatures below it)
or a receiver URL; the token is the appliance's receiver token (or an API
token) from --token-file or SNAPSCAN_TOKEN. --targets takes the file the
central server's --appliances takes: [{"id", "url", "token"}], each target
with its own token.

To take a version number the central server will not reuse, build with
"sig build --server". Exit status: 0 when every appliance runs the bundle
(installed or already active), 1 when any refused it or could not be
reached, 2 for wrong usage.

Examples:
  snapscan sig push --url https://app-a:8480 --token-file push.token --ca ca.pem sb-7.bundle
  snapscan sig push --url https://app-a:8480 --url https://app-b:8480 --token-file push.token sb-7.bundle
  snapscan sig push --targets appliances.json --json sb-7.bundle
`, stderr)
	var urls stringList
	f.Var(&urls, "url", "appliance `URL` (repeatable; default env SNAPSCAN_URL)")
	targetsFile := f.String("targets", "", "JSON `FILE` of push targets: [{\"id\", \"url\", \"token\"}]")
	tokenFile := f.String("token-file", envOr("SNAPSCAN_TOKEN_FILE", ""), "`FILE` holding the push token for --url (first line; env SNAPSCAN_TOKEN_FILE)")
	ca := f.String("ca", "", "PEM `FILE` of CAs to trust for the appliances' HTTPS (default: system roots)")
	timeout := f.Duration("timeout", 2*time.Minute, "give up on an appliance after `DURATION` (it compiles the rules before answering)")
	asJSON := f.Bool("json", false, "print a JSON array, one object per appliance")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("want one BUNDLE")
	}
	if len(urls) == 0 && *targetsFile == "" {
		if u := os.Getenv("SNAPSCAN_URL"); u != "" {
			urls = append(urls, u)
		} else {
			return usageError("want --url URL (or SNAPSCAN_URL) or --targets FILE")
		}
	}
	var targets []signatures.PushTarget
	if *targetsFile != "" {
		if targets, err = readTargets(*targetsFile); err != nil {
			return err
		}
	}
	if len(urls) > 0 {
		tok, err := bearer(*tokenFile, "SNAPSCAN_TOKEN")
		if err != nil {
			return err
		}
		if tok == "" {
			return usageError("--url needs a token: --token-file FILE or SNAPSCAN_TOKEN")
		}
		for _, s := range urls {
			u, err := receiverURL(s)
			if err != nil {
				return usageError("--url: %v", err)
			}
			targets = append(targets, signatures.PushTarget{URL: u, Token: tok})
		}
	}
	data, err := readBundleFile(pos[0])
	if err != nil {
		return err
	}
	client, err := httpClient(*ca, *timeout)
	if err != nil {
		return err
	}
	results := make([]pushResult, len(targets))
	var g errgroup.Group
	g.SetLimit(8)
	for i, t := range targets {
		g.Go(func() error {
			results[i] = pushOne(ctx, client, t, data)
			return nil
		})
	}
	g.Wait()
	failed := 0
	for _, r := range results {
		if !r.OK {
			failed++
		}
		if !*asJSON {
			fmt.Fprintln(stdout, r)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d appliances do not run %s", failed, len(results), pos[0])
	}
	return nil
}

// pushOne pushes to one target and describes the outcome.
func pushOne(ctx context.Context, c *http.Client, t signatures.PushTarget, data []byte) pushResult {
	r := pushResult{ID: t.ID, URL: t.URL}
	resp, err := signatures.Push(ctx, c, t, data)
	var pe *signatures.PushError
	if errors.As(err, &pe) && pe.Response != nil {
		resp = pe.Response
	}
	if resp != nil {
		r.Result, r.Reason, r.Name, r.Version, r.RuleCount = resp.Result, resp.Reason, resp.Name, resp.Version, resp.RuleCount
		r.Error = resp.Error
	}
	switch {
	case err == nil:
		r.OK = true
	case resp == nil:
		r.Result, r.Error = "failed", err.Error()
	}
	return r
}

func runSigServe(ctx context.Context, args []string, stderr io.Writer) error {
	f := newFlags("sig serve", "sig serve --key KEY --name NAME --rules DIR --state DIR --token-file FILE [--listen ADDR] [--tls-cert CERT --tls-key KEY]",
		`Runs the central signature server: builds and signs a new bundle version when the
rules folder changes (or on POST /v1/build), keeps every version under --state,
numbers versions (bundles built by hand reserve theirs: sig build --server),
pushes new versions to registered appliances and serves pulls. It shows for each
appliance whether it runs the latest bundle, and warns when appliances run
versions it never issued (GET /v1/appliances, /v1/status). API:
signatures/API.md.

It listens on loopback (127.0.0.1:8443) by default. A listener other machines
can reach needs TLS (--tls-cert, --tls-key); plain HTTP there is refused unless
--allow-plain-http says a proxy in front terminates TLS.

Examples:
  snapscan sig serve --key signing.key --name signature-base --rules /srv/rules \
      --state /var/lib/snapscan-sig --token-file api.tokens
  snapscan sig serve --key signing.key --name signature-base --rules /srv/rules \
      --state /var/lib/snapscan-sig --token-file api.tokens --listen :8443 \
      --tls-cert central.pem --tls-key central-key.pem --appliances appliances.json --ca ca.pem
`, stderr)
	keyPath := f.String("key", "", "signing key `FILE`")
	name := f.String("name", "", "signature set `NAME`")
	rulesDir := f.String("rules", "", "rules `DIR`")
	stateDir := f.String("state", "", "state `DIR` (bundle history, registered appliances, reserved versions)")
	listen := f.String("listen", sigserver.DefaultAddr, "listen `ADDR`")
	tlsCert := f.String("tls-cert", "", "TLS certificate `FILE` (PEM)")
	tlsKey := f.String("tls-key", "", "TLS key `FILE` (PEM)")
	allowPlain := f.Bool("allow-plain-http", false, "serve plain HTTP on an address other machines reach (only behind a proxy that terminates TLS)")
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
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageError("want both --tls-cert and --tls-key, or neither")
	}
	key, err := signatures.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	tokens, err := httpx.ReadTokenFile(*tokenFile)
	if err != nil {
		return err
	}
	cfg := sigserver.Config{
		Key:            key,
		Name:           *name,
		RulesDir:       *rulesDir,
		StateDir:       *stateDir,
		MinEngine:      engineVersion,
		Externals:      scanner.Externals,
		Tokens:         tokens,
		Addr:           *listen,
		AllowPlainHTTP: *allowPlain,
		PollInterval:   *poll,
		Logger:         slog.New(slog.NewTextHandler(stderr, nil)),
		Check: func(files []signatures.File) (int, error) {
			_, n, err := appliance.CompileBundle(files)
			return n, err
		},
	}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return err
		}
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if *appFile != "" {
		if cfg.Targets, err = readTargets(*appFile); err != nil {
			return err
		}
	}
	if cfg.Client, err = httpClient(*caFile, 2*time.Minute); err != nil {
		return err
	}
	s, err := sigserver.New(cfg)
	if err != nil {
		return err
	}
	err = s.Serve(ctx)
	if errors.Is(err, sigserver.ErrPlainHTTP) {
		return usageError("--listen %s without TLS: other machines can reach it; give --tls-cert and --tls-key, "+
			"or --allow-plain-http behind a proxy that terminates TLS (or listen on 127.0.0.1)", strings.TrimSpace(*listen))
	}
	return err
}
