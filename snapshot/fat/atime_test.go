package fat

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// TestVolatile checks that serving does not depend on Extents.Volatile
// (the last access date of each entry, which a guest's read rewrites; the
// kernel here has no vfat to show it): with every object's Volatile bytes
// rewritten, each file system serves the same listing, times and bytes,
// and the rewritten bytes are the entry's access date field.
func TestVolatile(t *testing.T) {
	dir := fixture(t)
	for _, name := range []string{"fat12.img", "fat32.img"} {
		t.Run(name, func(t *testing.T) {
			img, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			serve := func(b []byte, each func(p string, x vfs.Extents)) string {
				f, err := New(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				fsys := vfs.New(f, name)
				var out bytes.Buffer
				err = vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					info, err := d.Info()
					if err != nil {
						return err
					}
					fmt.Fprintf(&out, "%s %v %d %v\n", p, info.Mode(), info.Size(), info.ModTime())
					if d.Type().IsRegular() {
						data, err := fs.ReadFile(fsys, p)
						if err != nil {
							return err
						}
						fmt.Fprintf(&out, "%x\n", data)
					}
					if each != nil {
						x, err := fsys.Extents(p)
						if err != nil {
							return err
						}
						each(p, x)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return out.String()
			}
			changed := append([]byte(nil), img...)
			n := 0
			want := serve(img, func(p string, x vfs.Extents) {
				if p == "." {
					return
				}
				if len(x.Volatile) != 1 || x.Volatile[0].Len != 2 {
					t.Fatalf("%s: Volatile %+v, want the 2-byte access date", p, x.Volatile)
				}
				v := x.Volatile[0]
				short := vfs.Range{} // the entries (long names, then the short one) holding it
				for _, m := range x.Meta {
					if m.Off <= v.Off && v.End() <= m.End() {
						short = m
					}
				}
				if (v.Off-short.Off)%32 != 0x12 || v.End() > short.End() {
					t.Fatalf("%s: Volatile %+v is not byte 0x12 of a directory entry (%+v)", p, v, short)
				}
				changed[v.Off] ^= 0x5a
				changed[v.Off+1] ^= 0x21
				n++
			})
			if n == 0 {
				t.Fatal("no object to check")
			}
			if got := serve(changed, nil); got != want {
				t.Errorf("with the access dates rewritten the file system serves\n%s\nwant\n%s", got, want)
			}
		})
	}
}
