package scanner_test

import (
	"context"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/snapscan/snapscan/scanner"
)

// uid is the Sys value of a file on a Linux file system: the owner as the
// uid in text, as snapshot/ext4 and snapshot/xfs give it.
type uid string

func (u uid) Owner() string { return string(u) }

// TestOwnerNames checks that owner is the guest's user name, looked up in
// the /etc/passwd of the target's root volume, for files on every volume.
func TestOwnerNames(t *testing.T) {
	r, err := scanner.CompileSources([]scanner.Source{{Name: "o", Data: []byte(`
rule owned_by_root  { condition: owner == "root" }
rule owned_by_alice { condition: owner == "alice" }
rule owner_empty    { condition: owner == "" }`)}})
	if err != nil {
		t.Fatal(err)
	}
	root := fstest.MapFS{
		"etc/passwd": {Data: []byte("root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\n"), Sys: uid("0")},
		"bin/tool":   {Data: []byte("x"), Sys: uid("0")},
		"srv/orphan": {Data: []byte("x"), Sys: uid("4242")}, // a uid the guest does not name
	}
	home := fstest.MapFS{"alice/notes": {Data: []byte("x"), Sys: uid("1000")}}
	rep, err := scanner.New(r, scanner.Options{}).Scan(context.Background(), scanner.Target{Name: "vm", Volumes: []scanner.Volume{
		{ID: "p1", FS: root}, {ID: "p2", FS: home},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range rep.Findings {
		for _, m := range f.Matches {
			got = append(got, f.Volume+f.Path+" "+m.Rule)
		}
	}
	slices.Sort(got)
	want := []string{"p1/bin/tool owned_by_root", "p1/etc/passwd owned_by_root", "p1/srv/orphan owner_empty", "p2/alice/notes owned_by_alice"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
