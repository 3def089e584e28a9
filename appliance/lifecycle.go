package appliance

import (
	"context"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"
)

// supervisor runs the appliance's long-running parts under one errgroup:
// the first part to fail, or the end of Serve's context, starts the
// shutdown, and Serve returns only when every part has returned. Each part
// runs on a context of its own that only the shutdown ends, so that the
// shutdown stops them in its order (API, queue, then the rest), not all at
// once.
type supervisor struct {
	log  *slog.Logger
	g    *errgroup.Group
	gctx context.Context // ends when Serve's context ends or a part fails
	base context.Context // Serve's context without its cancellation
}

func newSupervisor(ctx context.Context, log *slog.Logger) *supervisor {
	g, gctx := errgroup.WithContext(ctx)
	return &supervisor{log: log, g: g, gctx: gctx, base: context.WithoutCancel(ctx)}
}

// part is one running part: stop ends its context and waits for it.
type part struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs f until its part is stopped. An error f returns, wrapped
// with the part's name, fails Serve and starts the shutdown.
func (s *supervisor) start(name string, f func(ctx context.Context) error) *part {
	ctx, cancel := context.WithCancel(s.base)
	p := &part{name: name, cancel: cancel, done: make(chan struct{})}
	s.g.Go(func() error {
		defer close(p.done)
		if err := f(ctx); err != nil {
			return fmt.Errorf("appliance: %s: %w", name, err)
		}
		return nil
	})
	return p
}

// stop cancels the part's context and waits until it returned.
func (p *part) stop() {
	p.cancel()
	<-p.done
}

// onShutdown runs stop, in the group, once Serve's context ends or a part
// failed. stop must stop every part.
func (s *supervisor) onShutdown(stop func()) {
	s.g.Go(func() error {
		<-s.gctx.Done()
		stop()
		return nil
	})
}

// wait returns the first error of any part, once all have returned.
func (s *supervisor) wait() error { return s.g.Wait() }
