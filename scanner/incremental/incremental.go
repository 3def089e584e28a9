// Package incremental makes the scan of a linked clone, or of the next
// snapshot of a VM, cost the bytes that are its own: a file whose bytes
// the disk's upper layers do not touch is the same file as in a base
// layer scanned before, and its outcome (verdict and digests) comes from
// the base's record without its bytes being read.
//
// # How a base is recognised
//
// Every disk scanned through a Plan is recorded under the identity of its
// image chain (Identity: the format, size, modification time and header
// and allocation-table digest of every file of the chain, never its
// name) and the scanner's ReuseKey (rules and archive mode). A later disk
// whose backing chain holds a recorded image (the nearest one, walking
// down from the top) uses that record. A base that changed since it was
// recorded has another identity: its record is not found and the disk is
// scanned in full; when a record exists for the same file under another
// identity, the report and the log say so (a warning: the base changed
// since it was recorded, full scan). When no layer below the top is
// recorded yet, the scan also records the top's parent from the files the
// top's own layers leave untouched, so that the first clone of a golden
// image scanned in full makes the golden image's record for the others.
//
// # When a file's outcome is reused
//
// For each regular file, the file system's vfs.Mapper says where its
// bytes and its metadata lie on the volume (inode or record, block map,
// data extents, inline data) and a Key for the rest of what reading it
// depends on. The file is taken from the base when all of these hold:
//   - the volume is the base's volume: same id, file system, place on
//     the disk and size, and the same Layout (geometry and features): an
//     overlay that moves a partition or rewrites the superblock's layout
//     makes the volume's files read again;
//   - the base recorded a file with the same Extents (ranges and Key);
//   - no byte of its data, translated to disk offsets, is held by a layer
//     above the base, and its metadata (inode, block map, inline data) is
//     untouched too or, where an upper layer rewrote the cluster holding
//     it (for a neighbour's inode), digests to what the base recorded;
//   - when the rules read the externals filename, filepath, extension or
//     owner, those are the same as the recorded file's: a renamed file is
//     scanned again under such rules, and reused under rules that ignore
//     paths (its bytes are the same, so is its verdict).
//
// By the vfs.Mapper contract the file's content is then byte for byte the
// recorded file's, so the verdict equals a full scan's. Files not
// recorded (archives, which are expanded, and files with errors or
// timeouts) are always read. A logical volume (LVM2) is mapped to the
// disk through its segments (snapshot.Volume.DiskRanges), and its
// Placement is part of its Layout: an overlay that moves its extents
// makes its files read again. File systems that are not Mappers are
// always read in full; the report says so per volume
// (VolumeReport.NoReuse).
//
// # Changed-block tracking
//
// A VM disk that is one full file (a flat or sparse VMDK, a qcow2 the VM
// writes to) has no base layer: its top changes with every write. Where
// the hypervisor tracks the blocks written (vSphere CBT, libvirt
// checkpoints), Session.PlanChanged takes their word instead of the
// layers': the scan is recorded under the VM disk's name (as the
// connector vouches for it: connector, VM id, disk key) and the
// checkpoint its freeze was taken at, and the next scan asks the
// connector for the areas written since that checkpoint
// (Session.Checkpoint says which) and reuses the outcome of every file
// whose data and metadata lie outside them, by the rules above with the
// changed areas as the upper layers. Where the connector cannot say (no
// tracking, a checkpoint that is gone, a disk whose size changed), the
// disk is scanned as Plan would, and the report and the log say why.
package incremental

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot/image"
)

// Record is what a scan of one disk saw, for later scans of disks whose
// chain holds it.
type Record struct {
	// Identity is the chain's identity (see Identity).
	Identity string
	// Rules is the Scanner.ReuseKey the outcomes were made under.
	Rules string
	// Path is the chain's top file when recorded (image.RealPath).
	Path string
	// Time is when the record was made.
	Time time.Time
	// Checkpoint and DiskSize are set on the record of a VM disk scanned
	// through changed-block tracking (Session.PlanChanged): the
	// checkpoint the scan was taken at and the disk's size then. Path is
	// then TrackedPath of the VM disk.
	Checkpoint string
	DiskSize   int64
	Volumes    []*VolumeRecord
}

// VolumeRecord is the part of a Record about one volume.
type VolumeRecord struct {
	ID         string
	FileSystem string
	Offset     int64 // on the disk
	Size       int64
	Layout     string // vfs.Mapper.Layout
	// Files holds the outcome of each file scanned, by where it lies and
	// the context of its externals.
	Files map[FileKey]File
}

