// Package vspheretest runs the vSphere simulator (govmomi's vcsim) in
// process for the tests of the vSphere connector and of the appliance,
// with real VMDK disks (testdata/vsphere-disk.sh) in its datastore
// folder, extended where vcsim does not model what the connector relies
// on (see Sim).
package vspheretest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/internal/testenv"
)

// Sim is a running vcsim. The vSphere simulator (vcsim) in govmomi
// v0.52.0 records a snapshot but
// makes no delta disk, so the VM would go on writing to the very file
// the snapshot is meant to freeze, and it does not implement
// QueryChangedDiskAreas. The test extends the simulated VMs the way
// govmomi's simulator/example_extend_test.go shows:
//
//   - deltaVM.CreateSnapshotTask records the snapshot as vcsim does and
//     then does what ESXi does: a real delta VMDK (qemu-img create -b) is
//     made beside each disk's top file and becomes the VM's disk; the
//     snapshot's config keeps the former top, now frozen.
//   - deltaSnapshot.RemoveSnapshotTask consolidates as ESXi does: the
//     delta's allocated grains are logged for CBT (qemu-img map), the
//     delta is committed into its parent (qemu-img commit) and removed,
//     and the VM's disk points at the parent again.
//   - deltaVM.QueryChangedDiskAreas answers from that log: the areas
//     consolidated between the changeId's state and the snapshot's.
//   - A VM marked busy fails CreateSnapshot with TaskInProgress, as a VM
//     being migrated does.
//
// "Guest writes" are made with qemu-io into the VM's current delta
// (GuestWrite).
type Sim struct {
	Model *simulator.Model
	Srv   *simulator.Server
	DS    string   // the datastore's name
	Dir   string   // its local folder
	URL   *url.URL // the SDK endpoint
	disk  string   // the fixture VMDK
	// Planted maps planted paths to their SHA-256.
	Planted map[string]string

	mu    sync.Mutex
	busy  map[string]bool               // VM ids whose snapshots fail as during a migration
	epoch map[string]int                // per VM+disk: consolidations so far
	log   map[string][]connector.Extent // per VM+disk+epoch: areas consolidated
	held  []Held                        // every snapshot made, in order
}

// Held is one snapshot as the simulated hypervisor saw it: from the
// moment CreateSnapshot made it to the moment RemoveSnapshot consolidated
// it (zero while it exists).
type Held struct {
	VM               string // the VM's name
	Snapshot         string // the snapshot's name
	Created, Removed time.Time
}

// Held returns every snapshot made so far, in creation order.
func (s *Sim) Held() []Held {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Held(nil), s.held...)
}

// The credentials vcsim accepts.
const (
	User     = "snapscan"
	Password = "s3cret"
)

// New starts a simulated vCenter (one datacenter DC0, one cluster with
// two powered-on VMs, DC0_C0_RP0_VM0 and DC0_C0_RP0_VM1, each with a
// 32 MiB VMDK holding an ext4 with planted files) on a loopback HTTPS
// port until the test ends.
func New(t testing.TB) *Sim {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	fix := testenv.Fixture(t, "vsphere-disk.sh")
	s := &Sim{disk: filepath.Join(fix, "disk.vmdk"), Planted: map[string]string{},
		busy: map[string]bool{}, epoch: map[string]int{}, log: map[string][]connector.Extent{}}
	b, err := os.ReadFile(filepath.Join(fix, "planted.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			s.Planted[f[1]] = f[0]
		}
	}
	s.Model = simulator.VPX()
	s.Model.Host = 0
	s.Model.Machine = 2
	if err := s.Model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Model.Remove)
	s.Model.Service.Listen = &url.URL{User: url.UserPassword(User, Password)}
	s.Model.Service.RegisterEndpoints = true // vAPI (tags), from vapi/simulator
	s.Model.Service.TLS = new(tls.Config)    // vcsim serves HTTPS with a self-signed certificate
	s.Srv = s.Model.Service.NewServer()
	t.Cleanup(s.Srv.Close)
	s.URL = s.Srv.URL
	m := s.Model.Map()
	ds := m.Any("Datastore").(*simulator.Datastore)
	s.DS = ds.Name
	s.Dir = ds.Info.GetDatastoreInfo().Url
	// Give every VM a real disk and the extension.
	for _, obj := range m.All("VirtualMachine") {
		vm := obj.(*simulator.VirtualMachine)
		for _, dev := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			vd := dev.(*types.VirtualDisk)
			b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			local := s.Local(t, b.FileName)
			if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("cp", s.disk, local).CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			vd.CapacityInBytes = 32 << 20
			vd.CapacityInKB = 32 << 10
		}
		m.Put(&deltaVM{VirtualMachine: vm, s: s})
	}
	return s
}

