package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/connectors"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ConnectorConfig is one hypervisor the appliance finds VMs on, freezes
// and scans (see package connector/connectors for the endpoint keys):
//
//	connectors:
//	  - name: vc
//	    type: vsphere
//	    url: https://vcenter.example/sdk
//	    username_file: /etc/snapscan/vc.user
//	    password_file: /etc/snapscan/vc.pass
//	    mounts: {nfs-ds1: /mnt/nfs-ds1}
//	    select: {folders: [/DC1/vm/prod]}
//	    refresh: 10m
//	    schedule: {daily: true, window: "01:00-05:00", new_vms: true, disk_changes: true}
//	    groups: [{name: pacemaker-a, names: ["db-node*"]}]
//	    freeze_windows: ["22:00-06:00"]
//	    stale_after: 1h
//
// A VM's disks are read through the configured datastore that holds
// them: the one named like the hypervisor's datastore, or else the one
// whose folder holds the disk's file as the appliance sees it (libvirt's
// path_map, vSphere's mounts); its budget applies.
type ConnectorConfig struct {
	connectors.Config `yaml:",inline"`
	// Refresh is how often the inventory is listed again (default 10m).
	Refresh time.Duration `yaml:"refresh"`
	// Schedule says when VMs are scanned without being asked.
	Schedule ScheduleConfig `yaml:"schedule"`
	// Groups are sets of VMs no two of which are frozen at once.
	Groups []connector.Group `yaml:"groups"`
	// FreezeWindows are the daily spans ("22:00-06:00") in which freezes
	// may start; none means any time.
	FreezeWindows []string `yaml:"freeze_windows"`
	// StaleAfter: a freeze snapscan made that is older is released at
	// start and at every refresh (default 1h).
	StaleAfter time.Duration `yaml:"stale_after"`
	// Quiesce asks the guest to flush first where an agent answers.
	Quiesce bool `yaml:"quiesce"`
	// TrackChanges freezes with changed-block tracking (vSphere CBT,
	// libvirt checkpoints on qcow2 v3 disks) and, with incremental scans
	// on, reads of a VM disk scanned before only the files the blocks
	// written since touch: the others keep their outcome
	// (incremental.Session.PlanChanged). Where the hypervisor cannot say
	// what changed, the disk is read in full and the log says why.
	TrackChanges bool `yaml:"track_changes"`
}

// ScheduleConfig says when a connector's VMs are scanned by themselves.
type ScheduleConfig struct {
	// Daily scans every VM once a day, starting within Window.
	Daily bool `yaml:"daily"`
	// Window is when daily scans start ("01:00-05:00"); "" is any time.
	Window string `yaml:"window"`
	// NewVMs scans a VM at the first refresh that sees it.
	NewVMs bool `yaml:"new_vms"`
	// DiskChanges scans a VM whose disks changed (added, grown, another
	// chain) since the previous refresh.
	DiskChanges bool `yaml:"disk_changes"`
}

func (c *ConnectorConfig) setDefaults() {
	if c.Refresh == 0 {
		c.Refresh = 10 * time.Minute
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = time.Hour
	}
}

func (c *ConnectorConfig) validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if c.Refresh < time.Second || c.StaleAfter < 0 {
		return fmt.Errorf("connector %s: refresh must be at least 1s, stale_after not negative", c.Name)
	}
	for _, w := range append(append([]string(nil), c.FreezeWindows...), c.Schedule.Window) {
		if w == "" {
			continue
		}
		if _, err := connector.ParseWindow(w); err != nil {
			return fmt.Errorf("connector %s: %w", c.Name, err)
		}
	}
	if _, err := connector.NewGate(c.Groups, nil, nil); err != nil {
		return fmt.Errorf("connector %s: %w", c.Name, err)
	}
	return nil
}

func validateConnectors(cs []ConnectorConfig) error {
	seen := map[string]bool{}
	for i := range cs {
		if err := cs[i].validate(); err != nil {
			return fmt.Errorf("%w: connectors[%d]: %v", ErrConfig, i, err)
		}
		if seen[cs[i].Name] || strings.Contains(cs[i].Name, "/") {
			return fmt.Errorf("%w: connectors[%d]: name %q repeated or holding a slash", ErrConfig, i, cs[i].Name)
		}
		seen[cs[i].Name] = true
	}
	return nil
}

