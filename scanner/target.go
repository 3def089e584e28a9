package scanner

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// FolderTarget is the Target of a folder of the host: one volume, "dir",
// whose paths are relative to the folder (/etc/hosts for path/etc/hosts).
// Links are listed, never followed.
func FolderTarget(path string) Target {
	return Target{Name: path, Kind: KindFolder, Volumes: []Volume{{ID: "dir", FileSystem: "dir", FS: os.DirFS(path)}}}
}

// FileTarget is the Target of one plain file of the host: one volume,
// "file", that holds only that file, at "/" and its base name (so that the
// externals filename and extension are the file's own). A path that is
// not a regular file (a folder, a device, a fifo) is an error: the caller
// decides what else to make of it.
func FileTarget(path string) (Target, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Target{}, fmt.Errorf("scanner: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Target{}, fmt.Errorf("scanner: %s: not a regular file (%v)", path, fi.Mode().Type())
	}
	return Target{Name: path, Kind: KindFile, Volumes: []Volume{{ID: "file", FileSystem: "file",
		FS: &fileFS{path: path, name: filepath.Base(path)}}}}, nil
}

// fileFS is an fs.FS holding one host file at its root.
type fileFS struct {
	path string // on the host
	name string // in the FS
}

func (f *fileFS) Open(name string) (fs.File, error) {
	switch name {
	case ".":
		return &rootDir{f}, nil
	case f.name:
		// Non-blocking, so that a fifo put in the file's place cannot
		// hang the scan; then only a regular file is served.
		h, err := os.OpenFile(f.path, os.O_RDONLY|oNonblock, 0)
		if err != nil {
			return nil, err
		}
		if fi, err := h.Stat(); err != nil || !fi.Mode().IsRegular() {
			h.Close()
			return nil, &fs.PathError{Op: "open", Path: f.path, Err: fs.ErrInvalid}
		}
		return h, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func (f *fileFS) Stat(name string) (fs.FileInfo, error) {
	switch name {
	case ".":
		return rootInfo{}, nil
	case f.name:
		return os.Stat(f.path)
	}
	return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
}

func (f *fileFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if name != "." {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	fi, err := os.Stat(f.path)
	if err != nil {
		return nil, err
	}
	return []fs.DirEntry{fs.FileInfoToDirEntry(fi)}, nil
}

// rootDir is the root folder of a fileFS.
type rootDir struct {
	f *fileFS
}

func (d *rootDir) Stat() (fs.FileInfo, error) { return rootInfo{}, nil }
func (d *rootDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: ".", Err: fs.ErrInvalid}
}
func (d *rootDir) Close() error { return nil }

func (d *rootDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.f == nil {
		if n > 0 {
			return nil, io.EOF
		}
		return nil, nil
	}
	ents, err := d.f.ReadDir(".")
	d.f = nil
	return ents, err
}

type rootInfo struct{}

func (rootInfo) Name() string       { return "." }
func (rootInfo) Size() int64        { return 0 }
func (rootInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o555 }
func (rootInfo) ModTime() time.Time { return time.Time{} }
func (rootInfo) IsDir() bool        { return true }
func (rootInfo) Sys() any           { return nil }
