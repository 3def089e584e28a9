package appliance

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestIncrementalScans: the appliance records what each scan saw (in
// scanner.records_dir), so that a linked clone scanned after its golden
// image reads only its own bytes; incremental: false reads it in full.
// The findings are the same either way.
func TestIncrementalScans(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "qemu-io", "sgdisk", "mkfs.ext4", "tune2fs", "losetup")
	testenv.NeedRoot(t)
	fx := testenv.Fixture(t, "incremental.sh")
	rules := filepath.Join(testenv.RepoRoot(), "scanner", "incremental", "testdata", "content.yar")
	type outcome struct {
		read     int64
		findings []string
	}
	run := func(incremental bool) (base, clone outcome, records int) {
		app := startApp(t, appOpts{edit: func(c *Config) {
			c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: fx})
			c.Scanner.Incremental = &incremental
		}})
		app.installRules(1, rules)
		scan := func(vm, path string) outcome {
			code, s, msg := app.submitDisks(vm, map[string]any{"datastore": "ds-inc", "path": path, "format": "qcow2"})
			if code != http.StatusAccepted {
				t.Fatalf("submit %s: %d %s", path, code, msg)
			}
			app.waitJobs(s.ID)
			var v ScanView
			if code, err := app.call("GET", fmt.Sprintf("/v1/scans/%d", s.ID), testToken, nil, &v); code != http.StatusOK || v.Result == nil {
				t.Fatalf("scan %s: %d %v %+v", path, code, err, v)
			}
			o := outcome{read: v.Result.BytesRead}
			for _, f := range v.Findings {
				o.findings = append(o.findings, f.Path+" "+f.Rule+" "+f.SHA256)
			}
			slices.Sort(o.findings)
			return o
		}
		base, clone = scan("golden", "base.qcow2"), scan("vm1", "files.qcow2")
		ents, _ := os.ReadDir(filepath.Join(app.cfg.Scanner.RecordsDir, "records"))
		return base, clone, len(ents)
	}
	ib, ic, recs := run(true)
	fb, fc, frecs := run(false)
	if !slices.Equal(ib.findings, fb.findings) || !slices.Equal(ic.findings, fc.findings) || len(ic.findings) == 0 {
		t.Fatalf("findings differ:\nincremental %v\nfull %v", ic.findings, fc.findings)
	}
	if recs != 2 || frecs != 0 {
		t.Errorf("records kept: %d incremental, %d with incremental: false", recs, frecs)
	}
	t.Logf("clone read %d bytes incremental, %d in full (base %d)", ic.read, fc.read, fb.read)
	if ic.read == 0 || ic.read*2 > fc.read {
		t.Errorf("clone read %d bytes incremental, %d in full", ic.read, fc.read)
	}
}
