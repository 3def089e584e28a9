package appliance

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/vsphere"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
	"github.com/snapscan/snapscan/queue"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vcApp starts an appliance with a vSphere connector "vc" over sim
// selecting both cluster VMs, with the extra connector settings given.
func vcApp(t *testing.T, sim *vspheretest.Sim, extra string) *testApp {
	return vcAppOver(t, sim, true, extra, nil)
}

// vcAppOver is vcApp with the datastore mounted (its folder configured
// as a datastore and in the connector's mounts) or read over vcsim's
// HTTP /folder interface (a datastore with connector: vc).
func vcAppOver(t *testing.T, sim *vspheretest.Sim, mounted bool, extra string, edit func(*Config)) *testApp {
	t.Helper()
	dir := t.TempDir()
	user, pass := filepath.Join(dir, "vc.user"), filepath.Join(dir, "vc.pass")
	os.WriteFile(user, []byte(vspheretest.User+"\n"), 0o600)
	os.WriteFile(pass, []byte(vspheretest.Password+"\n"), 0o600)
	rule := filepath.Join(dir, "vsphere.yar")
	os.WriteFile(rule, []byte(`rule planted_vsphere { strings: $a = "snapscan planted file on vSphere" condition: $a }`+"\n"), 0o644)
	mounts := fmt.Sprintf("mounts: {%s: %q}", sim.DS, sim.Dir)
	if !mounted {
		mounts = "mounts: {}"
	}
	yaml := fmt.Sprintf(`
queue: {max_scans: 4, backoff_base: 100ms, backoff_max: 200ms}
connectors:
  - name: vc
    type: vsphere
    url: %q
    username_file: %q
    password_file: %q
    ca_file: %q
    %s
    select: {names: ["DC0_C0_RP0_*"]}
    refresh: 1s
%s`, sim.URL.String(), user, pass, sim.CAFile(t), mounts, extra)
	ta := startApp(t, appOpts{yaml: yaml, events: true, edit: func(c *Config) {
		ds := DatastoreConfig{Name: sim.DS, Path: sim.Dir, MaxScans: 4}
		if !mounted {
			ds.Path, ds.Connector = "", "vc"
		}
		c.Datastores = append(c.Datastores, ds)
		if edit != nil {
			edit(c)
		}
	}})
	ta.installRules(1, rule)
	return ta
}

