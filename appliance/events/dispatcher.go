package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Dispatcher sends events to every configured sink. Each sink has its own
// bounded queue and one goroutine: Emit never blocks, and a sink that is
// slow or down only fills its own queue, after which its events are
// dropped and counted. Make it with New, run it with Serve.
type Dispatcher struct {
	cfg   Config
	log   *slog.Logger
	sinks []*sink
}

// transport delivers one rendered event. deliver returns nil once the
// event is sent, a non-nil error when it gave up on this event (counted
// as failed); it returns when ctx ends. close releases connections; it is
// called once, after the last deliver.
type transport interface {
	deliver(ctx context.Context, s *sink, msg []byte) error
	close()
}

// sink is one destination: its queue, transport and counters.
type sink struct {
	name   string
	typ    string // log, webhook, syslog
	netw   string // syslog: tcp, tls, udp
	format Format
	render func(e *Event) ([]byte, error)
	kinds  map[Kind]bool // nil: every kind
	ch     chan Event
	tr     transport

	sent, dropped, failed, reconnects atomic.Int64
	connected                         atomic.Bool // streams: a connection is up

	mu      sync.Mutex
	lastErr string
	lastAt  time.Time
}

func (s *sink) setErr(err error) {
	s.mu.Lock()
	s.lastErr, s.lastAt = err.Error(), time.Now().UTC()
	s.mu.Unlock()
}

