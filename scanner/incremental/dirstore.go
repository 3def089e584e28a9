package incremental

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/internal/lru"
)

// DirStore is a Store kept in a folder, so that records outlive the
// process (the appliance keeps the records of the disks it scanned there):
// one file per record (EncodeRecord), named by the digest of its identity
// and rules, and one small file per recorded path saying under which
// identity it was last recorded. Writes are atomic (a temporary file renamed). At
// most maxRecords records are kept, the least recently written dropped;
// the last few read are held in memory. It is safe for concurrent use
// within one process.
type DirStore struct {
	dir        string
	maxRecords int
	mem        *lru.Cache[string, *Record]
	mu         sync.Mutex // one Put at a time
}

// NewDirStore returns a store in dir, made (mode 0700) if missing.
func NewDirStore(dir string, maxRecords int) (*DirStore, error) {
	for _, d := range []string{"records", "paths"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("incremental: records folder: %w", err)
		}
	}
	return &DirStore{dir: dir, maxRecords: max(maxRecords, 1), mem: lru.New[string, *Record](4)}, nil
}

func nameOf(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}

// Get implements Store.
func (s *DirStore) Get(_ context.Context, identity, rules string) (*Record, error) {
	name := nameOf(identity, rules)
	if r, ok := s.mem.Get(name); ok {
		return r, nil
	}
	path := filepath.Join(s.dir, "records", name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("incremental: the record of %s: %w", identity, err)
	}
	defer f.Close()
	// A file past the bound is not read in: it is not a record.
	b, err := io.ReadAll(io.LimitReader(f, MaxEncoded+1))
	if err != nil {
		return nil, fmt.Errorf("incremental: the record of %s: %w", identity, err)
	}
	r, err := DecodeRecord(b)
	if err != nil {
		return nil, fmt.Errorf("the record of %s under rules %s in %s: %w", identity, rules, path, err)
	}
	if r.Identity != identity || r.Rules != rules {
		return nil, nil
	}
	s.mem.Put(name, r)
	return r, nil
}

// pathEntry is what the paths folder holds for a recorded path.
type pathEntry struct {
	Identity string
	Time     time.Time
}

// Recorded implements Store.
func (s *DirStore) Recorded(_ context.Context, path, rules string) (string, time.Time, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "paths", nameOf(path, rules)))
	if errors.Is(err, fs.ErrNotExist) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("incremental: %w", err)
	}
	var e pathEntry
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&e); err != nil {
		return "", time.Time{}, nil // a damaged entry only loses a warning
	}
	return e.Identity, e.Time, nil
}

// Put implements Store.
func (s *DirStore) Put(_ context.Context, r *Record) error {
	b, err := EncodeRecord(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := nameOf(r.Identity, r.Rules)
	if err := writeFile(filepath.Join(s.dir, "records", name), b); err != nil {
		return err
	}
	s.mem.Put(name, r)
	if r.Path != "" {
		var buf bytes.Buffer
		if err := gob.NewEncoder(&buf).Encode(pathEntry{Identity: r.Identity, Time: r.Time}); err == nil {
			if err := writeFile(filepath.Join(s.dir, "paths", nameOf(r.Path, r.Rules)), buf.Bytes()); err != nil {
				return err
			}
		}
	}
	return s.trim()
}

// trim drops the oldest records beyond maxRecords (a dropped record only
// costs a full scan). Path entries, a few dozen bytes each, are kept.
func (s *DirStore) trim() error {
	ents, err := os.ReadDir(filepath.Join(s.dir, "records"))
	if err != nil || len(ents) <= s.maxRecords {
		return nil
	}
	type aged struct {
		name string
		t    time.Time
	}
	var all []aged
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			all = append(all, aged{e.Name(), fi.ModTime()})
		}
	}
	slices.SortFunc(all, func(a, b aged) int { return a.t.Compare(b.t) })
	for _, a := range all[:max(len(all)-s.maxRecords, 0)] {
		os.Remove(filepath.Join(s.dir, "records", a.name))
	}
	return nil
}

func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("incremental: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("incremental: writing %s: %w", filepath.Base(path), err)
	}
	return nil
}
