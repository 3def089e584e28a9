// Package vsphere is snapscan's connector for VMware vSphere (vCenter or a
// single ESXi host), through github.com/vmware/govmomi.
//
// # Inventory
//
// One property-collector retrieval over a container view returns every
// VM with its name, power state, guest OS, folder, change-tracking flag
// and virtual disks; a disk's layers are its backing's chain (delta disks
// first) and its datastore the one its file lives on. Independent disks
// are marked: a snapshot does not freeze them.
//
// # Freezing
//
// A powered-on VM is frozen with CreateSnapshot (memory off, quiesced
// through VMware Tools when asked): from then on the VM writes to new
// delta disks, and the files the snapshot's own config.hardware.device
// backings name (the former top of each chain) hold the frozen view.
// Release removes the snapshot (RemoveSnapshot with consolidation), which
// merges the deltas back. A VM that is off is read in place.
//
// # Reading the files
//
// The frozen files are read either through the appliance's own mount of
// the datastore (Config.Mounts maps datastore names to local folders) or
// over the datastore's HTTP /folder interface with range requests
// (Files), each request bounded by a timeout and retried a bounded number
// of times. Both are plain io.ReaderAt values, so the queue's
// per-datastore budget wraps them the same way.
//
// # Changed blocks
//
// Where change tracking (CBT) is enabled on the VM, each frozen disk
// carries the changeId of its snapshot, and Changes asks
// QueryChangedDiskAreas for the areas written between an earlier freeze's
// changeId and this freeze's snapshot.
package vsphere

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	gtask "github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vapi/rest"
	"github.com/vmware/govmomi/vapi/tags"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/snapscan/snapscan/connector"
)

// Config says how to reach vCenter or ESXi.
type Config struct {
	// URL is the SDK endpoint, "https://vcenter.example/sdk".
	URL string
	// Username and Password log in (the appliance reads them from files).
	Username, Password string
	// CAFile, when set, is a PEM file of the certificate authorities the
	// endpoint's certificate must chain to; the system's otherwise.
	CAFile string
	// Insecure turns TLS verification off. It is off by default and
	// should stay so: a man in the middle would read every disk.
	Insecure bool
	// Mounts maps datastore names to local folders where the appliance
	// mounts them (NFS). Datastores not listed are read over HTTP.
	Mounts map[string]string
	// Timeout bounds every API call and every HTTP range request
	// (30 s when zero).
	Timeout time.Duration
	// Retries is how many times a failed HTTP range request is tried
	// again (3 when zero; a negative value means none).
	Retries int
	// Tags reads each VM's vSphere tags (as "category/tag") through
	// vCenter's REST API; a List that cannot read them fails rather than
	// select VMs by tag from nothing. ESXi alone has no tags.
	Tags bool
	// Log receives what the connector does; nil discards.
	Log *slog.Logger
}

// Connector is a session with one vSphere endpoint. It is safe for
// concurrent use.
type Connector struct {
	cfg      Config
	endpoint string
	vc       *vim25.Client
	sm       *session.Manager
	rc       *rest.Client // vAPI session for tags, when Config.Tags
	log      *slog.Logger

	mu   sync.Mutex
	busy map[string]bool   // VM ids with a freeze or release in progress
	dc   map[string]string // datastore name -> datacenter inventory path, for /folder URLs
}

var _ connector.Connector = (*Connector)(nil)

// Dial connects and logs in.
func Dial(ctx context.Context, cfg Config) (*Connector, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 3
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Connector{cfg: cfg, endpoint: cfg.URL, log: log, busy: map[string]bool{}, dc: map[string]string{}}
	u, err := soap.ParseURL(cfg.URL)
	if err != nil || u == nil {
		return nil, &connector.Error{Kind: connector.Refused, Endpoint: cfg.URL, Op: "connect", Reason: "not a vSphere SDK URL", Err: err}
	}
	u.User = nil
	c.endpoint = u.String()
	sc := soap.NewClient(u, cfg.Insecure)
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: "connect", Reason: "cannot read the CA file", Err: err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: "connect", Reason: "no certificate in CA file " + cfg.CAFile}
		}
		sc.DefaultTransport().TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	sc.Timeout = cfg.Timeout
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	vc, err := vim25.NewClient(cctx, sc)
	if err != nil {
		return nil, c.fail("connect", "", "", err)
	}
	c.vc = vc
	c.sm = session.NewManager(vc)
	if err := c.sm.Login(cctx, url.UserPassword(cfg.Username, cfg.Password)); err != nil {
		return nil, c.fail("login", "", "", err)
	}
	if cfg.Tags {
		c.rc = rest.NewClient(vc)
		if err := c.rc.Login(cctx, url.UserPassword(cfg.Username, cfg.Password)); err != nil {
			c.sm.Logout(cctx)
			return nil, c.fail("login (tags)", "", "", err)
		}
	}
	return c, nil
}