// vcIDs maps the sim's VM names to their inventory ids.
func vcIDs(t *testing.T, sim *vspheretest.Sim) map[string]string {
	c, err := vsphere.Dial(context.Background(), vsphere.Config{URL: sim.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: sim.CAFile(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vms, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, vm := range vms {
		out[vm.Name] = "vc/" + vm.ID
	}
	return out
}

// submitVM submits a scan by VM name only and returns the answer.
func (ta *testApp) submitVM(name string) (int, ScanView) {
	var s ScanView
	code, err := ta.call("POST", "/v1/scans", testToken, map[string]any{"vm": name}, &s)
	if err != nil {
		ta.t.Fatal(err)
	}
	return code, s
}

// TestConnectorGroups: both VMs of one group are scheduled at once with
// slots for both, and the hypervisor's own record of its snapshots shows
// that they were never frozen at the same time. The freezes and their
// stun times are in the API (per scan, per VM); a VM is then scanned by
// name alone (its disks from the connector); and the faults of one VM (an
// independent disk: permanent; a migration: retried) are errors on that
// VM's job only, while the other VM is scanned.
func TestConnectorGroups(t *testing.T) {
	defer func(d time.Duration) { groupBusyRetry = d }(groupBusyRetry)
	groupBusyRetry = 100 * time.Millisecond
	sim := vspheretest.New(t)
	ids := vcIDs(t, sim)
	vm0, vm1 := ids["DC0_C0_RP0_VM0"], ids["DC0_C0_RP0_VM1"]
	ta := vcApp(t, sim, `    schedule: {new_vms: true}
    groups: [{name: pacemaker, names: ["DC0_C0_RP0_*"]}]
`)
	ctx := context.Background()
	eventually(t, "both VMs scanned", 90*time.Second, func() bool {
		for _, id := range []string{vm0, vm1} {
			if v, err := ta.a.results.VM(ctx, id); err != nil || v.LastJob == 0 {
				return false
			}
		}
		return true
	})
	eventually(t, "both freezes released", 30*time.Second, func() bool {
		h := sim.Held()
		return len(h) == 2 && !h[0].Removed.IsZero() && !h[1].Removed.IsZero()
	})
	h := sim.Held()
	if h[0].VM == h[1].VM {
		t.Fatalf("one VM frozen twice: %+v", h)
	}
	if h[1].Created.Before(h[0].Removed) {
		t.Fatalf("two members of one group frozen at once: %s %s-%s and %s %s-%s", h[0].VM, h[0].Created.Format(time.StampMicro),
			h[0].Removed.Format(time.StampMicro), h[1].VM, h[1].Created.Format(time.StampMicro), h[1].Removed.Format(time.StampMicro))
	}

	// The freezes in the API: per VM and on the scan's record.
	for _, id := range []string{vm0, vm1} {
		var out struct {
			Freezes []results.Freeze `json:"freezes"`
		}
		// The release is recorded once the hypervisor's call returned.
		eventually(t, "the release recorded", 10*time.Second, func() bool {
			if code, err := ta.call("GET", "/v1/vms/"+url.PathEscape(id)+"/freezes", testToken, nil, &out); code != http.StatusOK {
				t.Fatalf("freezes of %s: %d %v %s", id, code, err, ta.lastError)
			}
			return len(out.Freezes) > 0 && !out.Freezes[0].Released.IsZero()
		})
		if len(out.Freezes) != 1 {
			t.Fatalf("freezes of %s: %+v", id, out.Freezes)
		}
		f := out.Freezes[0]
		if !strings.HasPrefix(f.ID, connector.NamePrefix) || f.Connector != "vc" || f.JobID == 0 || f.FreezeStun <= 0 || f.ReleaseStun <= 0 ||
			f.Released.IsZero() || f.Held < f.ReleaseTook || f.Error != "" {
			t.Errorf("freeze of %s: %+v", id, f)
		}
		var sv ScanView
		if code, _ := ta.call("GET", fmt.Sprintf("/v1/scans/%d", f.JobID), testToken, nil, &sv); code != http.StatusOK || len(sv.Freezes) != 1 || sv.Freezes[0].ID != f.ID {
			t.Errorf("scan %d: %d, freezes %+v", f.JobID, code, sv.Freezes)
		}
		// And in the scan's printable report, which the console links.
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/reports/scans/%d", ta.base, f.JobID), nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := ta.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), "Hypervisor snapshots") || !strings.Contains(string(page), f.ID) {
			t.Errorf("the report of scan %d shows no freeze %s:\n%s", f.JobID, f.ID, page)
		}
	}
	// No series of /metrics names a VM: per-VM figures are the API's.
	req, _ := http.NewRequest("GET", ta.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, "#") && (strings.Contains(l, "DC0_C0_RP0") || strings.Contains(l, strings.TrimPrefix(vm0, "vc/")+`"`)) {
			t.Errorf("a metric names a VM: %s", l)
		}
	}
	if code, _ := ta.call("GET", "/v1/vms/nope/freezes", testToken, nil, nil); code != http.StatusNotFound {
		t.Errorf("freezes of an unknown VM: %d", code)
	}

	// Submitted by name: the connector's disks, frozen and scanned.
	code, sv := ta.submitVM("DC0_C0_RP0_VM0")
	if code != http.StatusAccepted || sv.VM != vm0 || len(sv.Disks) != 1 || !strings.HasPrefix(sv.Disks[0].Path, connectorDisk) || sv.Disks[0].Datastore != sim.DS {
		t.Fatalf("submit by name: %d %+v %s", code, sv, ta.lastError)
	}
	byName := ta.waitJobs(sv.ID)[0]
	if byName.State != queue.Done {
		t.Fatalf("scan by name: %s %s", byName.State, byName.Error)
	}
	if res, err := ta.a.results.Scan(ctx, sv.ID); err != nil || res.Status != results.StatusFindings || len(res.Disks) != 1 || res.Disks[0].Datastore != sim.DS || !strings.HasSuffix(res.Disks[0].Path, ".vmdk") {
		t.Fatalf("scan by name: %+v %v", res, err)
	}
	if code, _ := ta.submitVM("no-such-vm"); code != http.StatusBadRequest || !strings.Contains(ta.lastError, "no connector lists the VM") {
		t.Errorf("an unknown VM without disks: %d %q", code, ta.lastError)
	}
	// By the inventory id as well.
	if code, sv := ta.submitVM(vm1); code != http.StatusAccepted || sv.VM != vm1 {
		t.Errorf("submit by id: %d %+v", code, sv)
	} else {
		ta.waitJobs(sv.ID)
	}

	// Faults: VM1's disk made independent (no snapshot can freeze it) is
	// a permanent error on VM1's job; VM0 migrating is retried until the
	// migration ends; VM0's scan completes meanwhile.
	sim.Edit(t, "DC0_C0_RP0_VM1", func(vm *simulator.VirtualMachine) {
		for _, dev := range vm.Config.Hardware.Device {
			if vd, ok := dev.(*types.VirtualDisk); ok {
				vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).DiskMode = string(types.VirtualDiskModeIndependent_persistent)
			}
		}
	})
	eventually(t, "the inventory to see the independent disk", 10*time.Second, func() bool {
		h := ta.a.hypervisors[0]
		v, ok := h.invVM(strings.TrimPrefix(vm1, "vc/"))
		return ok && len(v.Disks) == 1 && v.Disks[0].Independent
	})
	sim.SetBusy(strings.TrimPrefix(vm0, "vc/"), true)
	_, bad := ta.submitVM("DC0_C0_RP0_VM1")
	_, busy := ta.submitVM("DC0_C0_RP0_VM0")
	badJob := ta.waitJobs(bad.ID)[0]
	if badJob.State != queue.Failed || badJob.Attempts != 1 || !strings.Contains(badJob.Error, "independent") || !strings.Contains(badJob.Error, "DC0_C0_RP0_VM1") {
		t.Errorf("independent disk: %s after %d attempts: %s", badJob.State, badJob.Attempts, badJob.Error)
	}
	// The VM that could not be frozen is told as vm_unreadable (issue
	// 14.4), not as a failed scan.
	eventually(t, "a vm_unreadable event for the VM that could not be frozen", 10*time.Second, func() bool {
		for _, line := range strings.Split(ta.events.String(), "\n") {
			if strings.Contains(line, `"vm_unreadable"`) && strings.Contains(line, vm1) && strings.Contains(line, "independent") {
				return true
			}
		}
		return false
	})
	eventually(t, "the migrating VM's job retried", 30*time.Second, func() bool {
		j, _ := ta.a.q.Job(ctx, busy.ID)
		return j.Attempts >= 2 && j.State == queue.Queued
	})
	j, _ := ta.a.q.Job(ctx, busy.ID)
	if !strings.Contains(j.Error, "DC0_C0_RP0_VM0") {
		t.Errorf("migrating VM's error: %q", j.Error)
	}
	sim.SetBusy(strings.TrimPrefix(vm0, "vc/"), false)
	if got := ta.waitJobs(busy.ID)[0]; got.State != queue.Done {
		t.Errorf("after the migration: %s %s", got.State, got.Error)
	}
	if left := sim.Snapshots(t, "DC0_C0_RP0_VM0"); len(left) != 0 {
		t.Errorf("snapshots left: %v", left)
	}
}