// Local maps "[ds] path" to the datastore's folder.
func (s *Sim) Local(t testing.TB, dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) || p.Datastore != s.DS {
		t.Fatalf("unexpected datastore path %q", dsPath)
	}
	return filepath.Join(s.Dir, p.Path)
}

// VM returns the simulated VM named name.
func (s *Sim) VM(t testing.TB, name string) *simulator.VirtualMachine {
	t.Helper()
	for _, obj := range s.Model.Map().All("VirtualMachine") {
		if vm, ok := obj.(*deltaVM); ok && vm.Name == name {
			return vm.VirtualMachine
		}
	}
	t.Fatalf("no simulated VM %s", name)
	return nil
}

// Edit runs f on the simulated VM named name under the simulator's lock
// on it, as vcsim's own methods change objects: a test that changes a VM
// while a connector reads its properties does not race with vcsim's
// property collector.
func (s *Sim) Edit(t testing.TB, name string, f func(vm *simulator.VirtualMachine)) {
	t.Helper()
	vm := s.VM(t, name)
	s.Model.Map().WithLock(simulator.NewContext(), vm.Reference(), func() { f(vm) })
}

// Top returns the file the VM's first disk writes now.
func (s *Sim) Top(t testing.TB, name string) string {
	vm := s.VM(t, name)
	disk := object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))[0].(*types.VirtualDisk)
	return disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
}

// GuestWrite writes a pattern into the VM's current top file, as the
// guest would.
func (s *Sim) GuestWrite(t testing.TB, name string, off, n int64, pattern byte) {
	t.Helper()
	local := s.Local(t, s.Top(t, name))
	cmd := exec.Command("qemu-io", "-f", "vmdk", "-c", fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, n), local)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

// deltaVM is a simulated VM with the extension.
type deltaVM struct {
	*simulator.VirtualMachine
	s *Sim
}

func diskKey(vm, key string, epoch int) string { return fmt.Sprintf("%s/%s/%d", vm, key, epoch) }

// CreateSnapshotTask: see the comment at the top of the file.
func (vm *deltaVM) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		s := vm.s
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.busy[vm.Self.Value] {
			return nil, &types.TaskInProgress{}
		}
		snap := &simulator.VirtualMachineSnapshot{}
		snap.Vm = vm.Reference()
		snap.Config = *vm.Config
		ctx.Map.Put(snap)
		tree := types.VirtualMachineSnapshotTree{Snapshot: snap.Self, Vm: snap.Vm, Name: req.Name, Description: req.Description,
			CreateTime: time.Now(), State: vm.Runtime.PowerState, Quiesced: req.Quiesce}
		if vm.Snapshot == nil {
			vm.Snapshot = &types.VirtualMachineSnapshotInfo{}
		}
		if cur := vm.Snapshot.CurrentSnapshot; cur != nil {
			parent := findTree(vm.Snapshot.RootSnapshotList, *cur)
			parent.ChildSnapshotList = append(parent.ChildSnapshotList, tree)
		} else {
			vm.Snapshot.RootSnapshotList = append(vm.Snapshot.RootSnapshotList, tree)
			vm.RootSnapshot = append(vm.RootSnapshot, snap.Self)
		}
		vm.Snapshot.CurrentSnapshot = &snap.Self
		// New device objects for the VM: the snapshot keeps the old ones.
		var devices []types.BaseVirtualDevice
		for _, dev := range vm.Config.Hardware.Device {
			vd, ok := dev.(*types.VirtualDisk)
			if !ok {
				devices = append(devices, dev)
				continue
			}
			old := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			old.ChangeId = fmt.Sprintf("sim-%d", s.epoch[diskKey(vm.Self.Value, fmt.Sprint(vd.Key), 0)])
			var p object.DatastorePath
			p.FromString(old.FileName)
			base := strings.TrimSuffix(filepath.Base(p.Path), ".vmdk")
			deltaName := fmt.Sprintf("%s-%06d.vmdk", strings.SplitN(base, "-0000", 2)[0], len(snapshots(vm.Snapshot.RootSnapshotList)))
			deltaPath := object.DatastorePath{Datastore: p.Datastore, Path: filepath.Join(filepath.Dir(p.Path), deltaName)}
			localOld := filepath.Join(s.Dir, p.Path)
			cmd := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-b", filepath.Base(localOld), "-F", "vmdk", deltaName)
			cmd.Dir = filepath.Dir(localOld)
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, &types.FileFault{File: string(out)}
			}
			nb := *old
			nb.FileName = deltaPath.String()
			nb.Parent = old
			nb.ChangeId = ""
			nd := *vd
			nd.Backing = &nb
			devices = append(devices, &nd)
		}
		cfg := *vm.Config
		cfg.Hardware.Device = devices
		vm.Config = &cfg
		ctx.Map.Put(&deltaSnapshot{VirtualMachineSnapshot: snap, vm: vm})
		s.held = append(s.held, Held{VM: vm.Name, Snapshot: req.Name, Created: tree.CreateTime})
		return snap.Self, nil
	})
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: task.Run(ctx)}}
}

