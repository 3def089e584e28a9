// Package statefile writes and reads the small state files of the
// signature receiver and the central server: whole or not at all, and
// never more than a bound.
package statefile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteAtomic replaces dir/name with data, mode 0600: a temporary file is
// written and synced, renamed over the old one and the folder synced, so
// a crash leaves either the old or the new file, whole. Errors name the
// file once.
func WriteAtomic(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	f, err := os.CreateTemp(dir, "."+name+".tmp*") // mode 0600
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync folder: %w", path, err)
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return fmt.Errorf("write %s: sync folder: %w", path, err)
	}
	return nil
}

// TooLargeError is ReadLimited's refusal of a file over its bound.
type TooLargeError struct {
	Path  string
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s: more than %d bytes", e.Path, e.Limit)
}

// ReadLimited reads a file of at most limit bytes; a larger one is a
// *TooLargeError, read no further than limit+1 bytes.
func ReadLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, &TooLargeError{Path: path, Limit: limit}
	}
	return data, nil
}