// TestConnectorWindow: outside the freeze windows a scan waits in the
// queue, due when the window opens, without a snapshot and without its
// runs counting against max_attempts; a connector whose credentials are
// refused makes a submit by name that no other connector answers wait
// ("has not listed its VMs yet") while the other connector's VMs scan.
func TestConnectorWindow(t *testing.T) {
	sim := vspheretest.New(t)
	ids := vcIDs(t, sim)
	now := time.Now()
	from, to := now.Add(2*time.Hour), now.Add(3*time.Hour)
	win := fmt.Sprintf("%02d:%02d-%02d:%02d", from.Hour(), from.Minute(), to.Hour(), to.Minute())
	dir := t.TempDir()
	badUser, badPass := filepath.Join(dir, "bad.user"), filepath.Join(dir, "bad.pass")
	os.WriteFile(badUser, []byte(vspheretest.User+"\n"), 0o600)
	os.WriteFile(badPass, []byte("wrong\n"), 0o600)
	ta := vcApp(t, sim, fmt.Sprintf(`    freeze_windows: [%q]
  - name: bad
    type: vsphere
    url: %q
    username_file: %q
    password_file: %q
    ca_file: %q
    select: {all: true}
    refresh: 1s
`, win, sim.URL.String(), badUser, badPass, sim.CAFile(t)))
	eventually(t, "the inventory", 30*time.Second, func() bool {
		_, ok := ta.a.hypervisors[0].invVM(strings.TrimPrefix(ids["DC0_C0_RP0_VM0"], "vc/"))
		return ok
	})
	code, sv := ta.submitVM("DC0_C0_RP0_VM0")
	if code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, ta.lastError)
	}
	ctx := context.Background()
	var j queue.Job
	eventually(t, "the job deferred", 30*time.Second, func() bool {
		j, _ = ta.a.q.Job(ctx, sv.ID)
		return j.State == queue.Queued && strings.Contains(j.Error, "outside the freeze windows")
	})
	time.Sleep(500 * time.Millisecond)
	j, _ = ta.a.q.Job(ctx, sv.ID)
	opens := time.Date(from.Year(), from.Month(), from.Day(), from.Hour(), from.Minute(), 0, 0, time.Local)
	if j.State != queue.Queued || j.Attempts != 0 || !j.RetryAt.Equal(opens) {
		t.Errorf("deferred job: %s, %d attempts, due %v (want %v): %s", j.State, j.Attempts, j.RetryAt, opens, j.Error)
	}
	if h := sim.Held(); len(h) != 0 {
		t.Errorf("a freeze outside the window: %+v", h)
	}
	// The refused connector: unknown names wait for it.
	if code, _ := ta.submitVM("not-on-vc"); code != http.StatusServiceUnavailable || !strings.Contains(ta.lastError, "bad") {
		t.Errorf("a name only the refused connector might know: %d %q", code, ta.lastError)
	}
}