// tags reads the tags attached to refs, as "category/tag".
func (c *Connector) tags(ctx context.Context, refs []mo.Reference) (map[types.ManagedObjectReference][]string, error) {
	out := map[types.ManagedObjectReference][]string{}
	if c.rc == nil || len(refs) == 0 {
		return out, nil
	}
	m := tags.NewManager(c.rc)
	attached, err := m.GetAttachedTagsOnObjects(ctx, refs)
	if err != nil {
		return nil, c.fail("list tags", "", "", err)
	}
	cats := map[string]string{}
	for _, a := range attached {
		ref := a.ObjectID.Reference()
		for _, t := range a.Tags {
			name, ok := cats[t.CategoryID]
			if !ok {
				if cat, err := m.GetCategory(ctx, t.CategoryID); err == nil {
					name = cat.Name
				}
				cats[t.CategoryID] = name
			}
			out[ref] = append(out[ref], name+"/"+t.Name)
		}
		sort.Strings(out[ref])
	}
	return out, nil
}

// Close logs out.
func (c *Connector) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	if c.rc != nil {
		c.rc.Logout(ctx)
	}
	return c.sm.Logout(ctx)
}

// vmProps are the properties List reads of every VM.
var vmProps = []string{"name", "parent", "runtime.powerState", "config.guestFullName", "config.hardware.device",
	"config.changeTrackingEnabled", "config.uuid", "snapshot"}