func snapshots(tree []types.VirtualMachineSnapshotTree) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, s := range tree {
		out = append(out, s)
		out = append(out, snapshots(s.ChildSnapshotList)...)
	}
	return out
}

func findTree(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) *types.VirtualMachineSnapshotTree {
	for i := range tree {
		if tree[i].Snapshot == ref {
			return &tree[i]
		}
		if t := findTree(tree[i].ChildSnapshotList, ref); t != nil {
			return t
		}
	}
	return nil
}

// removeTree removes ref from the tree, moving its children up.
func removeTree(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, s := range tree {
		if s.Snapshot == ref {
			out = append(out, s.ChildSnapshotList...)
			continue
		}
		s.ChildSnapshotList = removeTree(s.ChildSnapshotList, ref)
		out = append(out, s)
	}
	return out
}

type deltaSnapshot struct {
	*simulator.VirtualMachineSnapshot
	vm *deltaVM
}

// RemoveSnapshotTask: see the comment at the top of the file. Only the
// newest snapshot (the one whose deltas the VM writes) is consolidated
// here, which is all snapscan makes.
func (snap *deltaSnapshot) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	vm := snap.vm
	task := simulator.CreateTask(vm, "removeSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		s := vm.s
		s.mu.Lock()
		defer s.mu.Unlock()
		if vm.Snapshot == nil || findTree(vm.Snapshot.RootSnapshotList, snap.Self) == nil {
			return nil, &types.ManagedObjectNotFound{Obj: snap.Self}
		}
		tree := *findTree(vm.Snapshot.RootSnapshotList, snap.Self)
		var devices []types.BaseVirtualDevice
		for _, dev := range vm.Config.Hardware.Device {
			vd, ok := dev.(*types.VirtualDisk)
			if !ok {
				devices = append(devices, dev)
				continue
			}
			b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if b.Parent == nil {
				devices = append(devices, dev)
				continue
			}
			var p object.DatastorePath
			p.FromString(b.FileName)
			local := filepath.Join(s.Dir, p.Path)
			areas, err := allocated(local)
			if err != nil {
				return nil, &types.FileFault{File: err.Error()}
			}
			k := diskKey(vm.Self.Value, fmt.Sprint(vd.Key), 0)
			s.epoch[k]++
			s.log[diskKey(vm.Self.Value, fmt.Sprint(vd.Key), s.epoch[k])] = areas
			if out, err := exec.Command("qemu-img", "commit", "-q", "-f", "vmdk", local).CombinedOutput(); err != nil {
				return nil, &types.FileFault{File: string(out)}
			}
			os.Remove(local)
			parent := *b.Parent
			nd := *vd
			nd.Backing = &parent
			devices = append(devices, &nd)
		}
		cfg := *vm.Config
		cfg.Hardware.Device = devices
		vm.Config = &cfg
		vm.Snapshot.RootSnapshotList = removeTree(vm.Snapshot.RootSnapshotList, snap.Self)
		var roots []types.ManagedObjectReference
		for _, r := range vm.Snapshot.RootSnapshotList {
			roots = append(roots, r.Snapshot)
		}
		vm.RootSnapshot = roots
		vm.Snapshot.CurrentSnapshot = nil
		if len(vm.Snapshot.RootSnapshotList) == 0 {
			vm.Snapshot = nil
		}
		ctx.Map.Remove(ctx, snap.Self)
		for i := range s.held {
			if h := &s.held[i]; h.VM == vm.Name && h.Removed.IsZero() && h.Created.Equal(tree.CreateTime) {
				h.Removed = time.Now()
			}
		}
		return nil, nil
	})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: task.Run(ctx)}}
}

