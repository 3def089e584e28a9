package events

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests below run real collectors on loopback (TCP, TLS and UDP
// listeners, an HTTP server) and check the bytes that reach them.

// wantSyslog is the sample finding as a syslog sink sends it, written
// out from RFC 5424: local0 (16) and notice (5, the rule's severity 3)
// make PRI 133.
func wantSyslog() string {
	return fmt.Sprintf("<133>1 2024-05-06T07:08:09.123456Z appl-1 snapscan %d finding - %s", os.Getpid(), sampleCEF)
}

// serve runs a dispatcher until the test ends.
func serve(t *testing.T, cfg Config) *Dispatcher {
	t.Helper()
	cfg.Appliance = "appl-1"
	cfg.Product = testProduct
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return d
}

// readFrame reads one octet-counted message (RFC 6587 3.4.1) and checks
// its framing byte by byte: digits, one space, exactly that many octets.
func readFrame(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	n := 0
	digits := 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			t.Fatalf("frame length: %v", err)
		}
		if c == ' ' {
			break
		}
		if c < '0' || c > '9' || (digits == 0 && c == '0') || digits > 9 {
			t.Fatalf("frame length: unexpected byte %q", c)
		}
		n = n*10 + int(c-'0')
		digits++
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		t.Fatalf("frame of %d bytes: %v", n, err)
	}
	return string(msg)
}

// collector accepts stream connections and hands over their frames.
type collector struct {
	ln     net.Listener
	frames chan string
	conns  chan net.Conn
}

func newCollector(t *testing.T, ln net.Listener) *collector {
	c := &collector{ln: ln, frames: make(chan string, 100), conns: make(chan net.Conn, 10)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.conns <- conn
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					if _, err := r.Peek(1); err != nil {
						return
					}
					c.frames <- readFrame(t, r)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for len(c.conns) > 0 {
			(<-c.conns).Close()
		}
		wg.Wait()
	})
	return c
}

func (c *collector) next(t *testing.T) string {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no message reached the collector")
	}
	return ""
}

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestSyslogTCPWire(t *testing.T) {
	c := newCollector(t, listen(t))
	d := serve(t, Config{Syslog: []SyslogConfig{{Address: c.ln.Addr().String()}}})
	ev := sampleFinding()
	d.Emit(ev)
	if got, want := c.next(t), wantSyslog(); got != want {
		t.Errorf("on the wire:\n got %s\nwant %s", got, want)
	}
	// Two more, on the same connection, in order.
	ev.ID = 43
	d.Emit(ev, Event{Kind: KindSignatureInstalled, SigName: "test", SigVersion: 4, Time: ev.Time})
	if got := c.next(t); !strings.Contains(got, "externalId=43 ") {
		t.Errorf("second message: %s", got)
	}
	want := fmt.Sprintf("<134>1 2024-05-06T07:08:09.123456Z appl-1 snapscan %d signature_installed - "+
		"CEF:0|snapscan|snapscan|1.2.3|signature_installed|Signature update installed|1|rt=1714979289123 dvchost=appl-1 "+
		"cat=signature_installed flexString2Label=signature set flexString2=test cn1Label=signature version cn1=4 "+
		"msg=Signature update installed: test version 4", os.Getpid())
	if got := c.next(t); got != want {
		t.Errorf("third message:\n got %s\nwant %s", got, want)
	}
	if len(c.conns) != 1 {
		t.Errorf("%d connections, want 1", len(c.conns))
	}
	st := waitStats(d, 0, func(st SinkStats) bool { return st.Sent == 3 })
	if st.Name != "tcp://"+c.ln.Addr().String() || st.Type != "syslog" || st.Sent != 3 || !st.Connected || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// testPKI makes a CA and a certificate signed by it for 127.0.0.1, in
// dir: ca.pem, NAME.pem and NAME.key.
func testPKI(t *testing.T, dir string, names ...string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for i, n := range names {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: n},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		write(n+".pem", "CERTIFICATE", der)
		write(n+".key", "EC PRIVATE KEY", kb)
	}
}