// List returns every VM of the endpoint.
func (c *Connector) List(ctx context.Context) ([]connector.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, c.fail("list", "", "", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, vmProps, &vms); err != nil {
		return nil, c.fail("list", "", "", err)
	}
	paths, err := c.folders(ctx)
	if err != nil {
		return nil, err
	}
	refs := make([]mo.Reference, len(vms))
	for i := range vms {
		refs[i] = vms[i].Self
	}
	tagged, err := c.tags(ctx, refs)
	if err != nil {
		return nil, err
	}
	out := make([]connector.VM, 0, len(vms))
	for i := range vms {
		vm := c.describe(&vms[i], paths)
		vm.Tags = tagged[vms[i].Self]
		out = append(out, vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// folders maps every folder and datacenter to its inventory path, and
// records which datacenter each datastore belongs to.
func (c *Connector) folders(ctx context.Context) (map[types.ManagedObjectReference]string, error) {
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, []string{"Folder", "Datacenter", "Datastore"}, true)
	if err != nil {
		return nil, c.fail("list", "", "", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	var fs []mo.Folder
	if err := v.Retrieve(ctx, []string{"Folder"}, []string{"name", "parent"}, &fs); err != nil {
		return nil, c.fail("list", "", "", err)
	}
	var dcs []mo.Datacenter
	if err := v.Retrieve(ctx, []string{"Datacenter"}, []string{"name", "parent"}, &dcs); err != nil {
		return nil, c.fail("list", "", "", err)
	}
	ents := make([]mo.ManagedEntity, 0, len(fs)+len(dcs))
	for _, f := range fs {
		ents = append(ents, f.ManagedEntity)
	}
	for _, d := range dcs {
		ents = append(ents, d.ManagedEntity)
	}
	var dss []mo.Datastore
	if err := v.Retrieve(ctx, []string{"Datastore"}, []string{"name", "parent"}, &dss); err != nil {
		return nil, c.fail("list", "", "", err)
	}
	parent := map[types.ManagedObjectReference]mo.ManagedEntity{}
	for _, e := range ents {
		parent[e.Self] = e
	}
	paths := map[types.ManagedObjectReference]string{}
	var path func(ref types.ManagedObjectReference, depth int) string
	path = func(ref types.ManagedObjectReference, depth int) string {
		if p, ok := paths[ref]; ok {
			return p
		}
		e, ok := parent[ref]
		if !ok || ref == c.vc.ServiceContent.RootFolder || depth > 64 {
			return ""
		}
		p := "/" + e.Name
		if e.Parent != nil {
			p = path(*e.Parent, depth+1) + p
		}
		paths[ref] = p
		return p
	}
	for _, e := range ents {
		path(e.Self, 0)
	}
	dcOf := func(ref types.ManagedObjectReference) string {
		for r, depth := ref, 0; depth < 64; depth++ {
			e, ok := parent[r]
			if !ok {
				return ""
			}
			if r.Type == "Datacenter" {
				return strings.TrimPrefix(path(r, 0), "/")
			}
			if e.Parent == nil {
				return ""
			}
			r = *e.Parent
		}
		return ""
	}
	c.mu.Lock()
	for _, ds := range dss {
		if ds.Parent != nil {
			c.dc[ds.Name] = dcOf(*ds.Parent)
		}
	}
	c.mu.Unlock()
	return paths, nil
}

func (c *Connector) describe(vm *mo.VirtualMachine, paths map[types.ManagedObjectReference]string) connector.VM {
	out := connector.VM{ID: vm.Self.Value, Name: vm.Name, Power: power(vm.Runtime.PowerState)}
	if vm.Parent != nil {
		out.Folder = paths[*vm.Parent]
	}
	if vm.Config != nil {
		out.GuestOS = vm.Config.GuestFullName
		cbt := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
		out.Disks = disks(vm.Config.Hardware.Device, cbt)
	}
	return out
}

func power(s types.VirtualMachinePowerState) connector.Power {
	switch s {
	case types.VirtualMachinePowerStatePoweredOn:
		return connector.PoweredOn
	case types.VirtualMachinePowerStatePoweredOff:
		return connector.PoweredOff
	case types.VirtualMachinePowerStateSuspended:
		return connector.Suspended
	}
	return connector.Unknown
}

// disks describes the virtual disks among devices.
func disks(devices object.VirtualDeviceList, cbt bool) []connector.Disk {
	var out []connector.Disk
	for _, dev := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		vd := dev.(*types.VirtualDisk)
		d := connector.Disk{Key: fmt.Sprint(vd.Key), Size: vd.CapacityInBytes}
		if d.Size == 0 {
			d.Size = vd.CapacityInKB * 1024
		}
		switch b := vd.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			d.Independent = strings.HasPrefix(b.DiskMode, "independent")
			d.ChangeTracking = cbt && !d.Independent
			for p, n := b, 0; p != nil && n <= 16; p, n = p.Parent, n+1 {
				d.Layers = append(d.Layers, connector.Layer{Path: p.FileName, Format: "vmdk"})
			}
		case *types.VirtualDiskSparseVer2BackingInfo:
			d.Independent = strings.HasPrefix(b.DiskMode, "independent")
			d.Layers = []connector.Layer{{Path: b.FileName, Format: "vmdk"}}
		case types.BaseVirtualDeviceFileBackingInfo:
			// RDMs and others: a file vSphere names, but not one a
			// snapshot freezes the same way.
			d.Independent = true
			d.Layers = []connector.Layer{{Path: b.GetVirtualDeviceFileBackingInfo().FileName, Format: "raw"}}
		}
		if len(d.Layers) > 0 {
			var p object.DatastorePath
			if p.FromString(d.Layers[0].Path) {
				d.Datastore = p.Datastore
			}
		}
		out = append(out, d)
	}
	return out
}

// vm reads one VM's properties.
func (c *Connector) vm(ctx context.Context, op, id string) (*mo.VirtualMachine, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: id}
	var vm mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, vmProps, &vm); err != nil {
		return nil, c.fail(op, id, "", err)
	}
	return &vm, nil
}

func (c *Connector) claim(op, vm, id string) (func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy[id] {
		return nil, &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: op, VM: vm, Retry: true,
			Reason: "another freeze or release of this VM is in progress"}
	}
	c.busy[id] = true
	return func() {
		c.mu.Lock()
		delete(c.busy, id)
		c.mu.Unlock()
	}, nil
}

func newID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return connector.NamePrefix + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// ours lists snapscan's snapshots in a VM's snapshot tree.
func ours(tree []types.VirtualMachineSnapshotTree) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, s := range tree {
		if strings.HasPrefix(s.Name, connector.NamePrefix) && strings.Contains(s.Description, "snapscan") {
			out = append(out, s)
		}
		out = append(out, ours(s.ChildSnapshotList)...)
	}
	return out
}

func snapshotTree(vm *mo.VirtualMachine) []types.VirtualMachineSnapshotTree {
	if vm.Snapshot == nil {
		return nil
	}
	return vm.Snapshot.RootSnapshotList
}

