package sigserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/backoff"
)

// States of an appliance, in ApplianceStatus.State.
const (
	// StateUnknown: never heard from.
	StateUnknown = "unknown"
	// StateCurrent: runs this server's latest bundle.
	StateCurrent = "current"
	// StateBehind: runs an older version; a push or its next pull will
	// update it.
	StateBehind = "behind"
	// StateRefused: refused the latest bundle (Reason, LastError); it is
	// not pushed again, the next version is.
	StateRefused = "refused"
	// StateManual: runs a version reserved for a bundle built by hand
	// (POST /v1/versions), above the latest built here.
	StateManual = "manual"
	// StateAhead: runs a version above everything this server issued or
	// reserved: the server lost its state, or bundles were numbered
	// elsewhere. Logged at ERROR and listed in Status.Warnings.
	StateAhead = "ahead"
	// StateForeign: runs a bundle numbered like this server's latest
	// with other content: signed elsewhere under the same number.
	StateForeign = "foreign"
)

// ApplianceStatus is what the server knows of an appliance.
type ApplianceStatus struct {
	ID  string `json:"id"`
	URL string `json:"url,omitempty"` // empty for appliances known only by their pulls
	// State is one of the State constants.
	State string `json:"state"`
	// Version and Digest are what the appliance last reported running
	// (by a push answer, a pull or a refusal report): 0 and "" if
	// unknown.
	Version  uint64    `json:"version"`
	Digest   string    `json:"digest,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// LastError is the last failed push or reported refusal, cleared
	// by a success; Reason is its code (signatures.Reason) when the
	// appliance refused a bundle, RefusedVersion the version it refused
	// for good.
	LastError      string `json:"last_error,omitempty"`
	Reason         string `json:"reason,omitempty"`
	RefusedVersion uint64 `json:"refused_version,omitempty"`
}

// Appliances returns what the server knows of each appliance, by ID.
func (s *Server) Appliances() []ApplianceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ApplianceStatus, 0, len(s.apps))
	for id, a := range s.apps {
		out = append(out, ApplianceStatus{ID: id, URL: a.target.URL, State: s.stateOf(a), Version: a.version, Digest: a.digest,
			LastSeen: a.lastSeen, LastError: a.lastErr, Reason: a.reason, RefusedVersion: a.refused})
	}
	slices.SortFunc(out, func(a, b ApplianceStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// stateOf tells an appliance's state; s.mu is held.
func (s *Server) stateOf(a *appState) string {
	var latest uint64
	if s.latest != nil {
		latest = s.latest.m.Version
	}
	switch {
	case a.version > max(latest, s.reserved):
		return StateAhead
	case a.version > latest:
		return StateManual
	case latest > 0 && a.version == latest:
		if a.digest != "" && a.digest != s.latest.sum {
			return StateForeign
		}
		return StateCurrent
	case latest > 0 && a.refused == latest:
		return StateRefused
	case a.lastSeen.IsZero() && a.version == 0:
		return StateUnknown
	}
	return StateBehind
}

// alarm logs at ERROR, once each time an appliance enters the ahead or
// foreign state, what that means and how to get past it; s.mu is held.
func (s *Server) alarm(id string, a *appState) {
	st := s.stateOf(a)
	if st != StateAhead && st != StateForeign {
		a.alerted = false
		return
	}
	if a.alerted {
		return
	}
	a.alerted = true
	s.log.Error("sigserver: "+s.warning(st, []string{id}, a.version), "appliance", id, "version", a.version, "digest", a.digest, "state", st)
}

// warning explains an ahead or foreign state; s.mu is held.
func (s *Server) warning(state string, ids []string, version uint64) string {
	var latest uint64
	if s.latest != nil {
		latest = s.latest.m.Version
	}
	who := "appliance " + ids[0] + " runs"
	if len(ids) > 1 {
		who = fmt.Sprintf("appliances %s run", strings.Join(ids, ", "))
	}
	if state == StateForeign {
		return fmt.Sprintf("%s a bundle numbered %d, this server's latest, with other content: it was signed elsewhere under the same number; "+
			"this server's bundles are refused as rollbacks until one is numbered higher (POST /v1/build?version=%d)", who, version, s.floor()+1)
	}
	return fmt.Sprintf("%s version %d, above everything this server issued (latest %d) or reserved (%d): the server lost its state, "+
		"or bundles were numbered elsewhere without reserving their versions here; its bundles are refused as rollbacks "+
		"until one is numbered higher (POST /v1/build?version=%d)", who, version, latest, s.reserved, version+1)
}

// Status is the server's own state (GET /v1/status).
type Status struct {
	Name string `json:"name"`
	// Latest is the newest bundle built here, nil if none.
	Latest *BundleInfo `json:"latest"`
	// Reserved is the highest version reserved for a bundle built
	// elsewhere; NextVersion is the number the next build takes.
	Reserved    uint64 `json:"reserved"`
	NextVersion uint64 `json:"next_version"`
	// Warnings say what needs an operator: appliances ahead of this
	// server, or running another bundle under its latest number.
	Warnings []string `json:"warnings"`
}

// Status returns the server's state and warnings.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Name: s.cfg.Name, Reserved: s.reserved, NextVersion: s.floor() + 1, Warnings: []string{}}
	if s.latest != nil {
		st.Latest = &BundleInfo{Version: s.latest.m.Version, Digest: s.latest.sum, Created: s.latest.m.Created}
	}
	var ahead, foreign []string
	var top uint64
	for id, a := range s.apps {
		switch s.stateOf(a) {
		case StateAhead:
			ahead = append(ahead, id)
			top = max(top, a.version)
		case StateForeign:
			foreign = append(foreign, id)
		}
	}
	if len(ahead) > 0 {
		slices.Sort(ahead)
		st.Warnings = append(st.Warnings, s.warning(StateAhead, ahead, top))
	}
	if len(foreign) > 0 {
		slices.Sort(foreign)
		st.Warnings = append(st.Warnings, s.warning(StateForeign, foreign, s.latest.m.Version))
	}
	return st
}

// startPusher starts a's push loop if Serve runs and none runs yet;
// s.mu is held.
func (s *Server) startPusher(a *appState) {
	if s.runCtx == nil || a.running || a.target.URL == "" {
		return
	}
	a.running = true
	ctx := s.runCtx
	s.pushers.Go(func() { s.pushLoop(ctx, a) })
}

// pushLoop pushes the latest bundle to one appliance until it runs that
// version (or a higher one) or refuses it for good, retrying transient
// failures with exponential backoff and jitter; then it waits for a new
// version.
func (s *Server) pushLoop(ctx context.Context, a *appState) {
	bo := backoff.Backoff{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}
	for {
		s.mu.Lock()
		latest, have, refused, target := s.latest, a.version, a.refused, a.target
		s.mu.Unlock()
		if latest == nil || have >= latest.m.Version || refused == latest.m.Version {
			// Nothing to push: an appliance on a higher version would
			// refuse this one as a rollback.
			select {
			case <-ctx.Done():
				return
			case <-a.wake:
				continue
			}
		}
		v := latest.m.Version
		resp, err := signatures.Push(ctx, s.cfg.Client, target, latest.data)
		if ctx.Err() != nil {
			return
		}
		var pe *signatures.PushError
		refusal := errors.As(err, &pe) && pe.Response != nil && !pe.Retryable()
		if pe != nil && pe.Response != nil {
			resp = pe.Response
		}
		s.mu.Lock()
		if resp != nil && (resp.Version > 0 || refusal) {
			a.version, a.digest, a.lastSeen = resp.Version, resp.Digest, time.Now()
		}
		switch {
		case err == nil && a.version < v:
			// Acknowledged without reporting the version: pushing
			// again would loop; the appliance's next pull will tell.
			a.refused = v
			a.lastErr, a.reason = fmt.Sprintf("acknowledged version %d without running it", v), ""
		case err == nil:
			a.lastErr, a.reason = "", ""
		case refusal:
			a.lastErr, a.reason = err.Error(), resp.Reason
			a.refused = v
		default:
			a.lastErr, a.reason = err.Error(), ""
		}
		s.alarm(target.ID, a)
		s.mu.Unlock()
		switch {
		case err == nil:
			s.log.Info("sigserver: appliance runs bundle", "appliance", target.ID, "version", resp.Version, "result", resp.Result)
			bo.Reset()
			continue
		case refusal:
			s.log.Warn("sigserver: appliance refused bundle", "appliance", target.ID, "version", v, "reason", resp.Reason,
				"runs", resp.Version, "err", err)
			bo.Reset()
			continue
		}
		wait := bo.Next()
		s.log.Warn("sigserver: push failed, will retry", "appliance", target.ID, "version", v, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-a.wake: // a new version or a new URL: try at once
			t.Stop()
		}
	}
}

// maxAppliances bounds the table that pulls and reports from unknown IDs
// add to.
const maxAppliances = 100000

// appliance returns the state of id, adding it if there is room; s.mu is
// held.
func (s *Server) appliance(id string) *appState {
	a, ok := s.apps[id]
	if !ok {
		if len(s.apps) >= maxAppliances {
			return nil
		}
		a = &appState{target: signatures.PushTarget{ID: id}, wake: make(chan struct{}, 1)}
		s.apps[id] = a
	}
	return a
}

// seen records a pull: the appliance's ID and what it runs.
func (s *Server) seen(id string, version uint64, digest string) {
	if !signatures.ValidName(id) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appliance(id)
	if a == nil {
		return
	}
	a.version, a.digest, a.lastSeen = version, digest, time.Now()
	s.alarm(id, a)
	poke(a.wake)
}

// refused records a refusal an appliance reported; false when the table
// of appliances is full.
func (s *Server) refused(id string, r *signatures.Refusal) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appliance(id)
	if a == nil {
		return false
	}
	a.version, a.digest, a.lastSeen = r.ActiveVersion, r.ActiveDigest, time.Now()
	what := "a bundle that did not verify"
	if r.Version > 0 {
		what = fmt.Sprintf("%s version %d", r.Name, r.Version)
	}
	ours := s.latest != nil && r.Digest == s.latest.sum
	if !ours {
		what += " (not this server's latest)"
	}
	a.lastErr, a.reason = fmt.Sprintf("refused %s: %s", what, r.Error), r.Reason
	if ours {
		a.refused = s.latest.m.Version
	}
	s.log.Warn("sigserver: appliance refused bundle", "appliance", id, "version", r.Version, "reason", r.Reason,
		"runs", r.ActiveVersion, "ours", ours, "err", r.Error)
	s.alarm(id, a)
	return true
}