// TestConnectorHTTPDatastore: with the datastore not mounted here and
// configured as read through the connector, a VM is frozen and its
// frozen delta chain (the delta over its parent VMDK) is read over vcsim's
// HTTP /folder interface with range reads, through the datastore's budget
// (its read counters move), and the planted file is found; a submit of a
// path on that datastore is refused with the way to do it. Two other
// connectors fail meanwhile (credentials refused, endpoint down) without
// stopping it.
func TestConnectorHTTPDatastore(t *testing.T) {
	sim := vspheretest.New(t)
	ids := vcIDs(t, sim)
	// An administrator's snapshot: the freeze's frozen view is then the
	// administrator's delta over the base disk, a chain of two files.
	sim.Snapshot(t, "DC0_C0_RP0_VM0", "before-upgrade")
	// Beside it, a connector whose password is refused and one whose
	// endpoint does not answer: their refreshes fail, vc's VMs still scan.
	dir := t.TempDir()
	user, pass := filepath.Join(dir, "u"), filepath.Join(dir, "p")
	os.WriteFile(user, []byte(vspheretest.User+"\n"), 0o600)
	os.WriteFile(pass, []byte("wrong\n"), 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	ta := vcAppOver(t, sim, false, fmt.Sprintf(`  - {name: badauth, type: vsphere, url: %q, username_file: %q, password_file: %q, ca_file: %q, select: {all: true}, refresh: 1s}
  - {name: down, type: vsphere, url: "https://%s/sdk", username_file: %q, password_file: %q, select: {all: true}, refresh: 1s, timeout: 1s}
`, sim.URL.String(), user, pass, sim.CAFile(t), dead, user, pass), nil)
	eventually(t, "the inventory", 30*time.Second, func() bool {
		_, ok := ta.a.hypervisors[0].invVM(strings.TrimPrefix(ids["DC0_C0_RP0_VM0"], "vc/"))
		return ok
	})
	code, sv := ta.submitVM("DC0_C0_RP0_VM0")
	if code != http.StatusAccepted || len(sv.Disks) != 1 || sv.Disks[0].Datastore != sim.DS {
		t.Fatalf("submit: %d %+v %s", code, sv, ta.lastError)
	}
	j := ta.waitJobs(sv.ID)[0]
	if j.State != queue.Done {
		t.Fatalf("scan over HTTP: %s %s", j.State, j.Error)
	}
	res, err := ta.a.results.Scan(context.Background(), sv.ID)
	if err != nil || res.Status != results.StatusFindings || res.BytesRead <= 0 {
		t.Fatalf("result %+v %v", res, err)
	}
	// The frozen chain: the snapshot's delta and its parent, by datastore path.
	d := res.Disks[0]
	if !strings.HasPrefix(d.Path, "["+sim.DS+"] ") || len(d.Layers) != 1 || !strings.HasPrefix(d.Layers[0], "["+sim.DS+"] ") {
		t.Errorf("frozen disk %+v", d)
	}
	if n := ta.metric(`snapscan_datastore_read_bytes_total{datastore="` + sim.DS + `"}`); n < float64(res.BytesRead) {
		t.Errorf("datastore budget saw %v bytes, the scan read %d", n, res.BytesRead)
	}
	eventually(t, "the freeze released", 10*time.Second, func() bool {
		left := sim.Snapshots(t, "DC0_C0_RP0_VM0")
		return len(left) == 1 && left[0] == "before-upgrade"
	})
	if code, _ := ta.submitVM("elsewhere"); code != http.StatusServiceUnavailable || !strings.Contains(ta.lastError, "badauth, down") {
		t.Errorf("a name the failing connectors might know: %d %q", code, ta.lastError)
	}
	body := map[string]any{"vm": "x", "disks": []map[string]string{{"datastore": sim.DS, "path": "DC0_C0_RP0_VM0/disk.vmdk"}}}
	if code, _ := ta.call("POST", "/v1/scans", testToken, body, nil); code != http.StatusBadRequest || !strings.Contains(ta.lastError, "submit the VM by name") {
		t.Errorf("a path on a connector datastore: %d %q", code, ta.lastError)
	}
}

// TestConnectorRestart: what the schedule decided survives a restart.
// After both VMs were scanned as new, the appliance stops; meanwhile an
// administrator snapshots one VM (its disk's chain changes). The
// restarted appliance, on the same database, scans that VM for its
// changed disks and does not scan the other again as new.
func TestConnectorRestart(t *testing.T) {
	sim := vspheretest.New(t)
	ids := vcIDs(t, sim)
	vm0, vm1 := ids["DC0_C0_RP0_VM0"], ids["DC0_C0_RP0_VM1"]
	const sched = "    schedule: {new_vms: true, disk_changes: true}\n"
	ta := vcApp(t, sim, sched)
	ctx := context.Background()
	scanned := func(ta *testApp, id string, after int64) bool {
		v, err := ta.a.results.VM(ctx, id)
		return err == nil && v.LastJob > after
	}
	eventually(t, "both VMs scanned as new", 60*time.Second, func() bool { return scanned(ta, vm0, 0) && scanned(ta, vm1, 0) })
	eventually(t, "both released", 30*time.Second, func() bool {
		return len(sim.Snapshots(t, "DC0_C0_RP0_VM0"))+len(sim.Snapshots(t, "DC0_C0_RP0_VM1")) == 0 && len(ta.a.q.Metrics().Running) == 0
	})
	last0, _ := ta.a.results.VM(ctx, vm0)
	last1, _ := ta.a.results.VM(ctx, vm1)
	db := ta.cfg.Database.Path
	ta.stop()

	sim.Snapshot(t, "DC0_C0_RP0_VM1", "while-down")
	// The same database; another appliance name, since this test's
	// restart comes with a new signature state (a new instance id), which
	// the register would refuse under the old name for 30 s.
	tb := vcAppOver(t, sim, true, sched, func(c *Config) { c.Database.Path, c.Name = db, "restarted" })
	eventually(t, "the changed VM scanned again", 60*time.Second, func() bool { return scanned(tb, vm1, last1.LastJob) })
	j, err := tb.a.q.Job(ctx, mustVM(t, tb, vm1).LastJob)
	if err != nil || j.Reason != "disks changed" {
		t.Errorf("the changed VM's job: %+v %v", j, err)
	}
	time.Sleep(2500 * time.Millisecond) // two more refreshes
	jobs, err := tb.a.q.List(ctx, queue.ListOptions{VM: vm0})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].ID != last0.LastJob {
		t.Errorf("the unchanged VM was scheduled again after the restart: %+v", jobs)
	}
}

func mustVM(t *testing.T, ta *testApp, id string) results.VM {
	t.Helper()
	v, err := ta.a.results.VM(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