// Freeze snapshots a powered-on VM (memory off), or reads one that is
// off in place.
func (c *Connector) Freeze(ctx context.Context, vmID string, opts connector.Options) (*connector.Freeze, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	vm, err := c.vm(ctx, "freeze", vmID)
	if err != nil {
		return nil, err
	}
	done, err := c.claim("freeze", vm.Name, vmID)
	if err != nil {
		return nil, err
	}
	defer done()
	desc := c.describe(vm, nil)
	f := &connector.Freeze{VM: desc, Taken: time.Now()}
	if desc.Power == connector.PoweredOff {
		f.InPlace = true
		for _, d := range desc.Disks {
			f.Disks = append(f.Disks, connector.FrozenDisk{Disk: d, Layers: d.Layers})
		}
		return f, nil
	}
	if desc.Power == connector.Unknown {
		return nil, c.refuse("freeze", vm.Name, "", true, "the VM's power state is not known (host disconnected?)")
	}
	if o := ours(snapshotTree(vm)); len(o) > 0 {
		return nil, c.refuse("freeze", vm.Name, "", true, fmt.Sprintf("the VM is already frozen by snapscan (snapshot %s)", o[0].Name))
	}
	for _, d := range desc.Disks {
		if d.Independent {
			return nil, c.refuse("freeze", vm.Name, d.Key, false, fmt.Sprintf("disk %s (%s) is independent: a snapshot does not freeze it", d.Key, d.Top().Path))
		}
	}
	if len(desc.Disks) == 0 {
		return nil, c.refuse("freeze", vm.Name, "", false, "the VM has no disk")
	}
	id := newID(f.Taken)
	obj := object.NewVirtualMachine(c.vc, vm.Self)
	start := time.Now()
	task, err := obj.CreateSnapshot(ctx, id, connector.Description, false, opts.Quiesce != connector.QuiesceNever)
	var info *types.TaskInfo
	if err == nil {
		info, err = task.WaitForResult(ctx)
	}
	if err != nil && opts.Quiesce == connector.QuiesceIfAvailable && isQuiesceFault(err) {
		c.log.Info("freeze without quiesce: VMware Tools could not quiesce", "vm", vm.Name, "err", err)
		start = time.Now()
		task, err = obj.CreateSnapshot(ctx, id, connector.Description, false, false)
		if err == nil {
			info, err = task.WaitForResult(ctx)
		}
	} else if err == nil {
		f.Quiesced = opts.Quiesce != connector.QuiesceNever
	}
	f.Stun = time.Since(start)
	if err != nil {
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	snapRef, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, c.fail("freeze", vm.Name, "", fmt.Errorf("CreateSnapshot returned %T, not a snapshot", info.Result))
	}
	f.ID = id
	frozen, err := c.frozenDisks(ctx, snapRef, desc.Disks)
	if err != nil {
		if _, rerr := c.release(context.WithoutCancel(ctx), vm.Self, vm.Name, id); rerr != nil {
			c.log.Error("release after a failed freeze", "vm", vm.Name, "snapshot", id, "err", rerr)
		}
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	f.Disks = frozen
	c.log.Info("froze VM", "vm", vm.Name, "snapshot", id, "stun", f.Stun)
	return f, nil
}

// frozenDisks reads the snapshot's own disk backings: the files it holds
// still.
func (c *Connector) frozenDisks(ctx context.Context, snap types.ManagedObjectReference, before []connector.Disk) ([]connector.FrozenDisk, error) {
	var s mo.VirtualMachineSnapshot
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, snap, []string{"config.hardware.device"}, &s); err != nil {
		return nil, err
	}
	snapDisks := map[string]*types.VirtualDisk{}
	for _, dev := range object.VirtualDeviceList(s.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		vd := dev.(*types.VirtualDisk)
		snapDisks[fmt.Sprint(vd.Key)] = vd
	}
	var out []connector.FrozenDisk
	for _, d := range before {
		vd, ok := snapDisks[d.Key]
		if !ok {
			return nil, fmt.Errorf("disk %s is not in the snapshot", d.Key)
		}
		sd := disks(object.VirtualDeviceList{vd}, d.ChangeTracking)[0]
		fd := connector.FrozenDisk{Disk: d, Layers: sd.Layers}
		if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && d.ChangeTracking && b.ChangeId != "" {
			fd.Checkpoint = b.ChangeId
		}
		out = append(out, fd)
	}
	return out, nil
}

