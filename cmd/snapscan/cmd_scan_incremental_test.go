package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestScanIncremental: `snapscan scan CLONE BASE` scans the named base
// first and takes the clone's untouched files from it; --no-incremental
// reads everything; the findings are the same, and the JSON says per
// volume what came from the base and what was read.
func TestScanIncremental(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "qemu-io", "sgdisk", "mkfs.ext4", "tune2fs", "losetup")
	testenv.NeedRoot(t)
	dir := testenv.Fixture(t, "incremental.sh")
	rules := filepath.Join(testenv.RepoRoot(), "scanner", "incremental", "testdata", "content.yar")
	clone, base := filepath.Join(dir, "files.qcow2"), filepath.Join(dir, "base.qcow2")
	scan := func(extra ...string) scanOutput {
		t.Helper()
		args := append([]string{"scan", "--json", "--rules", rules, "--disk-format", "qcow2", "--rules-cache", "off"}, extra...)
		code, stdout, stderr := runArgs(append(args, clone, base)...)
		if code != exitFindings {
			t.Fatalf("exit %d, stderr %s", code, stderr)
		}
		var out scanOutput
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	inc, full := scan(), scan("--no-incremental")
	found := func(o scanOutput) (out []string) {
		for _, f := range o.Findings {
			out = append(out, f.Target+" "+f.Path+" "+f.SHA256)
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(found(inc), found(full)) {
		t.Fatalf("findings differ:\n%v\n%v", found(inc), found(full))
	}
	if inc.Targets[0].Target != clone || inc.Targets[0].Incremental == nil || inc.Targets[0].Incremental.Base != base {
		t.Fatalf("clone: %+v", inc.Targets[0].Incremental)
	}
	v, fv := inc.Targets[0].Volumes[0], full.Targets[0].Volumes[0]
	if v.Reused < v.Files/2 || fv.Reused != 0 || v.Files != fv.Files || v.ReadBytes == 0 || v.ReadBytes*2 > fv.ReadBytes {
		t.Fatalf("clone volume: incremental %+v, full %+v", v, fv)
	}
	r, fr := inc.Targets[0].Read, full.Targets[0].Read
	if r == nil || fr == nil || len(r.Files) != 2 || r.Bytes*2 > fr.Bytes {
		t.Fatalf("datastore reads: incremental %+v, full %+v", r, fr)
	}
	if inc.Stats.Reused != v.Reused || inc.Stats.ReadBytes != r.Bytes+inc.Targets[1].Read.Bytes {
		t.Fatalf("stats %+v", inc.Stats)
	}
}