// connectorDisk marks a job disk the connector freezes when the job runs:
// "connector:<disk key>".
const connectorDisk = "connector:"

// hypervisor is one configured connector at run time.
type hypervisor struct {
	cfg  ConnectorConfig
	gate *connector.Gate
	log  interface {
		Info(string, ...any)
		Warn(string, ...any)
	}

	mu     sync.Mutex
	c      connector.Connector // nil until connected
	inv    *connector.Inventory
	frozen map[string]bool // VM IDs a job of this appliance holds frozen
	// listedFrozen: those frozen when the previous refresh listed.
	listedFrozen map[string]bool
}

// connectorMetrics are the freezes' and releases' stun times.
type connectorMetrics struct {
	stun     *prometheus.HistogramVec
	released *prometheus.CounterVec
}

func newHypervisors(a *Appliance) ([]*hypervisor, *connectorMetrics, error) {
	cm := &connectorMetrics{
		stun: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "snapscan", Name: "freeze_stun_seconds",
			Help:    "How long freezing (op=freeze) or releasing (op=release) a VM held it still, as the hypervisor's API shows it.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"connector", "op"}),
		released: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "snapscan", Name: "stale_freezes_released_total",
			Help: "Freezes snapscan made earlier (a crash, a kill) found and released."}, []string{"connector"}),
	}
	a.m.reg.MustRegister(cm.stun, cm.released)
	var hs []*hypervisor
	for _, c := range a.cfg.Connectors {
		var windows []connector.Window
		for _, w := range c.FreezeWindows {
			win, err := connector.ParseWindow(w)
			if err != nil {
				return nil, nil, err
			}
			windows = append(windows, win)
		}
		gate, err := connector.NewGate(c.Groups, windows, nil)
		if err != nil {
			return nil, nil, err
		}
		hs = append(hs, &hypervisor{cfg: c, gate: gate, log: a.log.With("connector", c.Name)})
	}
	return hs, cm, nil
}

// connect opens the connector once (and again after Close on failure).
func (h *hypervisor) connect(ctx context.Context, a *Appliance) (connector.Connector, *connector.Inventory, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		return h.c, h.inv, nil
	}
	c, err := connectors.Open(ctx, h.cfg.Config, a.log)
	if err != nil {
		return nil, nil, err
	}
	inv, err := connector.NewInventory(c, h.cfg.Select)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	h.c, h.inv = c, inv
	return c, inv, nil
}

// invVM returns the VM as last listed.
func (h *hypervisor) invVM(id string) (connector.VM, bool) {
	h.mu.Lock()
	inv := h.inv
	h.mu.Unlock()
	if inv == nil {
		return connector.VM{}, false
	}
	return inv.VM(id)
}

// drop closes a connection that failed, so the next use reconnects.
func (h *hypervisor) drop(c connector.Connector) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c == c && c != nil {
		c.Close()
		h.c, h.inv = nil, nil
	}
}

// serveConnectors runs every connector's refresh loop until ctx ends.
func (a *Appliance) serveConnectors(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, h := range a.hypervisors {
		g.Go(func() error {
			for {
				if err := a.refresh(ctx, h); err != nil && ctx.Err() == nil {
					h.log.Warn("appliance: connector refresh", "err", err)
				}
				select {
				case <-ctx.Done():
					h.mu.Lock()
					if h.c != nil {
						h.c.Close()
					}
					h.mu.Unlock()
					return nil
				case <-time.After(h.cfg.Refresh):
				}
			}
		})
	}
	return g.Wait()
}

// jobVM is the queue's and the inventory's key of a connector's VM.
func jobVM(h *hypervisor, id string) string { return h.cfg.Name + "/" + id }

