package appliance

import (
	"context"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
)

// historyWriteTimeout bounds writing one round of samples.
const historyWriteTimeout = 10 * time.Second

// serveHistory records what each datastore delivered, once per
// historyEvery, in the results store's I/O history, and prunes samples
// older than database.history_retention once an hour. A failed write
// loses that interval's samples (logged), nothing else.
func (a *Appliance) serveHistory(ctx context.Context) error {
	t := time.NewTicker(a.historyEvery)
	defer t.Stop()
	last := map[string]queue.DatastoreMetrics{}
	for _, d := range a.q.Metrics().Datastores {
		last[d.Name] = d
	}
	lastAt := time.Now()
	var pruned time.Time
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return nil
		case now = <-t.C:
		}
		var samples []results.IOSample
		for _, d := range a.q.Metrics().Datastores {
			prev := last[d.Name]
			samples = append(samples, results.IOSample{Datastore: d.Name, At: now, Interval: now.Sub(lastAt),
				BytesRead: max(d.BytesRead-prev.BytesRead, 0), ReadOps: max(d.ReadOps-prev.ReadOps, 0),
				BudgetBytesPerSec: d.Budget.BytesPerSec, BudgetOpsPerSec: d.Budget.OpsPerSec, Running: d.Running})
			last[d.Name] = d
		}
		lastAt = now
		wctx, cancel := context.WithTimeout(ctx, historyWriteTimeout)
		if err := a.results.AddIOSamples(wctx, samples); err != nil {
			a.log.Warn("appliance: I/O history not saved", "err", err)
		}
		if now.Sub(pruned) >= time.Hour {
			if _, err := a.results.PruneIOHistory(wctx, now.Add(-a.cfg.Database.HistoryRetention)); err != nil {
				a.log.Warn("appliance: I/O history not pruned", "err", err)
			}
			pruned = now
		}
		cancel()
	}
}
