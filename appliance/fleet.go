package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/httpx"
)

// Fleet mode: several appliances on one PostgreSQL database. The queue
// (queue/postgres) shares jobs, leases, slots and rate budgets; the
// results store (appliance/results/postgres) shares results, the verdict
// cache and the inventory; this file holds the appliance's side:
//
//   - its name, claimed in the register of appliances (results.Appliances)
//     with an instance id a restart keeps, refreshed every announceEvery
//     with the active signature set, so the fleet sees which appliance
//     runs which version (GET /v1/appliances);
//   - its results, written under the run's fence (results.Fence with the
//     queue store's FenceQuery): a result is stored only while the run that
//     made it is the job's current run, checked in the save's own
//     transaction, so a late result from an appliance whose lease ended is
//     refused, never stored;
//   - a result that could not be written because the database is down is
//     retried until it is, as long as the run is still this appliance's
//     (its lease lasts, the job was not cancelled, the appliance does not
//     stop). Once it is not, the queue gives the job to another run, which
//     writes its own result: nothing is dropped that is not redone.

// announceEvery is how often the appliance refreshes its entry in the
// register; nameHold is how long an entry keeps the name from another
// instance after its last refresh.
const (
	announceEvery = 5 * time.Second
	nameHold      = 30 * time.Second
)

// announce claims or refreshes the appliance's entry in the register.
func (a *Appliance) announce(ctx context.Context) error {
	e := results.Appliance{Name: a.cfg.Name, Instance: a.instance, Version: buildVersion(), StartedAt: a.startedAt}
	if act := a.recv.Current(); act != nil {
		e.SigName, e.SigVersion, e.RulesID = act.Manifest.Name, act.Manifest.Version, act.Rules.ID()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := a.results.Announce(ctx, e, nameHold)
	if errors.Is(err, results.ErrNameInUse) {
		return fmt.Errorf("%w: name: %q is in use by another appliance on this database (seen in the last %s): give each appliance its own name",
			ErrConfig, a.cfg.Name, nameHold)
	}
	return err
}

// serveAnnounce refreshes the appliance's entry every announceEvery and at
// once after a signature update. It fails only if another appliance took
// the name meanwhile (this one was silent for nameHold).
func (a *Appliance) serveAnnounce(ctx context.Context) error {
	t := time.NewTicker(announceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-a.announceNow:
		}
		err := a.announce(ctx)
		switch {
		case errors.Is(err, ErrConfig):
			return err
		case err != nil && ctx.Err() == nil:
			a.log.Warn("appliance: announcing to the fleet's register failed", "err", err)
		}
	}
}

// announceSoon asks serveAnnounce for a refresh now (a new signature set).
func (a *Appliance) announceSoon() {
	select {
	case a.announceNow <- struct{}{}:
	default:
	}
}

// Result saves are retried from saveRetryMin, doubling, up to saveRetryMax
// between tries.
const (
	saveRetryMin = 250 * time.Millisecond
	saveRetryMax = 5 * time.Second
)

// saveScan stores a run's result under the run's fence, retrying a save
// that failed while qctx (the queue's context of the run) lasts. It returns
// an error wrapping results.ErrFenced when the run is no longer the job's,
// and qctx's cause (with the last error) when the run ended before the
// result could be written.
func (a *Appliance) saveScan(qctx context.Context, res *results.Scan, log *slog.Logger) ([]results.Finding, error) {
	wait := saveRetryMin
	for {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(qctx), saveTimeout)
		rows, err := a.results.SaveScan(sctx, res)
		cancel()
		switch {
		case err == nil:
			return rows, nil
		case errors.Is(err, results.ErrFenced):
			a.m.fenced.Inc()
			log.Warn("appliance: result refused: the run is no longer this appliance's (its lease ended); the job's current run writes its own", "err", err)
			return nil, err
		case errors.Is(err, results.ErrInvalid):
			return nil, err
		}
		a.m.saveRetries.Inc()
		log.Warn("appliance: result not saved, retrying while the run is this appliance's", "err", err, "retry_in", wait)
		select {
		case <-qctx.Done():
			return nil, fmt.Errorf("%w (result not saved: %w)", context.Cause(qctx), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, saveRetryMax)
	}
}

// buildVersion names the snapscan build: the module version and the VCS
// revision when the binary records them.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

// ApplianceView is one appliance of the fleet as GET /v1/appliances shows
// it: its register entry, whether it was heard from recently, and whether
// it is this one.
type ApplianceView struct {
	results.Appliance
	// Live: it announced itself within the last nameHold.
	Live bool `json:"live"`
	// Self: the appliance answering.
	Self bool `json:"self"`
}

func (a *Appliance) handleAppliances(w http.ResponseWriter, r *http.Request, _ httpx.Query) error {
	list, err := a.results.Appliances(r.Context())
	if err != nil {
		return err
	}
	out := make([]ApplianceView, 0, len(list))
	for _, e := range list {
		out = append(out, ApplianceView{Appliance: e, Live: time.Since(e.SeenAt) < nameHold,
			Self: e.Name == a.cfg.Name && e.Instance == a.instance})
	}
	writeJSON(w, http.StatusOK, map[string]any{"appliances": out})
	return nil
}
