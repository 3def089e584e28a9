package events

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// writerTransport writes one event per line to a stream.
type writerTransport struct{ w io.Writer }

func (t *writerTransport) deliver(_ context.Context, _ *sink, msg []byte) error {
	_, err := t.w.Write(append(msg, '\n'))
	return err
}

func (t *writerTransport) close() {}

// webhook POSTs each event, retrying with doubling waits.
type webhook struct {
	cfg      WebhookConfig
	format   Format
	token    string
	client   *http.Client
	retryMin time.Duration
}

func newWebhook(c WebhookConfig) (*webhook, error) {
	w := &webhook{cfg: c, format: c.Format, retryMin: time.Second}
	if w.format == "" {
		w.format = FormatJSON
	}
	if w.cfg.Timeout == 0 {
		w.cfg.Timeout = DefaultTimeout
	}
	if c.RetryWait > 0 {
		w.retryMin = c.RetryWait
	}
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("events: webhook token_file: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				w.token = l
				break
			}
		}
		if w.token == "" {
			return nil, fmt.Errorf("events: webhook token_file %s: no token", c.TokenFile)
		}
	}
	w.client = &http.Client{Timeout: w.cfg.Timeout}
	return w, nil
}

// deliver tries 1+Retries times; 4xx answers other than 408 and 429 are
// not retried (the receiver refuses this event).
func (w *webhook) deliver(ctx context.Context, _ *sink, body []byte) error {
	ct := "application/json"
	if w.format == FormatCEF {
		ct = "text/plain; charset=utf-8"
	}
	wait := w.retryMin
	var last error
	for attempt := 0; attempt <= w.cfg.Retries; attempt++ {
		if attempt > 0 {
			if !sleep(ctx, wait) {
				return ctx.Err()
			}
			wait *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", ct)
		if w.token != "" {
			req.Header.Set("Authorization", "Bearer "+w.token)
		}
		resp, err := w.client.Do(req)
		if err != nil {
			last = redactURLError(err)
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode < 300:
			return nil
		case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != 408 && resp.StatusCode != 429:
			return fmt.Errorf("webhook answered %s", resp.Status)
		}
		last = fmt.Errorf("webhook answered %s", resp.Status)
	}
	return fmt.Errorf("gave up after %d attempts: %w", w.cfg.Retries+1, last)
}

func (w *webhook) close() { w.client.CloseIdleConnections() }

// redactURLError keeps the operation and cause of a client error but not
// the URL, which may carry a token.
func redactURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && ue.Unwrap() != nil {
		return fmt.Errorf("post: %w", ue.Unwrap())
	}
	return err
}

// Reconnection waits: doubling from backoffMin to backoffMax, with ±20%
// jitter so that appliances restarted together do not reconnect in step.
var (
	backoffMin = 500 * time.Millisecond
	backoffMax = 30 * time.Second
)

// syslogTransport sends RFC 5424 messages over TCP, TLS or UDP.
type syslogTransport struct {
	cfg     SyslogConfig
	network string
	header  Header
	tls     *tls.Config
	timeout time.Duration
	maxMsg  int

	conn    net.Conn
	dead    chan struct{} // closed by the reader when the collector hangs up
	readers sync.WaitGroup
	backoff time.Duration
}

func newSyslog(c SyslogConfig, appliance string) (*syslogTransport, error) {
	t := &syslogTransport{cfg: c, network: c.network(), timeout: c.Timeout, maxMsg: c.MaxMessage,
		header: Header{Facility: Facilities[c.facilityName()], Hostname: appliance, AppName: c.AppName,
			ProcID: strconv.Itoa(os.Getpid())}}
	if t.timeout == 0 {
		t.timeout = DefaultTimeout
	}
	if t.maxMsg == 0 {
		t.maxMsg = DefaultMaxMessage
	}
	if t.network == "tls" {
		host, _, _ := net.SplitHostPort(c.Address)
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		if c.ServerName != "" {
			tc.ServerName = c.ServerName
		}
		if c.CA != "" {
			pem, err := os.ReadFile(c.CA)
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca: no PEM certificates in %s", c.CA)
			}
		}
		if c.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return nil, fmt.Errorf("cert, key: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		t.tls = tc
	}
	return t, nil
}