// refresh releases stale freezes, lists the VMs, keeps the inventory and
// enqueues the scans the schedule asks for.
func (a *Appliance) refresh(ctx context.Context, h *hypervisor) error {
	c, inv, err := h.connect(ctx, a)
	if err != nil {
		return err
	}
	stale, err := c.Stale(ctx, time.Now().Add(-h.cfg.StaleAfter))
	if err != nil {
		h.drop(c)
		return err
	}
	for _, s := range stale {
		r, err := c.ReleaseStale(ctx, s)
		if err != nil {
			h.log.Warn("appliance: stale freeze not released", "vm", s.VM.Name, "freeze", s.ID, "taken", s.Taken, "err", err)
			continue
		}
		a.connm.released.WithLabelValues(h.cfg.Name).Inc()
		a.connm.stun.WithLabelValues(h.cfg.Name, "release").Observe(r.Stun.Seconds())
		rec := results.Freeze{VM: jobVM(h, s.VM.ID), ID: s.ID, Connector: h.cfg.Name, Taken: s.Taken, Stale: true}
		if old, err := a.results.Freezes(ctx, results.FreezeQuery{VM: rec.VM, Limit: results.MaxPage}); err == nil {
			for _, o := range old {
				if o.ID == s.ID {
					rec = o // the crashed run recorded it: keep its job and freeze stun
					rec.Stale = true
				}
			}
		}
		rec.Released = time.Now().UTC()
		rec.ReleaseStun, rec.ReleaseTook, rec.Repaired = r.Stun, r.Duration, r.Repaired
		rec.Held = rec.Released.Sub(rec.Taken)
		a.putFreeze(ctx, h, rec)
		h.log.Info("appliance: stale freeze released", "vm", s.VM.Name, "freeze", s.ID, "taken", s.Taken, "stun", r.Stun)
	}
	// Every VM frozen at some moment of the listing, for the next refresh.
	listedFrozen := h.frozenNow()
	d, err := inv.Refresh(ctx)
	for id := range h.frozenNow() {
		listedFrozen[id] = true
	}
	if err != nil {
		h.drop(c)
		return err
	}
	for _, vm := range d.Gone {
		if err := a.results.RemoveVM(ctx, jobVM(h, vm.ID)); err != nil {
			return err
		}
	}
	// What is new or changed is decided against the stored inventory as
	// well as the previous refresh in memory, so that a restart neither
	// rescans every VM as new nor misses disks that changed while the
	// appliance was down. VMs frozen now are left alone: their chains
	// show the freeze's overlays until the release.
	changed := map[string]bool{}
	h.mu.Lock()
	wasFrozen := h.listedFrozen
	h.listedFrozen = listedFrozen
	h.mu.Unlock()
	for _, vm := range d.Changed {
		// Against a listing taken while frozen, every VM looks changed.
		if !wasFrozen[vm.ID] {
			changed[vm.ID] = true
		}
	}
	var daily connector.Window
	hasWindow := false
	if h.cfg.Schedule.Window != "" {
		daily, _ = connector.ParseWindow(h.cfg.Schedule.Window)
		hasWindow = true
	}
	now := time.Now()
	for _, vm := range d.VMs {
		id := jobVM(h, vm.ID)
		if listedFrozen[vm.ID] {
			continue
		}
		rv, disks := a.vmDisks(h, c, vm)
		stored, err := a.results.VM(ctx, id)
		isNew := errors.Is(err, results.ErrNotFound)
		if err != nil && !isNew {
			return err
		}
		if !isNew && !sameDisks(stored.Disks, rv.Disks) {
			changed[vm.ID] = true
		}
		if err := a.results.PutVM(ctx, rv); err != nil {
			return err
		}
		reason := ""
		switch {
		case isNew && h.cfg.Schedule.NewVMs:
			reason = "new VM"
		case changed[vm.ID] && h.cfg.Schedule.DiskChanges:
			reason = "disks changed"
		case h.cfg.Schedule.Daily && (!hasWindow || daily.Contains(now)):
			if last, err := a.results.VM(ctx, id); err == nil && now.Sub(last.LastScanned) < 24*time.Hour {
				continue
			}
			reason = "daily"
		default:
			continue
		}
		for _, disk := range disks {
			if disk.Datastore == "" {
				h.log.Warn("appliance: VM not scheduled: a disk is on no configured datastore", "vm", vm.Name, "disk", disk.Path)
				reason = ""
			}
		}
		if reason == "" {
			continue
		}
		if _, err := a.q.Enqueue(ctx, queue.Request{VM: id, Disks: disks, Class: queue.Scheduled, Reason: reason}); err != nil {
			return err
		}
		h.log.Info("appliance: scan scheduled", "vm", vm.Name, "reason", reason)
	}
	return nil
}

