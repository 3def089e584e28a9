package vsphere_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vapi/rest"
	"github.com/vmware/govmomi/vapi/tags"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/connectortest"
	"github.com/snapscan/snapscan/connector/vsphere"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
	"github.com/snapscan/snapscan/snapshot"
)

const vmName = "DC0_C0_RP0_VM0"

func dial(t *testing.T, s *vspheretest.Sim, mounted bool) *vsphere.Connector {
	t.Helper()
	c := dialTB(t, s, mounted)
	t.Cleanup(func() { c.Close() })
	return c
}

// dialTB connects; the caller closes.
func dialTB(t testing.TB, s *vspheretest.Sim, mounted bool) *vsphere.Connector {
	t.Helper()
	cfg := vsphere.Config{URL: s.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: s.CAFile(t), Timeout: 20 * time.Second}
	if mounted {
		cfg.Mounts = map[string]string{s.DS: s.Dir}
	}
	c, err := vsphere.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func listed(t testing.TB, c connector.Connector, name string) connector.VM {
	t.Helper()
	vms, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm
		}
	}
	t.Fatalf("no VM %s in %+v", name, vms)
	return connector.VM{}
}

// scanFrozen opens a frozen disk's top layer through the connector's Files
// (a local mount or HTTP range reads), as the appliance will, and checks
// the planted files.
func scanFrozen(t *testing.T, s *vspheretest.Sim, c connector.Connector, fd connector.FrozenDisk) {
	t.Helper()
	top := fd.Top()
	if top.Format != "vmdk" {
		t.Fatalf("frozen top %+v", top)
	}
	f, err := c.Files().Open(context.Background(), top.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The declared format; no related file may be opened ("" as name).
	disk, err := snapshot.New(f, f.Size(), "", &snapshot.Options{Format: top.Format})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	v, err := disk.Volume("disk")
	if err != nil || v.Err != nil {
		t.Fatalf("volume: %v %v", err, v.Err)
	}
	for path, sum := range s.Planted {
		b, err := fs.ReadFile(v.FS, path)
		if err != nil {
			t.Fatalf("planted %s: %v", path, err)
		}
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
			t.Errorf("planted %s differs", path)
		}
	}
}

func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	disk, err := snapshot.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	b := make([]byte, n)
	if _, err := disk.Image().ReadAt(b, off); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func TestList(t *testing.T) {
	s := vspheretest.New(t)
	ctx := context.Background()
	// Tag the VM through vCenter's tagging API (vcsim's vapi simulator).
	vc, err := govmomi.NewClient(ctx, &url.URL{Scheme: s.URL.Scheme, Host: s.URL.Host, Path: "/sdk", User: url.UserPassword(vspheretest.User, vspheretest.Password)}, true)
	if err != nil {
		t.Fatal(err)
	}
	rc := rest.NewClient(vc.Client)
	if err := rc.Login(ctx, url.UserPassword(vspheretest.User, vspheretest.Password)); err != nil {
		t.Fatal(err)
	}
	tm := tags.NewManager(rc)
	cat, err := tm.CreateCategory(ctx, &tags.Category{Name: "cluster", Cardinality: "MULTIPLE"})
	if err != nil {
		t.Fatal(err)
	}
	tag, err := tm.CreateTag(ctx, &tags.Tag{Name: "pacemaker-a", CategoryID: cat})
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.AttachTag(ctx, tag, s.VM(t, vmName).Reference()); err != nil {
		t.Fatal(err)
	}
	cfg := vsphere.Config{URL: s.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: s.CAFile(t), Tags: true}
	c, err := vsphere.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vm := listed(t, c, vmName)
	if strings.Join(vm.Tags, ",") != "cluster/pacemaker-a" || len(listed(t, c, "DC0_C0_RP0_VM1").Tags) != 0 {
		t.Fatalf("tags = %v", vm.Tags)
	}
	if vm.Power != connector.PoweredOn || vm.Folder != "/DC0/vm" || vm.ID == "" || len(vm.Disks) != 1 {
		t.Fatalf("VM = %+v", vm)
	}
	d := vm.Disks[0]
	if d.Datastore != s.DS || d.Size != 32<<20 || len(d.Layers) != 1 || d.Layers[0].Format != "vmdk" || !strings.HasPrefix(d.Layers[0].Path, "["+s.DS+"] ") || d.Independent {
		t.Fatalf("disk = %+v", d)
	}
}

