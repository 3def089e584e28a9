package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
)

// Event is one finding as sent to the event log and the webhook: a JSON
// object per line, for a SIEM. It carries one stored finding and the
// event kind ("finding").
type Event struct {
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`
	results.Finding
}

// Events sends findings to a log stream and an optional webhook, each
// through its own bounded buffer, so a slow SIEM never holds up scanning:
// when a buffer is full the event is dropped and counted. Delivery is at
// least once per stored result: a job re-run after a crash sends again.
type Events struct {
	log      *slog.Logger
	out      io.Writer // nil: no log stream
	logCh    chan Event
	hookCh   chan Event
	hook     WebhookConfig
	token    string
	client   *http.Client
	retryMin time.Duration

	// Counters for metrics.
	Sent, Dropped, HookSent, HookDropped, HookFailed atomic.Int64
}

// NewEvents makes the event sinks: out receives JSON lines (nil for
// none); hook.URL, when set, receives POSTs bearing token.
func NewEvents(out io.Writer, hook WebhookConfig, token string, buffer int, log *slog.Logger) *Events {
	if buffer <= 0 {
		buffer = 10000
	}
	e := &Events{log: log, out: out, hook: hook, token: token, retryMin: time.Second,
		client: &http.Client{Timeout: hook.Timeout}}
	if out != nil {
		e.logCh = make(chan Event, buffer)
	}
	if hook.URL != "" {
		e.hookCh = make(chan Event, buffer)
	}
	return e
}

// Emit queues findings for every sink without blocking.
func (e *Events) Emit(rows []results.Finding) {
	for _, r := range rows {
		ev := Event{Kind: "finding", Time: time.Now().UTC(), Finding: r}
		if e.logCh != nil {
			select {
			case e.logCh <- ev:
			default:
				e.Dropped.Add(1)
			}
		}
		if e.hookCh != nil {
			select {
			case e.hookCh <- ev:
			default:
				e.HookDropped.Add(1)
			}
		}
	}
}

// Serve delivers events until ctx ends, then writes what the log buffer
// still holds (the webhook's backlog is dropped: its retries could take
// minutes).
func (e *Events) Serve(ctx context.Context) error {
	done := make(chan struct{})
	if e.hookCh != nil {
		go func() { defer close(done); e.serveHook(ctx) }()
	} else {
		close(done)
	}
	if e.logCh != nil {
		enc := json.NewEncoder(e.out)
		write := func(ev Event) {
			if err := enc.Encode(ev); err != nil {
				e.Dropped.Add(1)
				e.log.Warn("appliance: event log write failed", "err", err)
				return
			}
			e.Sent.Add(1)
		}
	loop:
		for {
			select {
			case ev := <-e.logCh:
				write(ev)
			case <-ctx.Done():
				break loop
			}
		}
		for {
			select {
			case ev := <-e.logCh:
				write(ev)
			default:
				<-done
				return nil
			}
		}
	}
	<-done
	return nil
}

func (e *Events) serveHook(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-e.hookCh:
			if err := e.post(ctx, ev); err != nil {
				e.HookFailed.Add(1)
				// The URL may hold a secret query: log only the host.
				e.log.Warn("appliance: webhook delivery failed", "finding", ev.ID, "err", err)
			} else {
				e.HookSent.Add(1)
			}
		}
	}
}

// post tries 1+Retries times with doubling waits; 4xx answers other than
// 408 and 429 are not retried (the receiver refuses this event).
func (e *Events) post(ctx context.Context, ev Event) error {
	body, _ := json.Marshal(ev)
	wait := e.retryMin
	var last error
	for attempt := 0; attempt <= e.hook.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.hook.URL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if e.token != "" {
			req.Header.Set("Authorization", "Bearer "+e.token)
		}
		resp, err := e.client.Do(req)
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
	return fmt.Errorf("gave up after %d attempts: %w", e.hook.Retries+1, last)
}

// redactURLError keeps the operation and cause of a client error but not
// the URL, which may carry a token.
func redactURLError(err error) error {
	type unwrapper interface{ Unwrap() error }
	if u, ok := err.(unwrapper); ok && u.Unwrap() != nil {
		return fmt.Errorf("post: %w", u.Unwrap())
	}
	return err
}
