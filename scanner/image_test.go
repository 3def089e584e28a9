package scanner_test

import (
	"context"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// TestImageParity is the parity bar of issue 4 on disk images: the parity
// tree made into ext4, FAT32, NTFS and XFS volumes (by
// testdata/scanner-images.sh, with real tools) in several image formats.
// snapscan's (path, rule) matches on each volume equal the yara tool's on
// the source files, given the external variables the volume records
// (the tree has no /etc/passwd, so owner is "" everywhere; TestOwnerNames
// covers the names).
func TestImageParity(t *testing.T) {
	testenv.NeedTools(t, "yara", "qemu-img", "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g", "mkfs.xfs")
	testenv.NeedRoot(t) // the fixture mounts NTFS through FUSE
	tree, _ := fixture(t)
	rules, dir := parityRules(t)
	imgs := testenv.Fixture(t, "scanner-images.sh", tree)
	src := filepath.Join(imgs, "src")
	sc := scanner.New(rules, scanner.Options{})

	tests := []struct{ image, fs string }{
		{"ext4.raw", "ext4"}, {"ext4.qcow2", "ext4"}, {"ext4.vmdk", "ext4"},
		{"fat.raw", "fat32"}, {"fat.vhdx", "fat32"},
		{"ntfs.raw", "ntfs"}, {"ntfs.vhd", "ntfs"},
		{"xfs.raw", "xfs"}, {"xfs.qcow2", "xfs"},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			d, err := snapshot.Open(filepath.Join(imgs, tt.image), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			v, err := d.Volume("p1")
			if err != nil || v.FS == nil || v.FileSystem != tt.fs {
				t.Fatalf("volume p1: %v %+v", err, v)
			}
			rep, err := sc.Scan(context.Background(), scanner.Target{Name: tt.image,
				Volumes: []scanner.Volume{{ID: v.ID, FileSystem: v.FileSystem, FS: v.FS}}})
			if err != nil {
				t.Fatal(err)
			}
			got := pairs(rep, func(p string) bool { return !strings.Contains(p, "!") })

			var want []string
			err = fs.WalkDir(v.FS, ".", func(p string, e fs.DirEntry, err error) error {
				if err != nil || !e.Type().IsRegular() {
					return err
				}
				info, err := e.Info()
				if err != nil {
					return err
				}
				owner := ""
				if o, ok := info.Sys().(vfs.Owner); ok && strings.Trim(o.Owner(), "0123456789") != "" {
					owner = o.Owner() // a name the file system records
				}
				if info.Size() == 0 {
					want = append(want, "/"+p+" planted.yar:empty_file") // yara cannot map empty files: TestEmptyFile
					return nil
				}
				want = append(want, yaraCLI(t, dir, src, "/"+p, owner)...)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("snapscan on %s and yara on the source files differ\n-snapscan +yara:\n%s", tt.image, diff(got, want))
			}
			if len(want) < 40 {
				t.Errorf("only %d matches from yara", len(want))
			}
			for _, vr := range rep.Volumes {
				for _, e := range vr.Errors {
					if !strings.HasPrefix(e.Path, "/hostile/") { // hostile archives fail by design
						t.Errorf("unexpected file error: %v", e)
					}
				}
			}
		})
	}
}