// sameDisks compares a VM's disks as stored with those listed now.
func sameDisks(a, b []results.Disk) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// frozenNow lists the VMs a job of this appliance holds frozen now;
// setFrozen marks one so (or unmarks it).
func (h *hypervisor) frozenNow() map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]bool{}
	for id := range h.frozen {
		out[id] = true
	}
	return out
}

func (h *hypervisor) setFrozen(id string, on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.frozen == nil {
		h.frozen = map[string]bool{}
	}
	if on {
		h.frozen[id] = true
	} else {
		delete(h.frozen, id)
	}
}

// vmDisks is a connector's VM as the inventory keeps it and the job
// disks that freeze it when the job runs.
func (a *Appliance) vmDisks(h *hypervisor, c connector.Connector, vm connector.VM) (results.VM, []queue.Disk) {
	rv := results.VM{ID: jobVM(h, vm.ID), Name: vm.Name, Source: h.cfg.Name}
	var disks []queue.Disk
	for _, disk := range vm.Disks {
		ds, _ := a.datastoreOf(h, c, disk)
		rv.Disks = append(rv.Disks, results.Disk{Datastore: ds, Path: disk.Top().Path, Format: disk.Top().Format})
		disks = append(disks, queue.Disk{Path: connectorDisk + disk.Key, Datastore: ds})
	}
	return rv, disks
}

// errNoConnectorVM is wrapped when a submit without disks names no VM of
// a connector.
var errNoConnectorVM = errors.New("no connector lists the VM")

// connectorRequest is the request that scans a connector's VM named by a
// submit without disks: by its inventory id ("vc/vm-42"), the
// hypervisor's id, or its name. The VM's disks are those the connector
// listed at its last refresh; the job freezes them when it runs.
func (a *Appliance) connectorRequest(name string) (queue.Request, error) {
	type hit struct {
		h  *hypervisor
		c  connector.Connector
		vm connector.VM
	}
	var hits []hit
	var unlisted []string
	for _, h := range a.hypervisors {
		h.mu.Lock()
		c, inv := h.c, h.inv
		h.mu.Unlock()
		if inv == nil {
			unlisted = append(unlisted, h.cfg.Name)
			continue
		}
		key := name
		if rest, ok := strings.CutPrefix(name, h.cfg.Name+"/"); ok {
			key = rest
		}
		if vm, ok := inv.VM(key); ok {
			hits = append(hits, hit{h, c, vm})
		}
	}
	switch {
	case len(hits) > 1:
		var ids []string
		for _, x := range hits {
			ids = append(ids, jobVM(x.h, x.vm.ID))
		}
		return queue.Request{}, &apiError{Code: http.StatusConflict, Msg: fmt.Sprintf("vm %q names %d VMs (%s): submit one of these ids", name, len(hits), strings.Join(ids, ", "))}
	case len(hits) == 0 && len(unlisted) > 0:
		return queue.Request{}, &apiError{Code: http.StatusServiceUnavailable, Msg: fmt.Sprintf("vm %q: connector %s has not listed its VMs yet; try again shortly", name, strings.Join(unlisted, ", "))}
	case len(hits) == 0:
		return queue.Request{}, fmt.Errorf("%w %q", errNoConnectorVM, name)
	}
	x := hits[0]
	_, disks := a.vmDisks(x.h, x.c, x.vm)
	if len(disks) == 0 {
		return queue.Request{}, badRequest("vm %q (%s) has no disks", x.vm.Name, jobVM(x.h, x.vm.ID))
	}
	for _, d := range disks {
		if d.Datastore == "" {
			return queue.Request{}, badRequest("vm %q (%s): disk %s is on no configured datastore (add its mount to datastores)",
				x.vm.Name, jobVM(x.h, x.vm.ID), strings.TrimPrefix(d.Path, connectorDisk))
		}
	}
	return queue.Request{VM: jobVM(x.h, x.vm.ID), Disks: disks}, nil
}

