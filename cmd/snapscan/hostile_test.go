package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestHostileTrees runs "snapscan ls" and "snapscan scan" on the trees of
// issue 10 that made them run forever (an XFS directory entry naming an
// ancestor) or crawl (10,000 nested ext4 directories): both end, the
// cycle is reported as a read error, the levels past the depth bound as a
// limit hit, and what lies outside them is listed and scanned.
func TestHostileTrees(t *testing.T) {
	testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
	dir := testenv.Fixture(t, "hostile-trees.sh")
	rules := filepath.Join(testenv.RepoRoot(), "testdata", "rules", "demo.yar")
	cycle, deep := filepath.Join(dir, "xfs-cycle.img"), filepath.Join(dir, "ext4-deep.img")

	code, out, stderr := runArgs("ls", "--json", cycle)
	var ls struct {
		Files  []struct{ Path string }
		Errors []string
	}
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("ls: exit %d, %v: %s", code, err, stderr)
	}
	if len(ls.Files) != 8 || len(ls.Errors) != 2 || !strings.Contains(ls.Errors[0], "directory cycle") {
		t.Errorf("ls of the XFS cycle: %d files, errors %q", len(ls.Files), ls.Errors)
	}

	type report struct {
		Findings []struct{ Path string }
		Targets  []struct {
			Volumes []struct {
				ID      string
				Skipped map[string]int64
				Errors  []struct{ Path, Reason string }
			}
		}
	}
	for _, tc := range []struct {
		image, reason string
		findings      []string
		skipped       []string
	}{
		{cycle, "read_error", []string{"/a/b/eicar.com", "/other/eicar.com"}, []string{"/a/b/top", "/a/b/up"}},
		{deep, "limit_hit", []string{"/" + strings.Repeat("d/", 10) + "eicar.com"}, []string{"/" + strings.Repeat("d/", 4097)[:2*4097-1]}},
	} {
		_, out, stderr := runArgs("scan", "--json", "--rules", rules, tc.image)
		var r report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("scan %s: %v: %s", tc.image, err, stderr)
		}
		var found, skipped []string
		for _, f := range r.Findings {
			found = append(found, f.Path)
		}
		for _, tg := range r.Targets {
			for _, v := range tg.Volumes {
				for _, e := range v.Errors {
					if e.Reason == tc.reason {
						skipped = append(skipped, e.Path)
					}
				}
			}
		}
		if strings.Join(found, " ") != strings.Join(tc.findings, " ") || strings.Join(skipped, " ") != strings.Join(tc.skipped, " ") {
			t.Errorf("scan %s: findings %q, %s %q; want %q, %q", filepath.Base(tc.image), found, tc.reason, skipped, tc.findings, tc.skipped)
		}
	}
}