// File is a recorded file: its outcome, and a digest of its metadata.
type File struct {
	scanner.Outcome
	// Meta is the SHA-256 of the bytes of the file's metadata ranges
	// (vfs.Extents.Meta, then its Inline data) when recorded, so that a
	// later disk whose upper layer rewrote the cluster holding them (for a
	// neighbour's inode) can tell they are unchanged without reading the
	// base; zero when a range was too large to digest.
	Meta [32]byte
}

// FileKey identifies a recorded file: Where is the digest of its
// vfs.Extents (Fingerprint), Context its scanner.Outcome.Context.
type FileKey struct {
	Where, Context [32]byte
}

// Files returns the number of files recorded over all volumes.
func (r *Record) Files() (n int) {
	for _, v := range r.Volumes {
		n += len(v.Files)
	}
	return n
}

func (r *Record) volume(id string) *VolumeRecord {
	for _, v := range r.Volumes {
		if v.ID == id {
			return v
		}
	}
	return nil
}

// Store keeps records. Implementations must be safe for concurrent use.
type Store interface {
	// Get returns the record of the chain identity under the reuse key
	// rules, or nil when there is none.
	Get(ctx context.Context, identity, rules string) (*Record, error)
	// Recorded returns the identity under which the file at path (a
	// chain's top, image.RealPath) was last recorded under rules, and
	// when, or "" when it never was: a base that changed since it was
	// recorded is told by this.
	Recorded(ctx context.Context, path, rules string) (identity string, at time.Time, err error)
	// Put stores a record, replacing the one of the same identity and
	// rules.
	Put(ctx context.Context, r *Record) error
}

// MemoryStore is a Store held in memory, for the disks of one run. It
// keeps at most a bounded number of records, dropping the oldest.
type MemoryStore struct {
	mu     sync.Mutex
	max    int
	recs   map[string]*Record // by identity and rules
	order  []string
	byPath map[string]*Record // by path and rules: the last recorded
}

// NewMemoryStore returns a store of at most maxRecords records (at least
// one). A record costs about 150 bytes per file.
func NewMemoryStore(maxRecords int) *MemoryStore {
	return &MemoryStore{max: max(maxRecords, 1), recs: map[string]*Record{}, byPath: map[string]*Record{}}
}

// Get implements Store.
func (m *MemoryStore) Get(_ context.Context, identity, rules string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recs[identity+"\x00"+rules], nil
}

// Recorded implements Store.
func (m *MemoryStore) Recorded(_ context.Context, path, rules string) (string, time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.byPath[path+"\x00"+rules]; r != nil {
		return r.Identity, r.Time, nil
	}
	return "", time.Time{}, nil
}

// Put implements Store.
func (m *MemoryStore) Put(_ context.Context, r *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := r.Identity + "\x00" + r.Rules
	if _, ok := m.recs[k]; !ok {
		m.order = append(m.order, k)
	}
	m.recs[k] = r
	if r.Path != "" {
		m.byPath[r.Path+"\x00"+r.Rules] = r
	}
	for len(m.order) > m.max {
		old := m.recs[m.order[0]]
		delete(m.recs, m.order[0])
		m.order = m.order[1:]
		if old != nil && m.byPath[old.Path+"\x00"+old.Rules] == old {
			delete(m.byPath, old.Path+"\x00"+old.Rules)
		}
	}
	return nil
}

// Identity returns the identity of an image chain: the SHA-256, hex, of
// each file's format, size, modification time and digest (its header and
// allocation tables; see image.Layer), top first. Names and paths are not
// part of it: a copy of a base is the same base, and a base that changed
// is another.
func Identity(img image.Image) string {
	h := sha256.New()
	for _, l := range img.Layers() {
		var b [16]byte
		binary.LittleEndian.PutUint64(b[:8], uint64(l.Size))
		binary.LittleEndian.PutUint64(b[8:], uint64(l.ModTime.UnixNano()))
		fmt.Fprintf(h, "%s\x00%s\x00", l.Format, l.Digest)
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Session makes Plans for the disks of one Scanner: its ReuseKey, a
// Store and a logger.
type Session struct {
	store Store
	rules string
	log   *slog.Logger
	sessionCache
}

// NewSession returns a Session recording to and reusing from store,
// under reuseKey (scanner.Scanner.ReuseKey). log may be nil.
func NewSession(store Store, reuseKey string, log *slog.Logger) *Session {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Session{store: store, rules: reuseKey, log: log}
}
