// Package connectortest is the conformance suite every connector.Connector
// passes: the contract written on the interface, checked against the real
// hypervisor (or simulator) each implementation's tests start.
package connectortest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
)

// Suite describes the connector under test.
type Suite struct {
	// Connector is connected to the hypervisor under test.
	Connector connector.Connector
	// Running names a VM that is powered on and can be frozen; Off, if
	// not "", one that is powered off.
	Running, Off string
	// Leftovers lists what a freeze of the VM named may have left (files,
	// snapshots); it must be empty whenever no freeze is held.
	Leftovers func(t *testing.T, vm string) []string
	// Formats lists the layer formats the hypervisor may declare.
	Formats []string
}

// Run runs the suite.
func (s Suite) Run(t *testing.T) {
	ctx := context.Background()
	c := s.Connector
	vms, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]connector.VM{}
	ids := map[string]bool{}
	for _, vm := range vms {
		if vm.ID == "" || vm.Name == "" || ids[vm.ID] {
			t.Errorf("VM %+v: an ID and a name are required, IDs unique", vm)
		}
		ids[vm.ID] = true
		byName[vm.Name] = vm
		for _, d := range vm.Disks {
			if d.Key == "" || d.Datastore == "" || len(d.Layers) == 0 {
				t.Errorf("VM %s disk %+v: key, datastore and layers are required", vm.Name, d)
			}
			for _, l := range d.Layers {
				if !contains(s.Formats, l.Format) {
					t.Errorf("VM %s disk %s layer %s: format %q is not one of %v", vm.Name, d.Key, l.Path, l.Format, s.Formats)
				}
			}
		}
	}
	run, ok := byName[s.Running]
	if !ok || run.Power != connector.PoweredOn {
		t.Fatalf("VM %q is not listed as powered on: %+v", s.Running, run)
	}
	check := func(t *testing.T, vm string) {
		t.Helper()
		if s.Leftovers == nil {
			return
		}
		if left := s.Leftovers(t, vm); len(left) != 0 {
			t.Fatalf("left behind on %s: %v", vm, left)
		}
	}

	t.Run("freeze and release", func(t *testing.T) {
		f, err := c.Freeze(ctx, run.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if f.InPlace || f.ID == "" || len(f.Disks) != len(run.Disks) {
			c.Release(ctx, f)
			t.Fatalf("freeze of a running VM = %+v", f)
		}
		for i, fd := range f.Disks {
			if fd.Disk.Key != run.Disks[i].Key || len(fd.Layers) == 0 {
				t.Errorf("frozen disk %d = %+v", i, fd)
			}
			for _, l := range fd.Layers {
				file, err := c.Files().Open(ctx, l.Path)
				if err != nil {
					t.Errorf("open frozen layer: %v", err)
					continue
				}
				var b [512]byte
				if _, err := file.ReadAt(b[:], 0); err != nil || file.Size() <= 0 {
					t.Errorf("read frozen layer %s: size %d, %v", l.Path, file.Size(), err)
				}
				file.Close()
			}
		}
		if _, err := c.Freeze(ctx, run.ID, connector.Options{}); !errors.Is(err, connector.ErrRefused) || connector.IsPermanent(err) {
			t.Errorf("second freeze while frozen: %v, want a transient refusal", err)
		}
		if _, err := c.Release(ctx, f); err != nil {
			t.Fatal(err)
		}
		check(t, run.Name)
		if _, err := c.Release(ctx, f); err != nil {
			t.Fatalf("second release: %v", err)
		}
		after := vmNamed(t, c, run.Name)
		if fmt.Sprint(after.Disks) != fmt.Sprint(run.Disks) {
			t.Errorf("disks after release %+v, before %+v", after.Disks, run.Disks)
		}
	})
	t.Run("stale", func(t *testing.T) {
		f, err := c.Freeze(ctx, run.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		old, err := c.Stale(ctx, f.Taken.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range old {
			if s.ID == f.ID {
				t.Errorf("a freeze of now is stale before an hour ago: %+v", s)
			}
		}
		stale, err := c.Stale(ctx, time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, s := range stale {
			if s.ID == f.ID {
				found = true
				if _, err := c.ReleaseStale(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !found {
			c.Release(ctx, f)
			t.Fatalf("Stale did not list freeze %s: %+v", f.ID, stale)
		}
		check(t, run.Name)
		if _, err := c.Release(ctx, f); err != nil {
			t.Fatalf("release after ReleaseStale: %v", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, err := c.Freeze(ctx, "snapscan-no-such-vm", connector.Options{})
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.Kind != connector.NotFound || !ce.Permanent() {
			t.Fatalf("freeze of a missing VM: %v", err)
		}
	})
	if s.Off != "" {
		t.Run("powered off", func(t *testing.T) {
			off := vmNamed(t, c, s.Off)
			f, err := c.Freeze(ctx, off.ID, connector.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !f.InPlace || f.ID != "" || fmt.Sprint(f.Disks[0].Layers) != fmt.Sprint(off.Disks[0].Layers) {
				t.Fatalf("freeze of a VM that is off = %+v", f)
			}
			if _, err := c.Release(ctx, f); err != nil {
				t.Fatal(err)
			}
			check(t, off.Name)
		})
	}
}

func vmNamed(t *testing.T, c connector.Connector, name string) connector.VM {
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
	t.Fatalf("no VM %s", name)
	return connector.VM{}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