// Release removes the freeze's snapshot, consolidating its deltas.
func (c *Connector) Release(ctx context.Context, f *connector.Freeze) (connector.Released, error) {
	if f == nil || f.InPlace || f.ID == "" {
		return connector.Released{}, nil
	}
	done, err := c.claim("release", f.VM.Name, f.VM.ID)
	if err != nil {
		return connector.Released{}, err
	}
	defer done()
	return c.release(ctx, types.ManagedObjectReference{Type: "VirtualMachine", Value: f.VM.ID}, f.VM.Name, f.ID)
}

func (c *Connector) release(ctx context.Context, ref types.ManagedObjectReference, name, id string) (connector.Released, error) {
	var r connector.Released
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	vm, err := c.vm(ctx, "release", ref.Value)
	if err != nil {
		if errors.Is(err, connector.ErrNotFound) {
			return r, nil // the VM is gone, and its snapshots with it
		}
		return r, err
	}
	var snap *types.ManagedObjectReference
	for _, s := range ours(snapshotTree(vm)) {
		if s.Name == id {
			snap = &s.Snapshot
		}
	}
	if snap != nil {
		t := time.Now()
		err := c.removeSnapshot(ctx, *snap)
		r.Stun = time.Since(t)
		if err != nil && !isNotFound(err) {
			return r, c.fail("release", name, "", err)
		}
	}
	r.Duration = time.Since(start)
	c.log.Info("released VM", "vm", name, "snapshot", id, "took", r.Duration)
	return r, nil
}

// removeSnapshot removes a snapshot by reference and waits.
func (c *Connector) removeSnapshot(ctx context.Context, snap types.ManagedObjectReference) error {
	consolidate := true
	res, err := methods.RemoveSnapshot_Task(ctx, c.vc, &types.RemoveSnapshot_Task{This: snap, RemoveChildren: false, Consolidate: &consolidate})
	if err != nil {
		return err
	}
	return object.NewTask(c.vc, res.Returnval).Wait(ctx)
}

// Changes asks QueryChangedDiskAreas for the areas of a disk written
// between changeId since and the freeze's snapshot.
func (c *Connector) Changes(ctx context.Context, f *connector.Freeze, disk, since string) ([]connector.Extent, error) {
	if f == nil || f.ID == "" || since == "" {
		return nil, fmt.Errorf("changes of VM %q disk %s: %w: no snapshot or no earlier changeId", name(f), disk, connector.ErrNoTracking)
	}
	var fd *connector.FrozenDisk
	for i := range f.Disks {
		if f.Disks[i].Disk.Key == disk {
			fd = &f.Disks[i]
		}
	}
	if fd == nil || !fd.Disk.ChangeTracking {
		return nil, fmt.Errorf("changes of VM %q disk %s: %w: change tracking (CBT) is not enabled for it", f.VM.Name, disk, connector.ErrNoTracking)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	vm, err := c.vm(ctx, "changes", f.VM.ID)
	if err != nil {
		return nil, err
	}
	var snap *types.ManagedObjectReference
	for _, s := range ours(snapshotTree(vm)) {
		if s.Name == f.ID {
			snap = &s.Snapshot
		}
	}
	if snap == nil {
		return nil, &connector.Error{Kind: connector.NotFound, Endpoint: c.endpoint, Op: "changes", VM: f.VM.Name, Disk: disk, Reason: "the freeze's snapshot is gone"}
	}
	var key int32
	fmt.Sscan(disk, &key)
	var out []connector.Extent
	for off := int64(0); off < fd.Disk.Size; {
		res, err := methods.QueryChangedDiskAreas(ctx, c.vc, &types.QueryChangedDiskAreas{This: vm.Self, Snapshot: snap, DeviceKey: key, StartOffset: off, ChangeId: since})
		if err != nil {
			if isFault[*types.FileFault](err) || isFault[*types.InvalidArgument](err) {
				return nil, fmt.Errorf("changes of VM %q disk %s: %w: %v", f.VM.Name, disk, connector.ErrNoTracking, err)
			}
			return nil, c.fail("changes", f.VM.Name, disk, err)
		}
		info := res.Returnval
		for _, a := range info.ChangedArea {
			out = append(out, connector.Extent{Offset: a.Start, Length: a.Length})
		}
		next := info.StartOffset + info.Length
		if next <= off {
			return nil, c.fail("changes", f.VM.Name, disk, fmt.Errorf("QueryChangedDiskAreas made no progress at offset %d", off))
		}
		off = next
	}
	return out, nil
}

func name(f *connector.Freeze) string {
	if f == nil {
		return ""
	}
	return f.VM.Name
}

// Stale lists snapscan's snapshots taken before the given time.
func (c *Connector) Stale(ctx context.Context, before time.Time) ([]connector.StaleFreeze, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, c.fail("stale", "", "", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "snapshot"}, &vms); err != nil {
		return nil, c.fail("stale", "", "", err)
	}
	var out []connector.StaleFreeze
	for i := range vms {
		for _, s := range ours(snapshotTree(&vms[i])) {
			if s.CreateTime.Before(before) {
				out = append(out, connector.StaleFreeze{VM: connector.VM{ID: vms[i].Self.Value, Name: vms[i].Name}, ID: s.Name, Taken: s.CreateTime})
			}
		}
	}
	return out, nil
}

