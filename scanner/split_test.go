package scanner_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/snapscan/snapscan/scanner"
)

// TestPathSplit: identical files at different paths take the content-only
// part of their verdict from the first one scanned and are scanned again
// by the path-reading sources alone; every verdict, its order and its
// strings included, equals a scan of every file by the whole set.
func TestPathSplit(t *testing.T) {
	rs, err := scanner.CompileSources([]scanner.Source{
		{Name: "a_content.yar", Data: []byte(`rule Content { strings: $a = "MARKER-ONE" condition: $a }
rule Count { strings: $b = "MARKER-TWO" condition: #b > 1 }`)},
		{Name: "b_paths.yar", Data: []byte(`rule Named { strings: $a = "MARKER-ONE" condition: $a and filename == "evil.bin" }
rule InTmp { condition: filepath contains "/tmp/" }`)},
		{Name: "c_content.yar", Data: []byte(`rule Later { strings: $c = "MARKER-TWO" condition: $c }`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := rs.PathSplit(); n != 1 {
		t.Fatalf("PathSplit = %d, want 1 (b_paths.yar)", n)
	}
	dir := t.TempDir()
	body := []byte("xx MARKER-ONE yy MARKER-TWO zz MARKER-TWO")
	for _, p := range []string{"a/evil.bin", "b/good.bin", "tmp/copy.bin", "c/other.txt"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		data := body
		if p == "c/other.txt" {
			data = []byte("MARKER-TWO only once, size differs from the copies....")
		}
		if err := os.WriteFile(filepath.Join(dir, p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	scan := func(opts scanner.Options) *scanner.Report {
		return scanDir(t, scanner.New(rs, opts), dir)
	}
	got := scan(scanner.Options{Workers: 1})
	want := scan(scanner.Options{Workers: 2, NoCache: true})
	if got.Volumes[0].PathScanned != 2 {
		t.Errorf("PathScanned = %d, want 2 (the two later copies)", got.Volumes[0].PathScanned)
	}
	if want.Volumes[0].PathScanned != 0 {
		t.Errorf("NoCache: PathScanned = %d, want 0", want.Volumes[0].PathScanned)
	}
	if len(want.Findings) != 4 {
		t.Fatalf("reference findings: %d, want 4: %+v", len(want.Findings), want.Findings)
	}
	two := scan(scanner.Options{Workers: 2}) // copies may be scanned side by side: the same verdicts
	for i := range want.Findings {
		if !reflect.DeepEqual(two.Findings[i], want.Findings[i]) {
			t.Errorf("2 workers: finding %d: %+v, want %+v", i, two.Findings[i], want.Findings[i])
		}
		if !reflect.DeepEqual(got.Findings[i].Matches, want.Findings[i].Matches) || got.Findings[i].Path != want.Findings[i].Path {
			t.Errorf("finding %d:\n got %s %+v\nwant %s %+v", i, got.Findings[i].Path, got.Findings[i].Matches, want.Findings[i].Path, want.Findings[i].Matches)
		}
	}
}
