package vsphere_test

import (
	"crypto/tls"
	"encoding/json"
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

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/internal/testenv"
)

// The vSphere simulator (vcsim) in govmomi v0.52.0 records a snapshot but
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
// "Guest writes" are made with qemu-io into the VM's current delta.

type sim struct {
	model *simulator.Model
	srv   *simulator.Server
	ds    string // the datastore's name
	dir   string // its local folder
	url   *url.URL
	disk  string // the fixture VMDK
	// planted maps planted paths to their SHA-256.
	planted map[string]string

	mu    sync.Mutex
	busy  map[string]bool               // VM ids whose snapshots fail as during a migration
	epoch map[string]int                // per VM+disk: consolidations so far
	log   map[string][]connector.Extent // per VM+disk+epoch: areas consolidated
}

const (
	simUser = "snapscan"
	simPass = "s3cret"
)

func newSim(t *testing.T) *sim { return newSimTB(t) }

func newSimTB(t testing.TB) *sim {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	fix := testenv.Fixture(t, "vsphere-disk.sh")
	s := &sim{disk: filepath.Join(fix, "disk.vmdk"), planted: map[string]string{},
		busy: map[string]bool{}, epoch: map[string]int{}, log: map[string][]connector.Extent{}}
	b, err := os.ReadFile(filepath.Join(fix, "planted.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			s.planted[f[1]] = f[0]
		}
	}
	s.model = simulator.VPX()
	s.model.Host = 0
	s.model.Machine = 2
	if err := s.model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.model.Remove)
	s.model.Service.Listen = &url.URL{User: url.UserPassword(simUser, simPass)}
	s.model.Service.RegisterEndpoints = true // vAPI (tags), from vapi/simulator
	s.model.Service.TLS = new(tls.Config)    // vcsim serves HTTPS with a self-signed certificate
	s.srv = s.model.Service.NewServer()
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL
	m := s.model.Map()
	ds := m.Any("Datastore").(*simulator.Datastore)
	s.ds = ds.Name
	s.dir = ds.Info.GetDatastoreInfo().Url
	// Give every VM a real disk and the extension.
	for _, obj := range m.All("VirtualMachine") {
		vm := obj.(*simulator.VirtualMachine)
		for _, dev := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			vd := dev.(*types.VirtualDisk)
			b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			local := s.local(t, b.FileName)
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

// local maps "[ds] path" to the datastore's folder.
func (s *sim) local(t testing.TB, dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) || p.Datastore != s.ds {
		t.Fatalf("unexpected datastore path %q", dsPath)
	}
	return filepath.Join(s.dir, p.Path)
}

// vm returns the simulated VM named name.
func (s *sim) vm(t testing.TB, name string) *deltaVM {
	t.Helper()
	for _, obj := range s.model.Map().All("VirtualMachine") {
		if vm, ok := obj.(*deltaVM); ok && vm.Name == name {
			return vm
		}
	}
	t.Fatalf("no simulated VM %s", name)
	return nil
}

// top returns the file the VM's first disk writes now.
func (s *sim) top(t testing.TB, name string) string {
	vm := s.vm(t, name)
	disk := object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))[0].(*types.VirtualDisk)
	return disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
}

// guestWrite writes a pattern into the VM's current top file, as the
// guest would.
func (s *sim) guestWrite(t testing.TB, name string, off, n int64, pattern byte) {
	t.Helper()
	local := s.local(t, s.top(t, name))
	cmd := exec.Command("qemu-io", "-f", "vmdk", "-c", fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, n), local)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

type deltaVM struct {
	*simulator.VirtualMachine
	s *sim
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
			deltaName := fmt.Sprintf("%s-%06d.vmdk", strings.SplitN(base, "-0000", 2)[0], len(ours(vm.Snapshot.RootSnapshotList)))
			deltaPath := object.DatastorePath{Datastore: p.Datastore, Path: filepath.Join(filepath.Dir(p.Path), deltaName)}
			localOld := filepath.Join(s.dir, p.Path)
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
		return snap.Self, nil
	})
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: task.Run(ctx)}}
}

func ours(tree []types.VirtualMachineSnapshotTree) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, s := range tree {
		out = append(out, s)
		out = append(out, ours(s.ChildSnapshotList)...)
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
			local := filepath.Join(s.dir, p.Path)
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
