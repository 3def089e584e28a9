package console

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/internal/lru"
)

//go:embed static
var static embed.FS

// Pages are the console's pages, each at /console/NAME.
var Pages = []string{"datastores", "queue", "vms", "findings", "signatures", "events", "reports"}

// Config configures a Console.
type Config struct {
	// Tokens are the API's bearer tokens: a browser logs in with one of
	// them and its session is worth that token, no more.
	Tokens httpx.Tokens
	// SessionTTL is how long a login lasts (default 12 h).
	SessionTTL time.Duration
	// MaxSessions bounds the logins kept (default 1000; the least
	// recently used is forgotten first).
	MaxSessions int
	// Logger receives logins, logouts and refusals; nil discards.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Console is the operator console: static pages that call the
// appliance's own /v1 API from the browser, and the browser login that
// turns one of the API's tokens into a session cookie. Make it with New;
// mount Handler at /console/ and wrap the API with Authenticate.
type Console struct {
	cfg      Config
	log      *slog.Logger
	sessions *sessions
	files    map[string]*asset
	// failed logins are slowed down for everyone: tokens are long and
	// random, this only keeps guessing from filling the log.
	failed *rate.Limiter
}

// asset is one embedded file, ready to serve.
type asset struct {
	body, gz []byte
	ctype    string
	etag     string
}

// New makes a console. It compresses the embedded files once.
func New(cfg Config) *Console {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{cfg: cfg, log: cfg.Logger, files: map[string]*asset{}, failed: rate.NewLimiter(5, 20),
		sessions: &sessions{c: lru.New[string, session](cfg.MaxSessions), ttl: cfg.SessionTTL, now: cfg.Now}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := static.ReadFile(p)
		sum := sha256.Sum256(b)
		a := &asset{body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: mime.TypeByExtension(path.Ext(p))}
		if a.ctype == "" {
			a.ctype = "text/plain; charset=utf-8"
		}
		var z bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		if z.Len() < len(b) {
			a.gz = z.Bytes()
		}
		c.files[strings.TrimPrefix(p, "static/")] = a
		return nil
	})
	return c
}

// Handler serves /console/: the pages (for a logged-in browser; others
// are sent to the login page), /console/static/ (the embedded scripts,
// styles and the vendored chart library), /console/login,
// /console/logout and /console/session (the CSRF token of the caller's
// session, for the pages' scripts).
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /console/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/datastores", http.StatusSeeOther)
	})
	for _, p := range Pages {
		mux.HandleFunc("GET /console/"+p, c.page)
	}
	mux.HandleFunc("GET /console/login", func(w http.ResponseWriter, r *http.Request) {
		c.serveFile(w, r, "login.html", http.StatusOK)
	})
	mux.HandleFunc("POST /console/login", c.login)
	mux.HandleFunc("POST /console/logout", c.logout)
	mux.HandleFunc("GET /console/session", c.session)
	mux.HandleFunc("GET /console/static/{file...}", func(w http.ResponseWriter, r *http.Request) {
		c.serveFile(w, r, r.PathValue("file"), http.StatusOK)
	})
	mux.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		headers(w)
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, "no such console page: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// headers are sent with every console answer: nothing but this origin's
// own files may run, be framed or be sent to.
func headers(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// serveFile answers with an embedded file, gzip-compressed when the
// client takes it, revalidated by ETag.
func (c *Console) serveFile(w http.ResponseWriter, r *http.Request, name string, code int) {
	headers(w)
	a, ok := c.files[name]
	if !ok {
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, "no such console file: %s", name))
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	h.Add("Vary", "Accept-Encoding")
	if code == http.StatusOK && slices.Contains(strings.Split(strings.ReplaceAll(r.Header.Get("If-None-Match"), " ", ""), ","), a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if a.gz != nil && httpx.AcceptsGzip(r) {
		h.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// live returns the request's session when it is live and its token is
// still one of the API's.
func (c *Console) live(r *http.Request) (string, session, bool) {
	id, s, ok := c.sessions.lookup(r)
	if !ok || !slices.Contains(c.cfg.Tokens, s.token) {
		return "", session{}, false
	}
	return id, s, true
}

// page serves the console's one page shell; its script draws the page
// the path names. A browser without a session goes to the login page.
func (c *Console) page(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := c.live(r); !ok {
		http.Redirect(w, r, "/console/login?next="+r.URL.Path, http.StatusSeeOther)
		return
	}
	c.serveFile(w, r, "index.html", http.StatusOK)
}

// maxLogin bounds a login form: one token.
const maxLogin = 4 << 10

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	headers(w)
	if !sameOrigin(r) {
		c.log.Warn("console: cross-site login refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		httpx.WriteError(w, httpx.Errorf(http.StatusForbidden, "forbidden: cross-site login"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLogin)
	if err := r.ParseForm(); err != nil {
		httpx.WriteError(w, httpx.BadRequest("login form: %v", err))
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	next := safeNext(r.PostForm.Get("next"))
	if token == "" || !c.cfg.Tokens.Match(token) {
		if !c.failed.Allow() {
			time.Sleep(time.Second) // many failures at once: slow them down
		}
		c.log.Warn("console: login refused", "remote", r.RemoteAddr, "reason", "wrong token")
		c.serveFile(w, r, "login-failed.html", http.StatusUnauthorized)
		return
	}
	id, s := c.sessions.create(token)
	setCookie(w, r, id, s.expires.Sub(c.cfg.Now()))
	c.log.Info("console: logged in", "remote", r.RemoteAddr, "expires", s.expires)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	headers(w)
	id, s, ok := c.sessions.lookup(r)
	if ok {
		if !sameOrigin(r) || (r.Header.Get(CSRFHeader) != s.csrf && r.PostFormValue("csrf") != s.csrf) {
			httpx.WriteError(w, httpx.Errorf(http.StatusForbidden, "forbidden: missing or wrong %s", CSRFHeader))
			return
		}
		c.sessions.revoke(id, s)
		c.log.Info("console: logged out", "remote", r.RemoteAddr)
	}
	clearCookie(w, r)
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}

// session tells a page's script the CSRF token of its session. A
// cross-site page cannot read it (no CORS) and the cookie is not sent
// cross-site (SameSite=Strict).
func (c *Console) session(w http.ResponseWriter, r *http.Request) {
	headers(w)
	_, s, ok := c.live(r)
	if !ok {
		httpx.WriteError(w, httpx.Errorf(http.StatusUnauthorized, "unauthorized: not logged in"))
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"csrf": s.csrf, "expires": s.expires.UTC()})
}