func tlsListener(t *testing.T, dir string, requireClient bool) net.Listener {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if requireClient {
		pool := x509.NewCertPool()
		b, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
		pool.AppendCertsFromPEM(b)
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tls.NewListener(listen(t), tc)
}

func TestSyslogTLSWire(t *testing.T) {
	dir := t.TempDir()
	testPKI(t, dir, "server", "client")
	c := newCollector(t, tlsListener(t, dir, true))
	d := serve(t, Config{Syslog: []SyslogConfig{{Network: "tls", Address: c.ln.Addr().String(), CA: filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client.key")}}})
	d.Emit(sampleFinding())
	if got, want := c.next(t), wantSyslog(); got != want {
		t.Errorf("on the wire:\n got %s\nwant %s", got, want)
	}
	conn := <-c.conns
	c.conns <- conn
	if st := conn.(*tls.Conn).ConnectionState(); !st.HandshakeComplete || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "client" {
		t.Errorf("TLS state: handshake %v, client certificates %d", st.HandshakeComplete, len(st.PeerCertificates))
	}
}

func TestSyslogTLSRefusesUntrustedCollector(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	testPKI(t, dir, "server")
	testPKI(t, other) // another CA, that did not sign the collector
	c := newCollector(t, tlsListener(t, dir, false))
	d := serve(t, Config{Syslog: []SyslogConfig{{Network: "tls", Address: c.ln.Addr().String(), CA: filepath.Join(other, "ca.pem")}}})
	d.Emit(sampleFinding())
	deadline := time.Now().Add(10 * time.Second)
	for d.Stats()[0].LastError == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := d.Stats()[0]
	if !strings.Contains(st.LastError, "certificate") || st.Connected || st.Sent != 0 {
		t.Errorf("stats %+v: want a certificate error and nothing sent", st)
	}
	select {
	case f := <-c.frames:
		t.Errorf("an untrusted collector received %q", f)
	default:
	}
}

func TestSyslogUDPWire(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	d := serve(t, Config{Syslog: []SyslogConfig{
		{Network: "udp", Address: pc.LocalAddr().String()},
		{Name: "small", Network: "udp", Address: pc.LocalAddr().String(), MaxMessage: 480, Kinds: []Kind{KindFinding}},
	}})
	d.Emit(sampleFinding())
	buf := make([]byte, 65536)
	got := map[int]string{}
	for range 2 {
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		got[n] = string(buf[:n])
	}
	want := wantSyslog()
	if got[len(want)] != want {
		t.Errorf("datagrams %v, want one of\n%s", got, want)
	}
	short, ok := got[480]
	if !ok || !strings.HasPrefix(want, short) {
		t.Fatalf("no 480-byte prefix of the message among %v", got)
	}
	cef := short[strings.Index(short, "CEF:"):]
	if _, _, err := parseCEF(cef); err != nil {
		t.Errorf("truncated CEF is broken: %v: %s", err, cef)
	}
}

// TestSyslogReconnect: the collector goes away and comes back on the
// same port; the sink notices, reconnects and sends what came meanwhile.
func TestSyslogReconnect(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	c := newCollector(t, ln)
	d := serve(t, Config{Syslog: []SyslogConfig{{Address: addr}}})
	ev := sampleFinding()
	d.Emit(ev)
	c.next(t)
	// The collector stops: listener and connection closed.
	ln.Close()
	(<-c.conns).Close()
	deadline := time.Now().Add(10 * time.Second)
	for d.Stats()[0].Connected && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d.Stats()[0].Connected {
		t.Fatal("the sink did not notice the collector hang up")
	}
	ev.ID = 99
	d.Emit(ev)
	time.Sleep(200 * time.Millisecond) // at least one refused connection
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	c2 := newCollector(t, ln2)
	if got := c2.next(t); !strings.Contains(got, "externalId=99 ") {
		t.Errorf("after reconnecting: %s", got)
	}
	if st := waitStats(d, 0, func(st SinkStats) bool { return st.Sent == 2 }); st.Reconnects < 2 || st.Sent != 2 || st.Dropped != 0 || !st.Connected {
		t.Errorf("stats %+v", st)
	}
}

// TestBoundedNeverBlocks: a collector that is down fills only its own
// queue; Emit returns at once and the overflow is counted, and what the
// queue kept is delivered once the collector is up.
func TestBoundedNeverBlocks(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connections are refused
	var lines strings.Builder
	var mu sync.Mutex
	d := serve(t, Config{Buffer: 1000, Log: writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return lines.Write(p)
	}), Syslog: []SyslogConfig{{Address: addr, Buffer: 5}}})
	const n = 100000
	ev := sampleFinding()
	start := time.Now()
	for range n {
		d.Emit(ev)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Emit of %d events took %s with a collector down", n, el)
	}
	// Let the sink find the collector down at least once.
	waitStats(d, 1, func(st SinkStats) bool { return st.Reconnects > 0 })
	st := d.Stats()[1]
	// The sink holds one event in its retry loop and five in its queue.
	if st.Dropped < n-6 || st.Dropped > n-5 || st.Sent != 0 {
		t.Errorf("syslog stats %+v: want %d or %d dropped", st, n-6, n-5)
	}
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	c := newCollector(t, ln2)
	kept := int(n - st.Dropped)
	for range kept {
		c.next(t)
	}
	if st := waitStats(d, 1, func(st SinkStats) bool { return st.Sent == int64(kept) }); st.Sent != int64(kept) || st.Reconnects == 0 {
		t.Errorf("after the collector came up: %+v", st)
	}
	// The log sink has its own queue: the syslog outage did not touch it
	// beyond its own bound.
	if lst := waitStats(d, 0, func(st SinkStats) bool { return st.Sent+st.Dropped == n }); lst.Sent+lst.Dropped != n || lst.Sent < 1000 {
		t.Errorf("log stats %+v", lst)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestFlushOnShutdown(t *testing.T) {
	c := newCollector(t, listen(t))
	d, err := New(Config{Appliance: "appl-1", Product: testProduct, Syslog: []SyslogConfig{{Address: c.ln.Addr().String(), Format: FormatJSON}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		ev := sampleFinding()
		ev.ID = int64(i + 1)
		d.Emit(ev)
	}
	// Serve starts with its context already ended: the queue is flushed.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Serve(ctx)
	for i := range 50 {
		f := c.next(t)
		if !strings.Contains(f, `finding - {"kind":"finding"`) || !strings.Contains(f, `"id":`+strconv.Itoa(i+1)+`,`) {
			t.Fatalf("message %d: %s", i+1, f)
		}
	}
	if st := d.Stats()[0]; st.Sent != 50 {
		t.Errorf("stats %+v", st)
	}
}

// waitStats polls sink i's counters until ok holds (10 s at most): a
// message can reach the collector just before the sink counts it.
func waitStats(d *Dispatcher, i int, ok func(SinkStats) bool) SinkStats {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := d.Stats()[i]
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWebhook(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	var auth, ctype []string
	attempts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		attempts++
		if attempts == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // retried
			return
		}
		if strings.Contains(string(b), `"uid":"13"`) {
			w.WriteHeader(http.StatusBadRequest) // refused for good
			return
		}
		bodies, auth, ctype = append(bodies, string(b)), append(auth, r.Header.Get("Authorization")), append(ctype, r.Header.Get("Content-Type"))
	}))
	defer srv.Close()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("# the SIEM's\nhook-secret\n"), 0o600)
	d := serve(t, Config{Webhook: WebhookConfig{URL: srv.URL + "/ingest?key=secret", TokenFile: tok, Format: FormatOCSF, Retries: 2, RetryWait: 10 * time.Millisecond}})
	ev := sampleFinding()
	d.Emit(ev)
	ev.ID = 13
	d.Emit(ev)
	st := waitStats(d, 0, func(st SinkStats) bool { return st.Sent+st.Failed == 2 })
	mu.Lock()
	defer mu.Unlock()
	if st.Sent != 1 || st.Failed != 1 || attempts != 3 {
		t.Fatalf("stats %+v after %d attempts; want 1 sent (after a 503), 1 refused with 400", st, attempts)
	}
	if !strings.Contains(bodies[0], `"class_uid":2004`) || auth[0] != "Bearer hook-secret" || ctype[0] != "application/json" {
		t.Errorf("body %s, auth %q, type %q", bodies[0], auth[0], ctype[0])
	}
	if strings.Contains(st.LastError, "secret") {
		t.Errorf("last error shows the URL's secret: %s", st.LastError)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  SyslogConfig
		want string
	}{
		{SyslogConfig{Address: "nohost"}, "address"},
		{SyslogConfig{Address: "h:1", Network: "sctp"}, "network"},
		{SyslogConfig{Address: "h:1", Format: "leef"}, "format"},
		{SyslogConfig{Address: "h:1", Facility: "local9"}, "facility"},
		{SyslogConfig{Address: "h:1", CA: "x.pem"}, "only for network tls"},
		{SyslogConfig{Address: "h:1", Network: "tls", Cert: "c"}, "cert, key"},
		{SyslogConfig{Address: "h:1", Network: "udp", MaxMessage: 100}, "max_message"},
		{SyslogConfig{Address: "h:1", Kinds: []Kind{"findings"}}, "kinds[0]"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.cfg, err, c.want)
		}
	}
	_, err := New(Config{Syslog: []SyslogConfig{{Address: "h:1"}, {Address: "h:1"}}})
	if err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("duplicate sinks: %v", err)
	}
	_, err = New(Config{Syslog: []SyslogConfig{{Network: "tls", Address: "h:1", CA: "/nonexistent/ca.pem"}}})
	if err == nil || !strings.Contains(err.Error(), "syslog[0] (tls://h:1): ca:") {
		t.Errorf("missing CA: %v", err)
	}
}
