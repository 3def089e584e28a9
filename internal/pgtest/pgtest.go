// Package pgtest starts a real PostgreSQL server for tests: initdb into a
// temporary folder and pg_ctl start on a loopback port, as an unprivileged
// user (PostgreSQL refuses to run as root; when the tests run as root, as
// CI does, the server runs as nobody). Each test gets a database of its
// own with NewDatabase. The server is stopped when the test that started
// it ends.
package pgtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/snapscan/snapscan/internal/testenv"
)

// Server is a running PostgreSQL.
type Server struct {
	bin   string // folder of initdb, pg_ctl
	dir   string // owned by the server's user: data/, sock/, log
	port  int
	as    []string // command prefix that runs as the server's user
	fsync bool
	n     atomic.Int64
}

// binDir finds the PostgreSQL programs: Debian installs them under
// /usr/lib/postgresql/N/bin, off PATH.
func binDir() string {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		// A link on PATH: the other programs are beside its target.
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		return filepath.Dir(p)
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(m) == 0 {
		return ""
	}
	return filepath.Dir(m[len(m)-1])
}

// Options tune a test server.
type Options struct {
	// Fsync keeps PostgreSQL's fsync on, as in production: for
	// benchmarks. Tests run with it off.
	Fsync bool
}

// Start initialises and starts a server, stopped (and its folder removed)
// when t ends. It skips (fails in CI) when PostgreSQL is not installed.
func Start(t testing.TB) *Server { return StartOptions(t, Options{}) }

// StartOptions is Start with options.
func StartOptions(t testing.TB, o Options) *Server {
	t.Helper()
	bin := binDir()
	if bin == "" {
		testenv.Skip(t, "needs PostgreSQL (postgresql package; run scripts/install-deps.sh)")
	}
	dir, err := os.MkdirTemp("", "snapscan-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{bin: bin, dir: dir, fsync: o.Fsync}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("pgtest: running as root and no user nobody to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		s.as = []string{"setpriv", "--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", "--"}
	}
	if err := s.run("initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := s.run("mkdir", "-p", filepath.Join(dir, "sock")); err != nil {
		t.Fatal(err)
	}
	s.port = freePort(t)
	if err := s.Start(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

func (s *Server) run(name string, args ...string) error {
	if !strings.Contains(name, "/") && name != "mkdir" {
		name = filepath.Join(s.bin, name)
	}
	argv := append(append(append([]string(nil), s.as...), name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Port is the loopback TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Start starts the (stopped) server and waits until it accepts
// connections.
func (s *Server) Start() error {
	fsync := "off"
	if s.fsync {
		fsync = "on"
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=%s -c max_connections=200",
		s.port, filepath.Join(s.dir, "sock"), fsync)
	return s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-o", opts, "-w", "-t", "60", "start")
}

// Stop stops the server at once (pg_ctl -m fast): sessions are ended, as a
// server restart or a failover ends them.
func (s *Server) Stop() error {
	return s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "-t", "60", "stop")
}

// Restart stops and starts the server.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start()
}

// DSN returns the connection string of database name on this server.
func (s *Server) DSN(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, name)
}

// NewDatabase gives t an empty database of its own and returns its
// connection string. It is a schema, which the connection string puts
// first on the search path: creating one takes a millisecond, where
// CREATE DATABASE copies a template.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	return s.DSN("postgres") + "&search_path=" + name
}

// Proxy forwards loopback TCP connections to a server, and can cut them
// all, as a network failure between an appliance and its database does:
// established connections are closed at once and new ones are dropped as
// soon as they are accepted, until Mend.
type Proxy struct {
	l     net.Listener
	to    string
	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// NewProxy starts a proxy to port on 127.0.0.1, stopped when t ends.
func NewProxy(t testing.TB, port int) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{l: l, to: fmt.Sprintf("127.0.0.1:%d", port), conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.l.Addr().(*net.TCPAddr).Port }

// DSN is the connection string of database dsn's search path through the
// proxy: srv.NewDatabase's string with the proxy's port.
func (p *Proxy) DSN(srv *Server, dsn string) string {
	return strings.Replace(dsn, fmt.Sprintf(":%d/", srv.port), fmt.Sprintf(":%d/", p.Port()), 1)
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
		s, err := net.DialTimeout("tcp", p.to, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(s, c)
		go pipe(c, s)
	}
}

// Cut closes every connection and drops new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Mend lets connections through again.
func (p *Proxy) Mend() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// StartStandby makes a streaming standby of s (pg_basebackup -R) on a
// port of its own and starts it, with synchronous replication, so that a
// commit the primary acknowledged is on the standby too and a failover
// loses nothing. It is stopped when t ends.
func (s *Server) StartStandby(t testing.TB) *Server {
	t.Helper()
	sb := &Server{bin: s.bin, dir: filepath.Join(s.dir, "standby"), as: s.as, fsync: s.fsync}
	if err := s.run("mkdir", "-p", filepath.Join(sb.dir, "sock")); err != nil {
		t.Fatal(err)
	}
	if err := s.run("pg_basebackup", "-D", sb.data(), "-R", "-X", "stream", "-h", "127.0.0.1",
		"-p", strconv.Itoa(s.port), "-U", "postgres", "-d", "application_name=standby"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	sb.port = freePort(t)
	if err := sb.Start(); err != nil {
		t.Fatalf("pgtest: standby: %v", err)
	}
	t.Cleanup(func() { _ = sb.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = 'standby'`, `SELECT pg_reload_conf()`} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("pgtest: %s: %v", q, err)
		}
	}
	// Wait until the standby streams synchronously.
	for {
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return sb
		}
		if ctx.Err() != nil {
			t.Fatal("pgtest: the standby never became synchronous")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Promote makes a standby the primary.
func (s *Server) Promote() error { return s.run("pg_ctl", "-D", s.data(), "-w", "promote") }
