package connector

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ReleaseTimeout bounds the release Scan makes after the scan ended,
// also when the scan's context was cancelled.
var ReleaseTimeout = 5 * time.Minute

// Report is what Scan tells about one freeze.
type Report struct {
	// Freeze is the freeze made (nil if none was).
	Freeze *Freeze
	// Released is what its release took; ReleaseErr why the release
	// failed (it is also joined into Scan's error).
	Released   Released
	ReleaseErr error
	// Waited is the time spent waiting at the gate (windows, groups).
	Waited time.Duration
}

// Scan freezes the VM (after passing gate, when not nil), calls scan with
// the frozen disks and releases the freeze whatever happens: scan failing,
// ctx cancelled or timing out (the release then runs on its own context,
// bounded by ReleaseTimeout), or scan panicking (released, then the panic
// goes on). A failed release is returned joined with scan's error.
func Scan(ctx context.Context, c Connector, vmID string, opts Options, gate *Gate, scan func(ctx context.Context, f *Freeze) error) (rep Report, err error) {
	if gate != nil {
		start := time.Now()
		vm := VM{ID: vmID, Name: vmID}
		if vms, lerr := c.List(ctx); lerr == nil {
			for _, v := range vms {
				if v.ID == vmID {
					vm = v
				}
			}
		}
		release, gerr := gate.Acquire(ctx, vm, time.Minute)
		rep.Waited = time.Since(start)
		if gerr != nil {
			return rep, gerr
		}
		defer release()
	}
	f, err := c.Freeze(ctx, vmID, opts)
	if err != nil {
		return rep, err
	}
	rep.Freeze = f
	defer func() {
		p := recover()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReleaseTimeout)
		defer cancel()
		r, rerr := c.Release(rctx, f)
		rep.Released, rep.ReleaseErr = r, rerr
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("release of freeze %s: %w", f.ID, rerr))
		}
		if p != nil {
			panic(p)
		}
	}()
	return rep, scan(ctx, f)
}
