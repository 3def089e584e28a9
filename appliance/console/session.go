package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/internal/lru"
)

// CookieName is the session cookie. It holds only a random session id:
// the token a browser logged in with never leaves the appliance again.
const CookieName = "snapscan_session"

// CSRFHeader carries a session's CSRF token on every request that changes
// something (POST, PUT, PATCH, DELETE).
const CSRFHeader = "X-CSRF-Token"

// session is one browser's login. Values in the cache are never changed:
// logging out puts a revoked copy.
type session struct {
	token   [sha256.Size]byte // digest of the API token it logged in with
	csrf    string
	expires time.Time
	revoked bool
}

// sessions is the bounded set of logins: the least recently used is
// forgotten when full (its browser logs in again).
type sessions struct {
	c   *lru.Cache[string, session]
	ttl time.Duration
	now func() time.Time
}

func newID() string {
	b := make([]byte, 32)
	rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for a token already checked against the API's.
func (s *sessions) create(token string) (id string, sess session) {
	id = newID()
	sess = session{token: sha256.Sum256([]byte(token)), csrf: newID(), expires: s.now().Add(s.ttl)}
	s.c.Put(id, sess)
	return id, sess
}

// lookup returns the live session of a request's cookie.
func (s *sessions) lookup(r *http.Request) (string, session, bool) {
	ck, err := r.Cookie(CookieName)
	if err != nil || ck.Value == "" || len(ck.Value) > 64 {
		return "", session{}, false
	}
	sess, ok := s.c.Get(ck.Value)
	if !ok || sess.revoked || !s.now().Before(sess.expires) {
		return "", session{}, false
	}
	return ck.Value, sess, true
}

func (s *sessions) revoke(id string, sess session) {
	sess.revoked = true
	s.c.Put(id, sess)
}

// unsafe reports whether a method changes something (RFC 9110 9.2.1).
func unsafe(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

// sameOrigin reports whether a browser request comes from this origin:
// Sec-Fetch-Site, sent by every current browser, says so; without it,
// Origin must name this host. A request with neither (not a browser)
// passes: the CSRF token still has to match.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin" || s == "none"
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return o == scheme+"://"+r.Host
}

// Authenticate wraps an API handler so that a browser's session counts
// as the token it logged in with. A request that bears an Authorization
// header (or comes without the session cookie) goes to bearer, the API's
// own check, unchanged. A request with the cookie reaches next only when
// its session is live, the token it logged in with is still one of
// tokens, and, for a method that changes something, it comes from this
// origin with the session's CSRF token in X-CSRF-Token. Refusals are 401
// (no valid session) or 403 (CSRF), as JSON like every API error.
func (c *Console) Authenticate(tokens httpx.Tokens, bearer, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			bearer.ServeHTTP(w, r)
			return
		}
		if _, err := r.Cookie(CookieName); err != nil {
			bearer.ServeHTTP(w, r)
			return
		}
		_, sess, ok := c.sessions.lookup(r)
		if !ok || !slices.Contains(tokens, sess.token) {
			c.log.Warn("console: refused session", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "no such session, expired, or its token was removed")
			httpx.WriteError(w, httpx.Errorf(http.StatusUnauthorized, "unauthorized: session expired or unknown: log in again"))
			return
		}
		if unsafe(r.Method) {
			got := r.Header.Get(CSRFHeader)
			if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) != 1 {
				c.log.Warn("console: refused request without its CSRF token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
					"origin", r.Header.Get("Origin"), "fetch_site", r.Header.Get("Sec-Fetch-Site"))
				httpx.WriteError(w, httpx.Errorf(http.StatusForbidden, "forbidden: missing or wrong %s (cross-site request?)", CSRFHeader))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// setCookie writes the session cookie: HttpOnly, SameSite=Strict, Secure
// when the request came over TLS, for the whole site (the API is under
// /v1), lasting ttl (Max-Age: the browser's clock need not agree with
// ours).
func setCookie(w http.ResponseWriter, r *http.Request, id string, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: "/", MaxAge: int(ttl.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

func clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// safeNext is where to go after logging in: a console page, never
// another site.
func safeNext(s string) string {
	if strings.HasPrefix(s, "/console/") && !strings.HasPrefix(s, "/console//") && !strings.ContainsAny(s, "\\\r\n") {
		return s
	}
	return "/console/datastores"
}