// deliver sends one message. Over UDP a failed send is given up at once
// (datagrams are not retried). Over TCP and TLS it connects when needed
// and retries, reconnecting with backoff, until the message is written or
// ctx ends: a collector that is down holds the sink's queue, whose
// overflow is dropped and counted, never the scans.
func (t *syslogTransport) deliver(ctx context.Context, s *sink, msg []byte) error {
	if t.network == "udp" {
		return t.sendUDP(ctx, s, truncate(msg, t.maxMsg))
	}
	frame := OctetCounted(msg)
	for {
		if t.conn != nil {
			select {
			case <-t.dead:
				t.drop(s, errClosed)
			default:
			}
		}
		if t.conn == nil {
			if err := t.dial(ctx, s); err != nil {
				s.reconnects.Add(1)
				s.setErr(err)
				if !t.wait(ctx) {
					return ctx.Err()
				}
				continue
			}
			s.connected.Store(true)
		}
		t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
		if _, err := t.conn.Write(frame); err != nil {
			// A partial frame may have gone out: the collector drops
			// it when the connection ends; the message is sent again
			// whole on the next connection.
			t.drop(s, fmt.Errorf("write: %w", err))
			if !t.wait(ctx) {
				return ctx.Err()
			}
			continue
		}
		t.backoff = 0
		return nil
	}
}

// wait sleeps the next backoff step.
func (t *syslogTransport) wait(ctx context.Context) bool {
	if t.backoff == 0 {
		t.backoff = backoffMin
	} else {
		t.backoff = min(2*t.backoff, backoffMax)
	}
	j := time.Duration(float64(t.backoff) * (0.8 + 0.4*rand.Float64()))
	return sleep(ctx, j)
}

// drop closes a connection that failed.
func (t *syslogTransport) drop(s *sink, err error) {
	s.connected.Store(false)
	s.reconnects.Add(1)
	s.setErr(err)
	t.conn.Close()
	t.readers.Wait()
	t.conn = nil
}

func (t *syslogTransport) dial(ctx context.Context, s *sink) error {
	dctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	nd := &net.Dialer{KeepAlive: 30 * time.Second}
	var c net.Conn
	var err error
	if t.tls != nil {
		c, err = (&tls.Dialer{NetDialer: nd, Config: t.tls}).DialContext(dctx, "tcp", t.cfg.Address)
	} else {
		c, err = nd.DialContext(dctx, "tcp", t.cfg.Address)
	}
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// Collectors never write to us: a read that returns means the
	// connection is gone, found before the next message is lost in it.
	// (drop waits for this reader before the next connection is made.)
	t.conn, t.dead = c, make(chan struct{})
	t.readers.Add(1)
	go func(c net.Conn, dead chan struct{}) {
		defer t.readers.Done()
		defer close(dead)
		defer s.connected.Store(false)
		var b [512]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	}(c, t.dead)
	return nil
}

func (t *syslogTransport) sendUDP(ctx context.Context, s *sink, msg []byte) error {
	if t.conn == nil {
		dctx, cancel := context.WithTimeout(ctx, t.timeout)
		c, err := (&net.Dialer{}).DialContext(dctx, "udp", t.cfg.Address)
		cancel()
		if err != nil {
			return fmt.Errorf("udp: %w", err)
		}
		t.conn = c
	}
	t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
	if _, err := t.conn.Write(msg); err != nil {
		// An ICMP refusal of an earlier datagram shows up here; the
		// next message tries a fresh socket.
		t.conn.Close()
		t.conn = nil
		return fmt.Errorf("udp: %w", err)
	}
	return nil
}

func (t *syslogTransport) close() {
	if t.conn != nil {
		t.conn.Close()
		t.readers.Wait()
		t.conn = nil
	}
}
