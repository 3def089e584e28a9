package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// readList reads a list file (--targets-from, --exclude-from): one entry a
// line, "-" for stdin; empty lines and lines starting with # are skipped,
// a trailing \r (a file written on Windows) is dropped, other spaces kept.
func readList(name string, stdin io.Reader) ([]string, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsRune(line, 0) {
			return nil, fmt.Errorf("%s:%d: NUL byte in line", name, n)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// atomicFile is an output file written beside its final name and renamed
// into place by commit, so that a reader never sees half of it and a
// failed run leaves the previous file as it was. Mode 0600: reports and
// files copied out of images are for their owner.
type atomicFile struct {
	*os.File
	name string
	done bool
}

func createAtomic(name string) (*atomicFile, error) {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return nil, err
	}
	return &atomicFile{File: f, name: name}, nil
}

// commit closes the file and renames it to its name.
func (a *atomicFile) commit() error {
	if err := a.Close(); err != nil {
		return err
	}
	if err := os.Rename(a.File.Name(), a.name); err != nil {
		return err
	}
	a.done = true
	return nil
}

// abort removes the file unless it was committed; deferred after create.
func (a *atomicFile) abort() {
	if !a.done {
		a.Close()
		os.Remove(a.File.Name())
	}
}