// datastoreOf names the configured datastore a connector's disk is read
// through: the one named like the hypervisor's, or the one whose folder
// holds the disk's top file as the appliance sees it, or else the one
// read through connector h under the hypervisor's name (local is then "").
func (a *Appliance) datastoreOf(h *hypervisor, c connector.Connector, d connector.Disk) (string, string) {
	local := ""
	if lp, ok := c.(connector.LocalPather); ok {
		if p, err := lp.LocalPath(d.Top().Path); err == nil {
			local = p
		}
	}
	for _, ds := range a.cfg.Datastores {
		if ds.Name == d.Datastore && local != "" && within(ds.Path, local) {
			return ds.Name, local
		}
	}
	best, bestPath := "", ""
	for _, ds := range a.cfg.Datastores {
		if ds.Path != "" && local != "" && within(ds.Path, local) && len(ds.Path) > len(bestPath) {
			best, bestPath = ds.Name, ds.Path
		}
	}
	if best == "" {
		for _, ds := range a.cfg.Datastores {
			if ds.Connector == h.cfg.Name && ds.Name == d.Datastore {
				return ds.Name, ""
			}
		}
	}
	return best, local
}

func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// connectorJob finds the connector of a job the scheduler made.
func (a *Appliance) connectorJob(job queue.Job) (*hypervisor, string, bool) {
	if len(job.Disks) == 0 || !strings.HasPrefix(job.Disks[0].Path, connectorDisk) {
		return nil, "", false
	}
	name, id, ok := strings.Cut(job.VM, "/")
	if !ok {
		return nil, "", false
	}
	for _, h := range a.hypervisors {
		if h.cfg.Name == name {
			return h, id, true
		}
	}
	return nil, "", false
}

// runFrozen is a connector job: freeze the VM, scan the frozen disks as a
// job of their own, and release the freeze whatever the scan did.
func (a *Appliance) runFrozen(ctx context.Context, job queue.Job, wrap queue.Wrap, h *hypervisor, vmID string) error {
	c, _, err := h.connect(ctx, a)
	if err != nil {
		a.unreadable.set(job.ID, job.Disks[0])
		return classifyConnector(err)
	}
	opts := connector.Options{TrackChanges: h.cfg.TrackChanges}
	if h.cfg.Quiesce {
		opts.Quiesce = connector.QuiesceIfAvailable
	}
	// The gate is tried, not waited at: a job held outside a window or
	// behind another member of its group must not hold a scan slot; the
	// queue tries it again later.
	vm := connector.VM{ID: vmID, Name: vmID}
	if v, ok := h.invVM(vmID); ok {
		vm = v
	}
	// The queue keeps the job, due when the gate may let it through,
	// without counting the run: a VM may wait for its window for days,
	// and the due time survives a restart (it is the job's retry time in
	// the queue's store).
	release, err := h.gate.TryAcquire(vm)
	if errors.Is(err, connector.ErrOutsideWindow) {
		next := h.gate.Opens()
		return queue.Defer(fmt.Errorf("VM %q not frozen now: %w (next window opens %s)", vm.Name, err, next.Format(time.RFC3339)), next)
	}
	if err != nil {
		return queue.Defer(fmt.Errorf("VM %q not frozen now: %w", vm.Name, err), time.Now().Add(groupBusyRetry))
	}
	defer release()
	h.setFrozen(vmID, true)
	defer h.setFrozen(vmID, false)
	var rec *results.Freeze
	rep, err := connector.Scan(ctx, c, vmID, opts, nil, func(ctx context.Context, f *connector.Freeze) error {
		a.connm.stun.WithLabelValues(h.cfg.Name, "freeze").Observe(f.Stun.Seconds())
		h.log.Info("appliance: VM frozen", "vm", f.VM.Name, "freeze", f.ID, "in_place", f.InPlace, "stun", f.Stun)
		if !f.InPlace {
			rec = &results.Freeze{VM: job.VM, ID: f.ID, Connector: h.cfg.Name, JobID: job.ID, Taken: f.Taken,
				FreezeStun: f.Stun, Quiesced: f.Quiesced}
			a.putFreeze(ctx, h, *rec)
		}
		fj := job
		fj.Disks = nil
		var tracks []*diskTrack
		for _, fd := range f.Disks {
			d, err := a.frozenDisk(h, c, f, fd)
			if err != nil {
				return queue.Permanent(err)
			}
			fj.Disks = append(fj.Disks, d)
			tracks = append(tracks, trackOf(h, c, f, fd))
		}
		err := a.scanJob(ctx, fj, wrap, tracks)
		a.keepRecorded(ctx, h, f, tracks)
		return err
	})
	if rep.Freeze == nil && err != nil && ctx.Err() == nil {
		// The VM could not be frozen: a job that ends failed for it tells
		// vm_unreadable, as one whose disk could not be opened does.
		a.unreadable.set(job.ID, job.Disks[0])
	}
	if rep.Freeze != nil && !rep.Freeze.InPlace {
		a.connm.stun.WithLabelValues(h.cfg.Name, "release").Observe(rep.Released.Stun.Seconds())
		h.log.Info("appliance: VM released", "vm", rep.Freeze.VM.Name, "freeze", rep.Freeze.ID, "stun", rep.Released.Stun, "took", rep.Released.Duration)
		if rec != nil {
			rec.Released = time.Now().UTC()
			rec.ReleaseStun, rec.ReleaseTook, rec.Repaired = rep.Released.Stun, rep.Released.Duration, rep.Released.Repaired
			rec.Held = rec.Released.Sub(rec.Taken)
			if rep.ReleaseErr != nil {
				rec.Released, rec.Held, rec.Error = time.Time{}, 0, rep.ReleaseErr.Error()
			}
			a.putFreeze(ctx, h, *rec)
		}
	}
	return classifyConnector(err)
}