// SinkStats is one sink's delivery counters, for metrics and the console.
type SinkStats struct {
	Name string `json:"name"`
	Type string `json:"type"` // log, webhook or syslog
	// Network is a syslog sink's: tcp, tls or udp.
	Network string `json:"network,omitempty"`
	Format  Format `json:"format"`
	// Sent counts events delivered; Dropped, events thrown away because
	// the queue was full or the appliance stopped before they could be
	// sent; Failed, events the sink gave up on (the receiver refused them,
	// or every retry failed).
	Sent    int64 `json:"sent"`
	Dropped int64 `json:"dropped"`
	Failed  int64 `json:"failed"`
	// Queued is how many wait now, of Capacity.
	Queued   int `json:"queued"`
	Capacity int `json:"capacity"`
	// Connected: a syslog stream's connection is up; Reconnects counts
	// failed connections and lost ones.
	Connected  bool  `json:"connected"`
	Reconnects int64 `json:"reconnects"`
	// LastError is the last delivery problem, and when.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// New checks cfg, reads the files it names (webhook token, TLS CAs and
// certificates) and makes the sinks. Nothing connects before Serve.
func New(cfg Config) (*Dispatcher, error) {
	d := &Dispatcher{cfg: cfg, log: cfg.Logger}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.cfg.Buffer <= 0 {
		d.cfg.Buffer = DefaultBuffer
	}
	if d.cfg.FlushTimeout <= 0 {
		d.cfg.FlushTimeout = DefaultFlushTimeout
	}
	d.cfg.Product = d.cfg.Product.withDefaults()
	p := d.cfg.Product
	renderer := func(f Format) func(e *Event) ([]byte, error) {
		return func(e *Event) ([]byte, error) { return formatMessage(f, e, p) }
	}
	if cfg.Log != nil {
		f := cfg.LogFormat
		if f == "" {
			f = FormatJSON
		}
		if !f.valid() {
			return nil, fmt.Errorf("events: log format %q: want json, ocsf or cef", f)
		}
		d.add(&sink{name: "log", typ: "log", format: f, render: renderer(f), tr: &writerTransport{w: cfg.Log}}, 0)
	}
	if cfg.Webhook.URL != "" {
		if err := cfg.Webhook.Validate(); err != nil {
			return nil, fmt.Errorf("events: webhook: %w", err)
		}
		tr, err := newWebhook(cfg.Webhook)
		if err != nil {
			return nil, err
		}
		f := tr.format
		d.add(&sink{name: "webhook", typ: "webhook", format: f, render: renderer(f), kinds: kindSet(cfg.Webhook.Kinds), tr: tr}, 0)
	}
	seen := map[string]bool{"log": true, "webhook": true}
	for i := range cfg.Syslog {
		sc := cfg.Syslog[i]
		if err := sc.Validate(); err != nil {
			return nil, fmt.Errorf("events: syslog[%d]: %w", i, err)
		}
		name := sc.SinkName()
		if seen[name] {
			return nil, fmt.Errorf("events: syslog[%d]: name %q is used twice", i, name)
		}
		seen[name] = true
		tr, err := newSyslog(sc, d.cfg.Appliance)
		if err != nil {
			return nil, fmt.Errorf("events: syslog[%d] (%s): %w", i, name, err)
		}
		f := sc.format()
		render := func(e *Event) ([]byte, error) {
			msg, err := formatMessage(f, e, p)
			if err != nil {
				return nil, err
			}
			return RFC5424(tr.header, e.severity(), e.Kind, e.Time, string(msg)), nil
		}
		d.add(&sink{name: name, typ: "syslog", netw: sc.network(), format: f, render: render, kinds: kindSet(sc.Kinds), tr: tr}, sc.Buffer)
	}
	return d, nil
}

func (d *Dispatcher) add(s *sink, buffer int) {
	if buffer <= 0 {
		buffer = d.cfg.Buffer
	}
	s.ch = make(chan Event, buffer)
	d.sinks = append(d.sinks, s)
}

// Emit queues events for every sink that takes their kind, without
// blocking: an event that does not fit in a sink's queue is dropped and
// counted there. Events with no time get the current time, events with
// no appliance this appliance's name. Emit is safe for concurrent use,
// also before Serve runs and after it returned (the events then wait, or
// are dropped, in the queues).
func (d *Dispatcher) Emit(evs ...Event) {
	now := time.Now().UTC()
	for _, ev := range evs {
		if ev.Time.IsZero() {
			ev.Time = now
		}
		if ev.Appliance == "" {
			ev.Appliance = d.cfg.Appliance
		}
		for _, s := range d.sinks {
			if s.kinds != nil && !s.kinds[ev.Kind] {
				continue
			}
			select {
			case s.ch <- ev:
			default:
				s.dropped.Add(1)
			}
		}
	}
}

// Serve delivers events until ctx ends, then gives the sinks
// FlushTimeout to send what they hold (a delivery under way goes on
// meanwhile), drops the rest (counted) and closes every connection. It
// returns nil.
func (d *Dispatcher) Serve(ctx context.Context) error {
	// Deliveries run under dctx, which outlives ctx by the flush timeout.
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range d.sinks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run(ctx, dctx, s)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	t := time.NewTimer(d.cfg.FlushTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		cancel()
		<-done
	}
	return nil
}

// run is one sink's loop: deliver until ctx ends, then what is queued
// until dctx ends.
func (d *Dispatcher) run(ctx, dctx context.Context, s *sink) {
	defer s.tr.close()
	for {
		select {
		case ev := <-s.ch:
			d.send(dctx, s, &ev)
			continue
		case <-ctx.Done():
		}
		break
	}
	for {
		select {
		case ev := <-s.ch:
			if dctx.Err() != nil {
				s.dropped.Add(1)
				continue
			}
			d.send(dctx, s, &ev)
		default:
			return
		}
	}
}

// send renders and delivers one event and counts the outcome.
func (d *Dispatcher) send(ctx context.Context, s *sink, ev *Event) {
	msg, err := s.render(ev)
	if err != nil {
		s.failed.Add(1)
		s.setErr(err)
		return
	}
	err = s.tr.deliver(ctx, s, msg)
	switch {
	case err == nil:
		s.sent.Add(1)
	case ctx.Err() != nil:
		// Stopped while waiting to deliver: the event is lost, not refused.
		s.dropped.Add(1)
	default:
		s.failed.Add(1)
		s.setErr(err)
		d.log.Warn("events: delivery failed", "sink", s.name, "kind", ev.Kind, "vm", ev.VM, "err", err)
	}
}

// Stats returns every sink's counters, in configuration order: log,
// webhook, then the syslog destinations.
func (d *Dispatcher) Stats() []SinkStats {
	out := make([]SinkStats, 0, len(d.sinks))
	for _, s := range d.sinks {
		st := SinkStats{Name: s.name, Type: s.typ, Network: s.netw, Format: s.format,
			Sent: s.sent.Load(), Dropped: s.dropped.Load(), Failed: s.failed.Load(),
			Queued: len(s.ch), Capacity: cap(s.ch), Connected: s.connected.Load(), Reconnects: s.reconnects.Load()}
		s.mu.Lock()
		st.LastError, st.LastErrorAt = s.lastErr, s.lastAt
		s.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// jsonEvent is the JSON form of an event, severity filled in.
func jsonEvent(e *Event) ([]byte, error) {
	c := *e
	c.Severity = e.severity()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// sleep waits d or until ctx ends, and says whether it waited.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

var errClosed = errors.New("events: connection closed by the collector")