// QueryChangedDiskAreas: see the comment at the top of the file.
func (vm *deltaVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	s := vm.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Snapshot == nil {
		body.Fault_ = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "snapshot"})
		return body
	}
	sn, ok := ctx.Map.Get(*req.Snapshot).(*deltaSnapshot)
	if !ok {
		body.Fault_ = simulator.Fault("", &types.ManagedObjectNotFound{Obj: *req.Snapshot})
		return body
	}
	var capacity int64
	var snapEpoch string
	for _, dev := range sn.Config.Hardware.Device {
		if vd, ok := dev.(*types.VirtualDisk); ok && vd.Key == req.DeviceKey {
			capacity = vd.CapacityInBytes
			snapEpoch = vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId
		}
	}
	var from, to int
	if _, err := fmt.Sscanf(req.ChangeId, "sim-%d", &from); err != nil || capacity == 0 {
		body.Fault_ = simulator.Fault("", &types.FileFault{File: "unknown changeId " + req.ChangeId})
		return body
	}
	fmt.Sscanf(snapEpoch, "sim-%d", &to)
	var areas []types.DiskChangeExtent
	for e := from + 1; e <= to; e++ {
		for _, x := range s.log[diskKey(vm.Self.Value, fmt.Sprint(req.DeviceKey), e)] {
			if x.Offset+x.Length > req.StartOffset {
				areas = append(areas, types.DiskChangeExtent{Start: x.Offset, Length: x.Length})
			}
		}
	}
	sort.Slice(areas, func(i, j int) bool { return areas[i].Start < areas[j].Start })
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: types.DiskChangeInfo{StartOffset: req.StartOffset, Length: capacity - req.StartOffset, ChangedArea: areas}}
	return body
}

// allocated lists the ranges a VMDK holds itself (qemu-img map, depth 0).
func allocated(path string) ([]connector.Extent, error) {
	out, err := exec.Command("qemu-img", "map", "--output=json", "-f", "vmdk", path).Output()
	if err != nil {
		return nil, err
	}
	var m []struct {
		Start, Length int64
		Depth         int
		Data          bool
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, err
	}
	var ext []connector.Extent
	for _, e := range m {
		if e.Depth == 0 && e.Data {
			ext = append(ext, connector.Extent{Offset: e.Start, Length: e.Length})
		}
	}
	return ext, nil
}

// Snapshots lists the names of the VM's snapshots.
func (s *Sim) Snapshots(t testing.TB, name string) []string {
	vm := s.VM(t, name)
	s.mu.Lock() // the extension's tasks change the tree holding it
	defer s.mu.Unlock()
	if vm.Snapshot == nil {
		return nil
	}
	var out []string
	for _, sn := range snapshots(vm.Snapshot.RootSnapshotList) {
		out = append(out, sn.Name)
	}
	return out
}

// Snapshot takes a snapshot of the VM named vmName through the API, as
// an administrator would, under a name of their own: the VM's disks then
// run on a delta over the former top, and a later freeze's frozen view
// is a chain (that delta over its parent).
func (s *Sim) Snapshot(t testing.TB, vmName, snapName string) {
	t.Helper()
	ctx := context.Background()
	vc, err := govmomi.NewClient(ctx, &url.URL{Scheme: s.URL.Scheme, Host: s.URL.Host, Path: "/sdk", User: url.UserPassword(User, Password)}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Logout(ctx)
	task, err := object.NewVirtualMachine(vc.Client, s.VM(t, vmName).Self).CreateSnapshot(ctx, snapName, "", false, false)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("snapshot %s of %s: %v", snapName, vmName, err)
	}
}

// SetBusy makes the VM's snapshots fail with TaskInProgress, as during a
// migration, or stops that.
func (s *Sim) SetBusy(id string, busy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy[id] = busy
}

// CAFile writes vcsim's certificate to a PEM file in the test's folder.
func (s *Sim) CAFile(t testing.TB) string {
	t.Helper()
	cert := s.Srv.Certificate()
	if cert == nil {
		t.Fatal("vcsim serves no TLS certificate")
	}
	p := filepath.Join(s.Dir, "..", "snapscan-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