// groupBusyRetry is how soon a job held back because another member of
// its VM's group is frozen is tried again.
var groupBusyRetry = 10 * time.Second

// putFreeze records a freeze for the API; a failure to record it is
// logged, never the scan's failure.
func (a *Appliance) putFreeze(ctx context.Context, h *hypervisor, f results.Freeze) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
	defer cancel()
	if err := a.results.PutFreeze(sctx, f); err != nil {
		h.log.Warn("appliance: freeze not recorded", "vm", f.VM, "freeze", f.ID, "err", err)
	}
}

// frozenDisk turns a frozen disk into a job disk on the configured
// datastore that holds its files.
func (a *Appliance) frozenDisk(h *hypervisor, c connector.Connector, f *connector.Freeze, fd connector.FrozenDisk) (queue.Disk, error) {
	name, local := a.datastoreOf(h, c, connector.Disk{Datastore: fd.Disk.Datastore, Layers: fd.Layers})
	ds, ok := a.cfg.datastore(name)
	if ok && ds.Connector != "" {
		// Read through the hypervisor: the job disk keeps the datastore
		// paths ("[ds] folder/file.vmdk"), which scanDisk opens through
		// the connector's Files.
		d := queue.Disk{Path: fd.Top().Path, Datastore: ds.Name, Format: fd.Top().Format}
		for i, l := range fd.Layers {
			if _, err := remotePath(ds, l.Path); err != nil {
				return queue.Disk{}, fmt.Errorf("VM %q disk %s: layer %s: %w", f.VM.Name, fd.Disk.Key, l.Path, err)
			}
			if i > 0 {
				d.Layers = append(d.Layers, l.Path)
			}
		}
		return d, nil
	}
	if !ok || local == "" {
		return queue.Disk{}, fmt.Errorf("VM %q disk %s: %s is on no configured datastore (mount it and add it to datastores)", f.VM.Name, fd.Disk.Key, fd.Top().Path)
	}
	rel := func(p string) (string, error) {
		lp := p
		if l, ok := c.(connector.LocalPather); ok {
			var err error
			if lp, err = l.LocalPath(p); err != nil {
				return "", err
			}
		}
		if !within(ds.Path, lp) {
			return "", fmt.Errorf("VM %q disk %s: layer %s is outside datastore %s", f.VM.Name, fd.Disk.Key, p, ds.Name)
		}
		return filepath.Rel(ds.Path, lp)
	}
	top, err := rel(fd.Top().Path)
	if err != nil {
		return queue.Disk{}, err
	}
	d := queue.Disk{Path: top, Datastore: ds.Name, Format: fd.Top().Format}
	for _, l := range fd.Layers[1:] {
		r, err := rel(l.Path)
		if err != nil {
			return queue.Disk{}, err
		}
		d.Layers = append(d.Layers, r)
	}
	return d, nil
}

