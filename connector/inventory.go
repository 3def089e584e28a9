package connector

import (
	"context"
	"fmt"
	"sync"
)

// Inventory keeps the selected VMs of one connector and what changed
// between two looks: the feed for schedules ("new VMs soon after they
// appear", "a VM after its disks change"). It is safe for concurrent use.
type Inventory struct {
	c   Connector
	sel Selection

	mu   sync.Mutex
	vms  map[string]VM
	seen bool
}

// NewInventory watches the VMs of c that sel selects.
func NewInventory(c Connector, sel Selection) (*Inventory, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	return &Inventory{c: c, sel: sel, vms: map[string]VM{}}, nil
}

// Diff is what one Refresh found.
type Diff struct {
	// VMs are the selected VMs now, in the connector's order.
	VMs []VM
	// New are VMs not there at the previous refresh (all of them at the
	// first), Changed those whose disks changed (added, removed, another
	// chain or size, another datastore), Gone those no longer listed or
	// selected.
	New, Changed, Gone []VM
}

// Refresh lists the VMs and compares them with the previous refresh.
// Frozen VMs show their freeze's overlays in their chains: compare
// Refresh results only while no freeze of snapscan's is held, or expect
// a change that the release undoes.
func (inv *Inventory) Refresh(ctx context.Context) (Diff, error) {
	all, err := inv.c.List(ctx)
	if err != nil {
		return Diff{}, err
	}
	var d Diff
	now := map[string]VM{}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for _, vm := range all {
		if !inv.sel.Match(vm) {
			continue
		}
		now[vm.ID] = vm
		d.VMs = append(d.VMs, vm)
		old, ok := inv.vms[vm.ID]
		switch {
		case !ok:
			d.New = append(d.New, vm)
		case disksKey(old) != disksKey(vm):
			d.Changed = append(d.Changed, vm)
		}
	}
	for id, vm := range inv.vms {
		if _, ok := now[id]; !ok {
			d.Gone = append(d.Gone, vm)
		}
	}
	inv.vms = now
	inv.seen = true
	return d, nil
}

// VM returns the VM with the given ID or name as last refreshed.
func (inv *Inventory) VM(idOrName string) (VM, bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if vm, ok := inv.vms[idOrName]; ok {
		return vm, true
	}
	for _, vm := range inv.vms {
		if vm.Name == idOrName {
			return vm, true
		}
	}
	return VM{}, false
}

func disksKey(vm VM) string {
	return fmt.Sprint(vm.Disks)
}
