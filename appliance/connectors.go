package appliance

import (
	"context"
	"fmt"
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

	mu  sync.Mutex
	c   connector.Connector // nil until connected
	inv *connector.Inventory
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
		h.log.Info("appliance: stale freeze released", "vm", s.VM.Name, "freeze", s.ID, "taken", s.Taken, "stun", r.Stun)
	}
	d, err := inv.Refresh(ctx)
	if err != nil {
		h.drop(c)
		return err
	}
	for _, vm := range d.Gone {
		if err := a.results.RemoveVM(ctx, jobVM(h, vm.ID)); err != nil {
			return err
		}
	}
	changed := map[string]bool{}
	for _, vm := range d.Changed {
		changed[vm.ID] = true
	}
	isNew := map[string]bool{}
	for _, vm := range d.New {
		isNew[vm.ID] = true
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
		rv := results.VM{ID: id, Name: vm.Name, Source: h.cfg.Name}
		var disks []queue.Disk
		for _, disk := range vm.Disks {
			ds, _ := a.datastoreOf(c, disk)
			rv.Disks = append(rv.Disks, results.Disk{Datastore: ds, Path: disk.Top().Path, Format: disk.Top().Format})
			disks = append(disks, queue.Disk{Path: connectorDisk + disk.Key, Datastore: ds})
		}
		if err := a.results.PutVM(ctx, rv); err != nil {
			return err
		}
		reason := ""
		switch {
		case isNew[vm.ID] && h.cfg.Schedule.NewVMs:
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

// datastoreOf names the configured datastore a connector's disk is read
// through: the one named like the hypervisor's, or the one whose folder
// holds the disk's top file as the appliance sees it.
func (a *Appliance) datastoreOf(c connector.Connector, d connector.Disk) (string, string) {
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
	best := ""
	for _, ds := range a.cfg.Datastores {
		if local != "" && within(ds.Path, local) && len(ds.Path) > len(best) {
			best = ds.Name
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
		return classifyConnector(err)
	}
	opts := connector.Options{}
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
	release, err := h.gate.TryAcquire(vm)
	if err != nil {
		return fmt.Errorf("VM %q not frozen now: %w", vm.Name, err)
	}
	defer release()
	rep, err := connector.Scan(ctx, c, vmID, opts, nil, func(ctx context.Context, f *connector.Freeze) error {
		a.connm.stun.WithLabelValues(h.cfg.Name, "freeze").Observe(f.Stun.Seconds())
		h.log.Info("appliance: VM frozen", "vm", f.VM.Name, "freeze", f.ID, "in_place", f.InPlace, "stun", f.Stun)
		fj := job
		fj.Disks = nil
		for _, fd := range f.Disks {
			d, err := a.frozenDisk(c, f, fd)
			if err != nil {
				return queue.Permanent(err)
			}
			fj.Disks = append(fj.Disks, d)
		}
		return a.run(ctx, fj, wrap)
	})
	if rep.Freeze != nil && !rep.Freeze.InPlace {
		a.connm.stun.WithLabelValues(h.cfg.Name, "release").Observe(rep.Released.Stun.Seconds())
		h.log.Info("appliance: VM released", "vm", rep.Freeze.VM.Name, "freeze", rep.Freeze.ID, "stun", rep.Released.Stun, "took", rep.Released.Duration)
	}
	return classifyConnector(err)
}

// frozenDisk turns a frozen disk into a job disk on the configured
// datastore that holds its files.
func (a *Appliance) frozenDisk(c connector.Connector, f *connector.Freeze, fd connector.FrozenDisk) (queue.Disk, error) {
	name, local := a.datastoreOf(c, connector.Disk{Datastore: fd.Disk.Datastore, Layers: fd.Layers})
	ds, ok := a.cfg.datastore(name)
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
