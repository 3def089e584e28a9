package vfs

import (
	"errors"
	"fmt"
	"io"
)

// Kind is one kind of file system: its name and its reader's constructor.
// A list of kinds is the one registry of file systems that a prober tries
// in turn (see Detect).
type Kind struct {
	// Name names the kind ("ext4", "xfs", ...).
	Name string
	// New opens the file system held in r[0:size]. Its error wraps
	// ErrWrongType when the bytes hold no file system of this kind, and
	// only then: any other error means that one is there, damaged or
	// unsupported. The FileSystem reads r but does not own it: whoever
	// made r closes it after the last use of the FileSystem.
	New func(r io.ReaderAt, size int64) (FileSystem, error)
}

// Detect opens r[0:size] with the first kind whose constructor does not
// say ErrWrongType, and returns that kind with the FileSystem or with the
// error that says why it cannot be served (a damaged volume whose magic
// matches is damaged, not unknown). A panic in a constructor becomes an
// error wrapping ErrCorrupt. When every kind refuses, Detect returns the
// zero Kind and an error wrapping ErrWrongType.
func Detect(r io.ReaderAt, size int64, kinds []Kind) (Kind, FileSystem, error) {
	for _, k := range kinds {
		fsys, err := openKind(k, r, size)
		if err == nil {
			return k, fsys, nil
		}
		if !errors.Is(err, ErrWrongType) {
			return k, nil, err
		}
	}
	return Kind{}, nil, fmt.Errorf("no known file system: %w", ErrWrongType)
}

// openKind runs one constructor, recovering a panic.
func openKind(k Kind, r io.ReaderAt, size int64) (fsys FileSystem, err error) {
	defer Recover(k.Name, &err)
	return k.New(r, size)
}
