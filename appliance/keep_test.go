package appliance

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
)

// TestKeepRecorded checks what the release of a freeze is told to keep: a
// VM disk recorded at checkpoint cp1 whose scan at cp2 was not recorded
// keeps cp1 (its next scan counts the changes from there), one recorded
// at this freeze's checkpoint keeps nothing more, and an untracked disk
// is left alone. The records are the appliance's own store.
func TestKeepRecorded(t *testing.T) {
	fx, rules := incrementalFixture(t)
	ta := startApp(t, appOpts{})
	ta.installRules(1, rules)
	a := ta.a
	ctx := context.Background()
	if a.records == nil {
		t.Fatal("the appliance keeps no records")
	}
	sc := a.scanner(a.recv.Current())
	const vmDisk = "lab/4f1c-test/vda"

	d, err := snapshot.Open(filepath.Join(fx, "base.qcow2"), &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	plan := incremental.NewSession(a.records, sc.ReuseKey(), a.log).PlanChanged(ctx, d, incremental.Changes{Disk: vmDisk, At: "cp1"})
	rep, err := sc.Scan(ctx, plan.Target("base"))
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Finish(ctx, rep); err != nil {
		t.Fatal(err)
	}

	h := &hypervisor{log: a.log}
	track := func(at string) *diskTrack { return &diskTrack{disk: vmDisk, at: at} }
	freeze := func(cps ...string) *connector.Freeze {
		f := &connector.Freeze{ID: "snapscan-test"}
		for _, cp := range cps {
			f.Disks = append(f.Disks, connector.FrozenDisk{Checkpoint: cp})
		}
		return f
	}

	f := freeze("cp2", "")
	a.keepRecorded(ctx, h, f, []*diskTrack{track("cp2"), nil})
	if got := f.Disks[0].Keep; !slices.Equal(got, []string{"cp1"}) {
		t.Errorf("a scan at cp2 not recorded: the release keeps %q, want cp1", got)
	}
	if got := f.Disks[1].Keep; got != nil {
		t.Errorf("an untracked disk: the release keeps %q", got)
	}
	f = freeze("cp1")
	a.keepRecorded(ctx, h, f, []*diskTrack{track("cp1")})
	if got := f.Disks[0].Keep; got != nil {
		t.Errorf("a scan recorded at the freeze's own checkpoint: the release keeps %q as well", got)
	}
	f = freeze("cp9")
	a.keepRecorded(ctx, h, f, []*diskTrack{{disk: "lab/never-scanned/vda", at: "cp9"}})
	if got := f.Disks[0].Keep; got != nil {
		t.Errorf("a VM disk never recorded: the release keeps %q", got)
	}
}