// classifyConnector marks a connector's permanent errors for the queue.
func classifyConnector(err error) error {
	if err == nil || queue.IsPermanent(err) {
		return err
	}
	if connector.IsPermanent(err) {
		return queue.Permanent(err)
	}
	return err
}

// diskTrack is what a frozen VM disk's changed-block tracking gives its
// scan: the VM disk's name for the incremental records, this freeze's
// checkpoint, and how to ask the connector what changed since an earlier
// one.
type diskTrack struct {
	disk, at string
	changes  func(ctx context.Context, since string) ([]connector.Extent, error)
}

// trackOf returns the tracking of a frozen disk, nil where it has none.
// The VM disk is named by the connector, the VM's stable id and the
// disk's key: what the hypervisor's checkpoints belong to.
func trackOf(h *hypervisor, c connector.Connector, f *connector.Freeze, fd connector.FrozenDisk) *diskTrack {
	if !h.cfg.TrackChanges || fd.Checkpoint == "" {
		return nil
	}
	return &diskTrack{disk: h.cfg.Name + "/" + f.VM.ID + "/" + fd.Disk.Key, at: fd.Checkpoint,
		changes: func(ctx context.Context, since string) ([]connector.Extent, error) {
			return c.Changes(ctx, f, fd.Disk.Key, since)
		}}
}

// keepRecorded sets, before the release, FrozenDisk.Keep of each tracked
// disk of f to the checkpoint its last record is at when that is not this
// freeze's: the scan failed or was cut short before it was recorded, and
// the next one counts the changes from the recorded checkpoint, which the
// release must not drop. A store that cannot be read keeps nothing (the
// next scan of the disk is then a full one, and says why).
func (a *Appliance) keepRecorded(ctx context.Context, h *hypervisor, f *connector.Freeze, tracks []*diskTrack) {
	act := a.recv.Current()
	if a.records == nil || act == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
	defer cancel()
	sess := incremental.NewSession(a.records, a.scanner(act).ReuseKey(), a.log)
	for i, t := range tracks {
		if t == nil || i >= len(f.Disks) {
			continue
		}
		cp, err := sess.Checkpoint(ctx, t.disk)
		switch {
		case err != nil:
			h.log.Warn("appliance: the VM disk's recorded checkpoint is not known: the release keeps only this freeze's", "vm_disk", t.disk, "err", err)
		case cp != "" && cp != t.at:
			f.Disks[i].Keep = append(f.Disks[i].Keep, cp)
			h.log.Info("appliance: the scan was not recorded: the release keeps the recorded checkpoint", "vm_disk", t.disk, "checkpoint", cp, "freeze_checkpoint", t.at)
		}
	}
}

// plan asks the connector what changed on the disk since the checkpoint
// of its last record in sess's store, for sess.PlanChanged. A store that
// cannot be read, or a connector that cannot say, makes a full scan.
func (t *diskTrack) plan(ctx context.Context, sess *incremental.Session, log *slog.Logger) incremental.Changes {
	c := incremental.Changes{Disk: t.disk, At: t.at}
	since, err := sess.Checkpoint(ctx, t.disk)
	if err != nil {
		log.Warn("appliance: the VM disk's last checkpoint is not known: full scan", "vm_disk", t.disk, "err", err)
		return c
	}
	if since == "" || since == t.at {
		return c
	}
	c.Since = since
	ext, err := t.changes(ctx, since)
	if err != nil {
		c.Err = err
		return c
	}
	for _, e := range ext {
		c.Extents = append(c.Extents, vfs.Range{Off: e.Offset, Len: e.Length})
	}
	return c
}
