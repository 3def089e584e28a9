package httpx

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Tokens is a set of bearer tokens, kept only as their SHA-256 digests;
// nil is the empty set. Build it with NewTokens or With, never by hand:
// they trim whitespace and leave out empty tokens.
type Tokens [][sha256.Size]byte

// NewTokens returns the set of tokens, each with surrounding whitespace
// removed; empty ones are left out (an empty token would let anyone in).
func NewTokens(tokens ...string) Tokens {
	return Tokens(nil).With(tokens...)
}

// With returns a new set holding t's tokens and tokens; t is unchanged.
func (t Tokens) With(tokens ...string) Tokens {
	n := slices.Clip(slices.Clone(t))
	for _, s := range tokens {
		if s = strings.TrimSpace(s); s != "" {
			n = append(n, sha256.Sum256([]byte(s)))
		}
	}
	return n
}

// Len returns the number of tokens.
func (t Tokens) Len() int { return len(t) }

// Match reports whether token (surrounding whitespace removed) is in the
// set. Digests are compared in constant time, with every token of the
// set, so neither a token's content nor its length nor its place leaks
// through timing.
func (t Tokens) Match(token string) bool {
	token = strings.TrimSpace(token)
	if token == "" {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	match := 0
	for i := range t {
		match |= subtle.ConstantTimeCompare(sum[:], t[i][:])
	}
	return match == 1
}

// ParseBearer returns the token of an Authorization header value in the
// Bearer scheme (RFC 6750 section 2.1): the scheme name in any case (RFC
// 7235 section 2.1 makes it case-insensitive), then whitespace, then the
// token; whitespace around either is ignored. ok is false for another
// scheme or an empty token.
func ParseBearer(header string) (token string, ok bool) {
	scheme, rest, found := strings.Cut(strings.TrimSpace(header), " ")
	if !found {
		scheme, rest, found = strings.Cut(scheme, "\t")
	}
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(rest)
	return token, token != ""
}

// BearerOptions configure RequireBearer.
type BearerOptions struct {
	// Log receives one Warn line per refused request (method, path,
	// remote address, reason; never the credentials). Nil discards.
	Log *slog.Logger
	// Realm is named in WWW-Authenticate (default "snapscan").
	Realm string
	// ClientCert lets a request through without a token when it came
	// over TLS with a client certificate that verified
	// (r.TLS.VerifiedChains): the server's tls.Config (ClientCAs,
	// ClientAuth) decides who may connect that way.
	ClientCert bool
}

// RequireBearer wraps next so that only requests bearing one of tokens
// ("Authorization: Bearer TOKEN", see ParseBearer) reach it. Others get
// 401 with WWW-Authenticate (RFC 6750 section 3: error="invalid_token"
// when a token was sent and is wrong) and {"error": "unauthorized: WHY"},
// WHY being "missing credentials", "not a bearer token", "more than one
// Authorization header" or "wrong token".
func RequireBearer(tokens Tokens, next http.Handler, opts BearerOptions) http.Handler {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	realm := opts.Realm
	if realm == "" {
		realm = "snapscan"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if opts.ClientCert && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			next.ServeHTTP(w, r)
			return
		}
		why, challenge := authorize(tokens, r.Header.Values("Authorization"))
		if why == "" {
			next.ServeHTTP(w, r)
			return
		}
		log.Warn("unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", why)
		h := make(http.Header)
		h.Set("WWW-Authenticate", fmt.Sprintf("Bearer realm=%q%s", realm, challenge))
		WriteError(w, &Error{Code: http.StatusUnauthorized, Msg: "unauthorized: " + why, Header: h})
	})
}

// authorize returns why the Authorization header values do not admit a
// request ("" when they do) and the extra WWW-Authenticate parameters.
func authorize(tokens Tokens, values []string) (why, challenge string) {
	switch {
	case len(values) > 1:
		return "more than one Authorization header", `, error="invalid_request"`
	case len(values) == 0 || strings.TrimSpace(values[0]) == "":
		return "missing credentials", ""
	}
	tok, ok := ParseBearer(values[0])
	switch {
	case !ok:
		return "not a bearer token", `, error="invalid_request"`
	case !tokens.Match(tok):
		return "wrong token", `, error="invalid_token"`
	}
	return "", ""
}

// maxTokenFile bounds a token file: thousands of tokens.
const maxTokenFile = 1 << 20

// ReadTokenFile reads secrets from a file, one a line; surrounding
// whitespace is removed, blank lines and lines starting with # are
// skipped. It fails, naming the file once, when the file cannot be read,
// is larger than 1 MiB or holds no token: a typo must never leave a
// service accepting nothing, or anything. Read a file once and keep what
// it returns; the file may hold several tokens so that they can be
// rotated.
func ReadTokenFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // a *PathError: it names the file
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, err // a *PathError too
	}
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("token file %s: larger than %d bytes", path, maxTokenFile)
	}
	var out []string
	for line := range bytes.Lines(data) {
		t := strings.TrimSpace(string(line))
		if t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("token file %s: no tokens", path)
	}
	return out, nil
}
