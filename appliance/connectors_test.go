package appliance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/vsphere"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
)

// TestConnectorVSphere: an appliance with a vSphere connector over vcsim
// (extended with real delta disks, see vspheretest) releases the stale
// freeze a crashed run left, finds the selected VM, schedules it as new,
// freezes it, scans the frozen VMDK through the datastore's budget (the
// planted file is found), releases the freeze, and keeps the VM in the
// inventory with its last scan; the stun of the freeze and the release
// are in the metrics.
func TestConnectorVSphere(t *testing.T) {
	sim := vspheretest.New(t)
	ctx := context.Background()
	dir := t.TempDir()
	user, pass := filepath.Join(dir, "vc.user"), filepath.Join(dir, "vc.pass")
	os.WriteFile(user, []byte(vspheretest.User+"\n"), 0o600)
	os.WriteFile(pass, []byte(vspheretest.Password+"\n"), 0o600)
	ca := sim.CAFile(t)

	// A crashed run's freeze of the selected VM, older than stale_after.
	direct, err := vsphere.Dial(ctx, vsphere.Config{URL: sim.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	var vm0 connector.VM
	vms, err := direct.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.Name == "DC0_C0_RP0_VM0" {
			vm0 = vm
		}
	}
	if _, err := direct.Freeze(ctx, vm0.ID, connector.Options{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)

	rule := filepath.Join(dir, "vsphere.yar")
	os.WriteFile(rule, []byte(`rule planted_vsphere { strings: $a = "snapscan planted file on vSphere" condition: $a }`+"\n"), 0o644)
	yaml := fmt.Sprintf(`
connectors:
  - name: vc
    type: vsphere
    url: %q
    username_file: %q
    password_file: %q
    ca_file: %q
    mounts: {%s: %q}
    select: {names: ["DC0_C0_RP0_VM0"]}
    refresh: 1s
    stale_after: 1s
    schedule: {new_vms: true}
    groups: [{name: pair, names: ["DC0_C0_RP0_*"]}]
`, sim.URL.String(), user, pass, ca, sim.DS, sim.Dir)
	ta := startApp(t, appOpts{yaml: yaml, edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: sim.DS, Path: sim.Dir, MaxScans: 1})
	}})
	ta.installRules(1, rule)
	id := "vc/" + vm0.ID
	var got results.VM
	eventually(t, "the connector's VM scanned", 60*time.Second, func() bool {
		v, err := ta.a.results.VM(ctx, id)
		got = v
		return err == nil && v.LastJob != 0
	})
	if got.Name != vm0.Name || got.Source != "vc" || got.LastStatus != results.StatusFindings || got.LastFindings < 1 || len(got.Disks) != 1 || got.Disks[0].Datastore != sim.DS {
		t.Fatalf("inventory entry %+v", got)
	}
	// The release follows the stored result.
	eventually(t, "the freeze released", 30*time.Second, func() bool { return len(sim.Snapshots(t, vm0.Name)) == 0 })
	if left, _ := filepath.Glob(filepath.Join(sim.Dir, vm0.Name, "*-0000*.vmdk")); len(left) != 0 {
		t.Fatalf("delta disks left: %v", left)
	}
	if _, err := ta.a.results.VM(ctx, "vc/"+vms[1].ID); err == nil && vms[1].Name != vm0.Name {
		t.Fatalf("an unselected VM is in the inventory")
	}
	if n := ta.metric(`snapscan_stale_freezes_released_total{connector="vc"}`); n != 1 {
		t.Errorf("stale freezes released = %v, want 1", n)
	}
	for _, op := range []string{"freeze", "release"} {
		if n := ta.metric(`snapscan_freeze_stun_seconds_count{connector="vc",op="` + op + `"}`); n < 1 {
			t.Errorf("no %s stun measured", op)
		}
	}
	if !strings.HasPrefix(got.Disks[0].Path, "["+sim.DS+"]") {
		t.Errorf("inventory disk path %q", got.Disks[0].Path)
	}
}
