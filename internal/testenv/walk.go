package testenv

import (
	"io"
	"io/fs"
)

// WalkAll opens and reads every regular file of fsys, returning the first
// error met (listing or reading); the walk goes on past errors.
func WalkAll(fsys fs.FS) error {
	var first error
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if first == nil {
				first = err
			}
			return nil
		}
		if d.Type().IsRegular() {
			f, err := fsys.Open(p)
			if err == nil {
				_, err = io.Copy(io.Discard, f)
				f.Close()
			}
			if err != nil && first == nil {
				first = err
			}
		}
		return nil
	})
	return first
}

// WalkCapped opens and reads everything (files and link targets), stopping
// after maxEntries entries or maxBytes bytes read, so that a fuzz input
// cannot make the walk itself the hang. Errors are ignored: fuzz targets
// look for panics and hangs.
func WalkCapped(fsys fs.FS, maxEntries int, maxBytes int64) {
	entries := 0
	budget := maxBytes
	buf := make([]byte, 64<<10)
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		entries++
		if entries > maxEntries || budget <= 0 {
			return fs.SkipAll
		}
		if err != nil || d == nil {
			return nil
		}
		if _, err := d.Info(); err != nil {
			return nil
		}
		switch d.Type() {
		case 0:
			f, err := fsys.Open(p)
			if err != nil {
				return nil
			}
			defer f.Close()
			for budget > 0 {
				n, err := f.Read(buf)
				budget -= int64(n)
				if err != nil {
					break
				}
			}
		case fs.ModeSymlink:
			fs.ReadLink(fsys, p)
		}
		return nil
	})
}
