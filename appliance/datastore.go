package appliance

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Errors about a datastore entry (a disk or layer path a submitter names).
// Their messages name the entry as the submitter wrote it, never where it
// resolves on the host.
var (
	// ErrOutsideDatastore: the entry, symbolic links followed, lies
	// outside its datastore's folder (a link to the appliance's own
	// signing key, say).
	ErrOutsideDatastore = errors.New("resolves outside the datastore")
	// ErrNotImage: the entry is missing or not a regular file.
	ErrNotImage = errors.New("is not a file on the datastore")
)

// entry resolves a path a submitter names on datastore d: clean and
// relative (DiskPath), and, symbolic links followed, a regular file inside
// the datastore's folder. It returns the resolved path, which is what is
// opened, so that a link changed after the check changes nothing.
func (d *DatastoreConfig) entry(rel string) (string, error) {
	p, err := DiskPath(d.Path, rel)
	if err != nil {
		return "", err
	}
	root, err := filepath.EvalSymlinks(d.Path)
	if err != nil {
		return "", fmt.Errorf("datastore %s: folder unreadable: %w", d.Name, err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		// A dangling link and a missing file read alike.
		return "", fmt.Errorf("%q %w %s", rel, ErrNotImage, d.Name)
	}
	if r, err := filepath.Rel(root, real); err != nil || r == "." || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%q %w %s", rel, ErrOutsideDatastore, d.Name)
	}
	st, err := os.Stat(real)
	if err != nil || !st.Mode().IsRegular() {
		return "", fmt.Errorf("%q %w %s", rel, ErrNotImage, d.Name)
	}
	return real, nil
}

// remotePath maps the datastore path of a file of a datastore read
// through its connector ("[ds] folder/file.vmdk") to the name snapshot
// opens it under: "/ds/folder/file.vmdk". Under that name the whole
// datastore is one folder, so that a chain's related files resolve
// within it (AllowedDirs) and nowhere else.
func remotePath(d *DatastoreConfig, p string) (string, error) {
	rest, ok := strings.CutPrefix(p, "["+d.Name+"] ")
	if !ok || !fs.ValidPath(rest) || rest == "." {
		return "", fmt.Errorf("%q is not a path of datastore %s ([%s] folder/file)", p, d.Name, d.Name)
	}
	return "/" + d.Name + "/" + rest, nil
}

// datastorePath is remotePath's inverse.
func datastorePath(d *DatastoreConfig, name string) (string, error) {
	rest, ok := strings.CutPrefix(name, "/"+d.Name+"/")
	if !ok || !fs.ValidPath(rest) {
		return "", fmt.Errorf("%w: %q is outside datastore %s", ErrOutsideDatastore, name, d.Name)
	}
	return "[" + d.Name + "] " + rest, nil
}

// redact makes a message fit for API clients: the datastore's folder, as
// configured and as resolved, is cut from the paths in it, which become
// relative to the datastore. The full message goes to the log.
func (d *DatastoreConfig) redact(msg string) string {
	roots := []string{d.Path}
	if r, err := filepath.EvalSymlinks(d.Path); err == nil && r != d.Path {
		roots = append(roots, r)
	}
	for _, r := range roots {
		if len(r) > 1 {
			msg = strings.ReplaceAll(msg, r+string(filepath.Separator), "")
		}
	}
	return msg
}

// redactedError is an error whose message was made fit for API clients
// (redact); errors.Is and errors.As still see the original.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr returns err with its message redacted for datastore d.
func (d *DatastoreConfig) redactErr(err error) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: d.redact(err.Error()), err: err}
}