func TestFreezeScanRelease(t *testing.T) {
	for _, mounted := range []bool{true, false} {
		name := map[bool]string{true: "mounted datastore", false: "HTTP range reads"}[mounted]
		t.Run(name, func(t *testing.T) {
			s := vspheretest.New(t)
			c := dial(t, s, mounted)
			ctx := context.Background()
			vm := listed(t, c, vmName)
			base := vm.Disks[0].Top().Path
			start := time.Now()
			f, err := c.Freeze(ctx, vm.ID, connector.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if f.InPlace || len(f.Disks) != 1 || f.Disks[0].Top().Path != base {
				t.Fatalf("freeze = %+v, want the former top %s frozen", f, base)
			}
			if s.Top(t, vmName) == base {
				t.Fatal("the VM still writes to the frozen file")
			}
			sum0 := sha(t, s.Local(t, base))
			// The guest writes while the frozen view is read.
			s.GuestWrite(t, vmName, 30<<20, 64<<10, 0x5a)
			scanFrozen(t, s, c, f.Disks[0])
			if sha(t, s.Local(t, base)) != sum0 {
				t.Fatal("the frozen file changed while frozen")
			}
			r, err := c.Release(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: freeze (API) %v, release %v, freeze to released %v", name, f.Stun, r.Duration, time.Since(start))
			after := listed(t, c, vmName)
			if len(after.Disks[0].Layers) != 1 || after.Disks[0].Top().Path != base {
				t.Fatalf("disk after release %+v, want %s again", after.Disks[0], base)
			}
			if got := readAt(t, s.Local(t, base), 30<<20, 64<<10); !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 64<<10)) {
				t.Fatal("the guest's write was not consolidated into the base disk")
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Local(t, base)), "*-0000*.vmdk")); len(left) != 0 {
				t.Fatalf("delta disks left: %v", left)
			}
			if _, err := c.Release(ctx, f); err != nil {
				t.Fatalf("second release: %v", err)
			}
		})
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestChanges(t *testing.T) {
	s := vspheretest.New(t)
	c := dial(t, s, true)
	ctx := context.Background()
	svm := s.VM(t, vmName)
	svm.Config.ChangeTrackingEnabled = types.NewBool(true)
	vm := listed(t, c, vmName)
	if !vm.Disks[0].ChangeTracking {
		t.Fatalf("CBT enabled, disk = %+v", vm.Disks[0])
	}
	f1, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	s.GuestWrite(t, vmName, 20<<20, 128<<10, 0x11)
	if _, err := c.Release(ctx, f1); err != nil {
		t.Fatal(err)
	}
	f2, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx, f2)
	since := f1.Disks[0].Checkpoint
	if since == "" || f2.Disks[0].Checkpoint == since {
		t.Fatalf("changeIds %q then %q", since, f2.Disks[0].Checkpoint)
	}
	ext, err := c.Changes(ctx, f2, f2.Disks[0].Disk.Key, since)
	if err != nil {
		t.Fatal(err)
	}
	covered := int64(0)
	for _, x := range ext {
		lo, hi := max(x.Offset, 20<<20), min(x.Offset+x.Length, 20<<20+128<<10)
		if hi > lo {
			covered += hi - lo
		}
	}
	if covered != 128<<10 {
		t.Fatalf("changed areas %+v do not cover the write at 20 MiB", ext)
	}
	if _, err := c.Changes(ctx, f2, f2.Disks[0].Disk.Key, ""); !errors.Is(err, connector.ErrNoTracking) {
		t.Fatalf("changes with no changeId: %v", err)
	}
}

