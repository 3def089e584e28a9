package appliance

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/vsphere"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// TestConnectorTracked is issue 16.4 through the appliance: a vSphere VM
// with CBT whose disk is one sparse VMDK (no base layer to recognise) is
// scanned with track_changes; the guest then overwrites a planted file's
// block (random.bin now holds EICAR's text); the next scan asks
// QueryChangedDiskAreas since the first scan's changeId (the extended
// vcsim answers from the blocks consolidated) and reads only the files
// the changed areas touch: its findings are a full scan's of the same
// disk (random.bin is found), the two untouched files are reused. When
// the last record names a changeId the hypervisor no longer knows (CBT
// reset), the next scan is full, counted as outcome "unknown".
func TestConnectorTracked(t *testing.T) {
	sim := vspheretest.New(t)
	ctx := context.Background()
	dir := t.TempDir()
	user, pass := filepath.Join(dir, "vc.user"), filepath.Join(dir, "vc.pass")
	os.WriteFile(user, []byte(vspheretest.User+"\n"), 0o600)
	os.WriteFile(pass, []byte(vspheretest.Password+"\n"), 0o600)
	const name = "DC0_C0_RP0_VM0"
	svm := sim.VM(t, name)
	svm.Config.ChangeTrackingEnabled = types.NewBool(true)
	vmID := svm.Self.Value

	rule := filepath.Join(dir, "tracked.yar")
	os.WriteFile(rule, []byte(`rule planted_vsphere { strings: $a = "snapscan planted file on vSphere" condition: $a }
rule eicar { strings: $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $a }
`), 0o644)
	yaml := fmt.Sprintf(`
connectors:
  - name: vc
    type: vsphere
    url: %q
    username_file: %q
    password_file: %q
    ca_file: %q
    mounts: {%s: %q}
    select: {names: [%q]}
    refresh: 1s
    track_changes: true
`, sim.URL.String(), user, pass, sim.CAFile(t), sim.DS, sim.Dir, name)
	ta := startApp(t, appOpts{yaml: yaml, edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: sim.DS, Path: sim.Dir, MaxScans: 1})
	}})
	ta.installRules(1, rule)

	type outcome struct {
		read     int64
		findings []string
	}
	scan := func() outcome {
		var s ScanView
		eventually(t, "the VM listed and submitted", 30*time.Second, func() bool {
			code, _ := ta.call("POST", "/v1/scans", testToken, map[string]any{"vm": "vc/" + vmID}, &s)
			return code == http.StatusAccepted
		})
		ta.waitJobs(s.ID)
		var v ScanView
		if code, err := ta.call("GET", fmt.Sprintf("/v1/scans/%d", s.ID), testToken, nil, &v); code != http.StatusOK || v.Result == nil {
			t.Fatalf("scan: %d %v %+v", code, err, v)
		}
		o := outcome{read: v.Result.BytesRead}
		for _, f := range v.Findings {
			o.findings = append(o.findings, f.Path+" "+f.Rule+" "+f.SHA256)
		}
		slices.Sort(o.findings)
		eventually(t, "the freeze released", 30*time.Second, func() bool { return len(sim.Snapshots(t, name)) == 0 })
		return o
	}
	first := scan()
	if len(first.findings) != 2 {
		t.Fatalf("first scan findings: %v", first.findings)
	}

	top := sim.Local(t, sim.Top(t, name))
	d, err := snapshot.Open(top, &snapshot.Options{Format: "vmdk"})
	if err != nil {
		t.Fatal(err)
	}
	v := d.Volumes[0]
	x, err := vfs.FileExtents(v.FS, "planted/random.bin")
	d.Close()
	if err != nil || len(x.Data) == 0 || x.Data[0].Kind != vfs.Allocated {
		t.Fatalf("planted/random.bin: %+v %v", x, err)
	}
	// The extended vcsim tracks the blocks a snapshot's delta consolidates
	// (see vspheretest): the write goes into the delta of a freeze made
	// meanwhile by someone else, as a guest writes under a backup's
	// snapshot.
	direct, err := vsphere.Dial(ctx, vsphere.Config{URL: sim.URL.String(), Username: vspheretest.User, Password: vspheretest.Password, CAFile: sim.CAFile(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	f, err := direct.Freeze(ctx, vmID, connector.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The guest writes EICAR's text into the last block of random.bin
	// (away from the small files: the changed areas are 64 KiB grains).
	fileOff := int64(200000-1024) &^ 511 // random.bin is 200000 bytes
	at := int64(-1)
	for _, e := range x.Data {
		if e.Kind == vfs.Allocated && fileOff >= e.Logical && fileOff+512 <= e.Logical+e.Len {
			at = v.Offset + e.Off + fileOff - e.Logical
		}
	}
	if at < 0 {
		t.Fatalf("random.bin: no extent holds bytes %d+512: %+v", fileOff, x)
	}
	block := make([]byte, 512)
	copy(block, "EICAR-STANDARD-ANTIVIRUS-TEST-FILE")
	src := filepath.Join(dir, "block")
	os.WriteFile(src, block, 0o644)
	if out, err := exec.Command("qemu-io", "-f", "vmdk", "-c", fmt.Sprintf("write -s %s %d 512", src, at), sim.Local(t, sim.Top(t, name))).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if _, err := direct.Release(ctx, f); err != nil {
		t.Fatal(err)
	}

	second := scan()
	// A full scan of the disk as it is now (the VM is released and idle).
	r, err := scanner.Compile(rule)
	if err != nil {
		t.Fatal(err)
	}
	d, err = snapshot.Open(top, &snapshot.Options{Format: "vmdk"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rep, err := scanner.New(r, scanner.Options{Workers: 1}).Scan(ctx, scanner.DiskTarget("full", d))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range rep.Findings {
		for _, m := range f.Matches {
			want = append(want, f.Path+" "+m.Rule+" "+f.SHA256)
		}
	}
	slices.Sort(want)
	if !slices.Equal(second.findings, want) || len(want) != 3 {
		t.Fatalf("second scan findings %v, a full scan's %v", second.findings, want)
	}
	reused := ta.metric("snapscan_files_reused_total")
	t.Logf("first scan read %d bytes, the second (CBT) %d; %v files reused", first.read, second.read, reused)
	if reused != 2 || ta.metric(`snapscan_tracked_disks_total{outcome="changes"}`) != 1 || ta.metric(`snapscan_tracked_disks_total{outcome="first"}`) != 1 {
		t.Errorf("files reused %v (want hello.txt and eicar.com), tracked disks %v with changes, %v first", reused,
			ta.metric(`snapscan_tracked_disks_total{outcome="changes"}`), ta.metric(`snapscan_tracked_disks_total{outcome="first"}`))
	}
	if second.read >= first.read {
		t.Errorf("the second scan read %d bytes, the first %d", second.read, first.read)
	}

	// The VM disk's last record names a changeId the hypervisor does not
	// know (CBT was reset): the next scan is full, counted as unknown,
	// and its findings are still a full scan's.
	key := ta.a.scanner(ta.a.recv.Current()).ReuseKey()
	vms, err := direct.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var vmDisk string
	for _, vm := range vms {
		if vm.ID == vmID {
			vmDisk = "vc/" + vmID + "/" + vm.Disks[0].Key
		}
	}
	if cp, err := incremental.NewSession(ta.a.records, key, nil).Checkpoint(ctx, vmDisk); err != nil || cp != "sim-2" {
		t.Fatalf("the VM disk %s was last recorded at %q (%v), want sim-2", vmDisk, cp, err)
	}
	if err := ta.a.records.Put(ctx, &incremental.Record{Identity: "reset", Rules: key, Path: incremental.TrackedPath(vmDisk),
		Time: time.Now(), Checkpoint: "52 de c0 d9-reset/1", DiskSize: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	third := scan()
	if !slices.Equal(third.findings, want) {
		t.Errorf("after a CBT reset, findings %v, want %v", third.findings, want)
	}
	if n := ta.metric(`snapscan_tracked_disks_total{outcome="unknown"}`); n != 1 || ta.metric("snapscan_files_reused_total") != reused {
		t.Errorf("after a CBT reset: %v disks counted unknown, %v files reused in all (was %v)", n, ta.metric("snapscan_files_reused_total"), reused)
	}
}
