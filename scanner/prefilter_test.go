package scanner_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
)

// prefilterTree writes files whose sizes sit on both sides of the size
// buckets and of the rules' thresholds, with PE, ELF and text headers,
// each holding the marker of testdata/rules/prefilter; PE files twice,
// under two names, so that the second is scanned by the path-reading
// rules alone (Rules.PathSplit), pruned as well.
func prefilterTree(t *testing.T) (dir string, files []string) {
	t.Helper()
	dir = t.TempDir()
	heads := map[string][]byte{"pe": []byte("MZ\x90\x00"), "elf": []byte("\x7fELF\x02\x01\x01\x00"), "text": []byte("#!/bin/sh\n")}
	sizes := []int{0, 1, 2, 100, 64<<10 - 1, 64 << 10, 100<<10 - 1, 100 << 10, 0x20000, 1<<20 - 1, 1 << 20, 2 << 20, 2<<20 + 1, 10 << 20}
	marker := []byte("snapscan-prefilter-marker")
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	for kind, head := range heads {
		for _, size := range sizes {
			data := make([]byte, size)
			copy(data, head)
			if size > len(head)+len(marker)+10 {
				copy(data[size/2:], marker)
			}
			name := fmt.Sprintf("%s-%d", kind, size)
			switch kind {
			case "pe":
				write(name+".exe", data)
				write(name+".bin", data)
			default:
				write(name, data)
			}
		}
	}
	big := bytes.Repeat([]byte("text "), (16<<20)/5+1)
	copy(big[8<<20:], marker)
	write("text-big", big)
	return dir, files
}

// TestPrefilter: scans with the rule sets pruned for each file's class
// give the verdicts of the whole set, which equal the yara tool's, file by
// file; and pruning took place.
func TestPrefilter(t *testing.T) {
	testenv.NeedTools(t, "yara")
	rulesDir, err := filepath.Abs("testdata/rules/prefilter")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := scanner.CompileCached(t.TempDir(), rulesDir)
	if err != nil {
		t.Fatal(err)
	}
	if rules.PathSplit() != 1 {
		t.Fatalf("PathSplit() = %d, want 1", rules.PathSplit())
	}
	tree, files := prefilterTree(t)
	findings := func(rep *scanner.Report) map[string][]scanner.Match {
		m := map[string][]scanner.Match{}
		for _, f := range rep.Findings {
			m[f.Path] = f.Matches
		}
		return m
	}
	whole := scanDir(t, scanner.New(rules, scanner.Options{NoPrefilter: true}), tree)
	pruned := scanDir(t, scanner.New(rules, scanner.Options{}), tree)
	wv, pv := whole.Volumes[0], pruned.Volumes[0]
	if wv.Files != int64(len(files)) || pv.Files != wv.Files || len(wv.Errors)+len(pv.Errors) != 0 {
		t.Fatalf("scanned %d and %d files of %d; errors %v %v", wv.Files, pv.Files, len(files), wv.Errors, pv.Errors)
	}
	// Every class here cuts enough rules to be pruned; a pruned set that
	// did not compile would leave its files to the whole set.
	if wv.Pruned != 0 || pv.Pruned != pv.Files || pv.PathScanned == 0 {
		t.Errorf("pruned %d files without the pre-filter, %d of %d with it (%d by the path rules alone)", wv.Pruned, pv.Pruned, pv.Files, pv.PathScanned)
	}
	w, p := findings(whole), findings(pruned)
	if !reflect.DeepEqual(w, p) {
		for _, f := range files {
			if !reflect.DeepEqual(w["/"+f], p["/"+f]) {
				t.Errorf("%s: whole set %v, pruned %v", f, w["/"+f], p["/"+f])
			}
		}
	}
	var got, want []string
	for _, f := range files {
		want = append(want, yaraCLI(t, rulesDir, tree, "/"+f, "")...)
	}
	got = pairs(pruned, func(string) bool { return true })
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("pruned scans found\n%s\nthe yara tool\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The gates decided something: a small PE file matches the PE rules,
	// a large text file none of them.
	for _, c := range []struct {
		path string
		rule string
		want bool
	}{
		{"/pe-102399.bin", "pe_small", true},
		{"/pe-102400.bin", "pe_small", false},
		{"/pe-2097153.exe", "named_big", true},
		{"/text-big", "pe_any", false},
		{"/text-big", "big", true},
		{"/elf-131072", "exactly", true},
		{"/elf-131072", "elf_be", true},
		{"/text-1048576", "not_pe_group", true},
	} {
		if has := slices.ContainsFunc(p[c.path], func(m scanner.Match) bool { return m.Rule == c.rule }); has != c.want {
			t.Errorf("%s: %s matched %v, want %v", c.path, c.rule, has, c.want)
		}
	}
}