// ReleaseStale removes a snapshot Stale found.
func (c *Connector) ReleaseStale(ctx context.Context, s connector.StaleFreeze) (connector.Released, error) {
	if !strings.HasPrefix(s.ID, connector.NamePrefix) {
		return connector.Released{}, c.refuse("release", s.VM.Name, "", false, fmt.Sprintf("%q is not a freeze snapscan made", s.ID))
	}
	r, err := c.Release(ctx, &connector.Freeze{ID: s.ID, VM: s.VM})
	r.Repaired = true
	return r, err
}

func (c *Connector) refuse(op, vm, disk string, retry bool, reason string) error {
	return &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: op, VM: vm, Disk: disk, Retry: retry, Reason: reason}
}

func isFault[T types.BaseMethodFault](err error) bool {
	_, ok := fault(err).(T)
	return ok
}

// fault digs the vSphere fault out of a SOAP or task error.
func fault(err error) types.BaseMethodFault {
	if soap.IsSoapFault(err) {
		v := soap.ToSoapFault(err).VimFault()
		// Faults decode as values (types.InvalidLogin), not pointers.
		if rv := reflect.ValueOf(v); rv.IsValid() && rv.Kind() != reflect.Pointer {
			p := reflect.New(rv.Type())
			p.Elem().Set(rv)
			v = p.Interface()
		}
		if f, ok := v.(types.BaseMethodFault); ok {
			return f
		}
	}
	if soap.IsVimFault(err) {
		return soap.ToVimFault(err)
	}
	var te gtask.Error
	if errors.As(err, &te) {
		return te.Fault()
	}
	return nil
}

func isNotFound(err error) bool {
	switch fault(err).(type) {
	case *types.ManagedObjectNotFound, *types.NotFound:
		return true
	}
	return false
}

func isQuiesceFault(err error) bool {
	switch fault(err).(type) {
	case *types.ToolsUnavailable, *types.ApplicationQuiesceFault, *types.FilesystemQuiesceFault:
		return true
	}
	return false
}

// fail turns a govmomi error into a *connector.Error.
func (c *Connector) fail(op, vm, disk string, err error) error {
	var ce *connector.Error
	if errors.As(err, &ce) {
		return err
	}
	e := &connector.Error{Kind: connector.Failed, Endpoint: c.endpoint, Op: op, VM: vm, Disk: disk, Err: err}
	var ne net.Error
	var ue *url.Error
	switch fault(err).(type) {
	case *types.InvalidLogin, *types.NotAuthenticated, *types.NoPermission:
		e.Kind = connector.Auth
	case *types.ManagedObjectNotFound, *types.NotFound:
		e.Kind = connector.NotFound
	case *types.TaskInProgress, *types.InvalidState, *types.InvalidPowerState:
		e.Kind, e.Retry = connector.Refused, true
		e.Reason = "the VM is busy (a migration or another task is running)"
	case *types.SnapshotDisabled, *types.NotSupported, *types.InvalidSnapshotFormat:
		e.Kind = connector.Refused
		e.Reason = "the VM's configuration does not allow snapshots"
	case nil:
		var ua x509.UnknownAuthorityError
		var cv *tls.CertificateVerificationError
		var hn x509.HostnameError
		if errors.As(err, &ua) || errors.As(err, &cv) || errors.As(err, &hn) {
			e.Kind = connector.Refused
			e.Reason = "the endpoint's TLS certificate is not trusted (set a CA file; verification stays on)"
			break
		}
		if errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded) {
			e.Kind = connector.Unreachable
		}
	}
	return e
}