func TestFaults(t *testing.T) {
	s := vspheretest.New(t)
	ctx := context.Background()
	t.Run("wrong credentials", func(t *testing.T) {
		_, err := vsphere.Dial(ctx, vsphere.Config{URL: s.URL.String(), Username: vspheretest.User, Password: "wrong", CAFile: s.CAFile(t)})
		if !errors.Is(err, connector.ErrAuth) || !connector.IsPermanent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("certificate not trusted", func(t *testing.T) {
		_, err := vsphere.Dial(ctx, vsphere.Config{URL: s.URL.String(), Username: vspheretest.User, Password: vspheretest.Password})
		if !errors.Is(err, connector.ErrRefused) || !connector.IsPermanent(err) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err = %v, want TLS verification to refuse vcsim's self-signed certificate", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		_, err = vsphere.Dial(ctx, vsphere.Config{URL: "https://" + addr + "/sdk", Username: vspheretest.User, Password: vspheretest.Password, Timeout: 2 * time.Second})
		if !errors.Is(err, connector.ErrUnreachable) || connector.IsPermanent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	c := dial(t, s, true)
	vm := listed(t, c, vmName)
	t.Run("independent disk", func(t *testing.T) {
		other := listed(t, c, "DC0_C0_RP0_VM1")
		sv := s.VM(t, "DC0_C0_RP0_VM1")
		b := sv.Config.Hardware.Device
		for _, dev := range b {
			if vd, ok := dev.(*types.VirtualDisk); ok {
				vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).DiskMode = string(types.VirtualDiskModeIndependent_persistent)
			}
		}
		_, err := c.Freeze(ctx, other.ID, connector.Options{})
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.Kind != connector.Refused || ce.Disk == "" || !ce.Permanent() || !strings.Contains(err.Error(), "independent") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("VM migrating", func(t *testing.T) {
		s.SetBusy(vm.ID, true)
		defer s.SetBusy(vm.ID, false)
		_, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if !errors.Is(err, connector.ErrRefused) || connector.IsPermanent(err) || !strings.Contains(err.Error(), vmName) {
			t.Fatalf("err = %v, want a transient refusal naming the VM", err)
		}
	})
	t.Run("snapshot removed behind our back", func(t *testing.T) {
		f, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		stale, err := c.Stale(ctx, time.Now().Add(time.Second))
		if err != nil || len(stale) != 1 {
			t.Fatalf("stale %v %v", stale, err)
		}
		// An administrator removes it (the simulator's consolidation).
		other := dial(t, s, false)
		if _, err := other.ReleaseStale(ctx, stale[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Release(ctx, f); err != nil {
			t.Fatalf("release of a snapshot already removed: %v", err)
		}
	})
	t.Run("datastore not mounted", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "not-mounted")
		cc, err := vsphere.Dial(ctx, vsphere.Config{URL: s.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: s.CAFile(t),
			Mounts: map[string]string{s.DS: missing}})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		f, err := cc.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Release(ctx, f)
		_, err = cc.Files().Open(ctx, f.Disks[0].Top().Path)
		if !errors.Is(err, connector.ErrUnreachable) || !strings.Contains(err.Error(), s.DS) || !strings.Contains(err.Error(), "mounted") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no such VM", func(t *testing.T) {
		_, err := c.Freeze(ctx, "vm-424242", connector.Options{})
		if !errors.Is(err, connector.ErrNotFound) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestConformance(t *testing.T) {
	s := vspheretest.New(t)
	c := dial(t, s, false)
	// Power one VM off, for the in-place case.
	s.VM(t, "DC0_C0_RP0_VM1").Runtime.PowerState = types.VirtualMachinePowerStatePoweredOff
	connectortest.Suite{
		Connector: c,
		Running:   vmName,
		Off:       "DC0_C0_RP0_VM1",
		Formats:   []string{"vmdk"},
		Leftovers: func(t *testing.T, name string) []string {
			var left []string
			files, _ := filepath.Glob(filepath.Join(s.Dir, name, "*-0000*.vmdk"))
			left = append(left, files...)
			for _, sn := range s.Snapshots(t, name) {
				left = append(left, "snapshot "+sn)
			}
			return left
		},
	}.Run(t)
}

// TestInventory: a refresh reports new VMs, VMs whose disks changed (a
// snapshot someone else took makes a delta disk the new top) and VMs
// that are gone or no longer selected.
func TestInventory(t *testing.T) {
	s := vspheretest.New(t)
	c := dial(t, s, false)
	ctx := context.Background()
	inv, err := connector.NewInventory(c, connector.Selection{All: true, Exclude: []string{"*VM1"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := inv.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.VMs) != 1 || len(d.New) != 1 || d.New[0].Name != vmName {
		t.Fatalf("first refresh: %+v", d)
	}
	vm := d.VMs[0]
	// An administrator's snapshot: the VM writes to a delta disk now.
	f, err := c.Freeze(ctx, vm.ID, connector.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err = inv.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Changed) != 1 || len(d.New) != 0 || len(d.Changed[0].Disks[0].Layers) != 2 {
		t.Fatalf("after the snapshot: %+v", d)
	}
	if _, err := c.Release(ctx, f); err != nil {
		t.Fatal(err)
	}
	if got, ok := inv.VM(vmName); !ok || got.ID != vm.ID {
		t.Fatalf("lookup by name: %+v %v", got, ok)
	}
	vc, err := govmomi.NewClient(ctx, &url.URL{Scheme: s.URL.Scheme, Host: s.URL.Host, Path: "/sdk", User: url.UserPassword(vspheretest.User, vspheretest.Password)}, true)
	if err != nil {
		t.Fatal(err)
	}
	gone := object.NewVirtualMachine(vc.Client, s.VM(t, vmName).Reference())
	if task, err := gone.PowerOff(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatal("power off", err)
	}
	if task, err := gone.Destroy(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatal("destroy", err)
	}
	d, err = inv.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Gone) != 1 || d.Gone[0].ID != vm.ID || len(d.VMs) != 0 {
		t.Fatalf("after removal: %+v", d)
	}
}
