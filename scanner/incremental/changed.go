package incremental

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Changes is what a hypervisor's changed-block tracking says about one
// VM disk (connector.Connector.Changes), for Session.PlanChanged.
type Changes struct {
	// Disk names the VM disk for the records, as the connector vouches
	// for it: the connector's name, the VM's stable id and the disk's key
	// ("lab/4f1c…/vda"). Records of one Disk are only ever compared with
	// each other.
	Disk string
	// At is the checkpoint (libvirt checkpoint, vSphere changeId) this
	// scan's freeze was taken at: the scan is recorded under it.
	At string
	// Since is the checkpoint of the record the changes are counted from
	// (Session.Checkpoint), "" when there is none.
	Since string
	// Extents are the disk ranges written between Since and At (a
	// superset is fine: more is read, nothing is missed). Any order.
	Extents []vfs.Range
	// Err is why the changes since Since are not known (the connector's
	// ErrNoTracking: the checkpoint is gone, tracking was reset), nil
	// when Extents are.
	Err error
}

// TrackedPath is the Record.Path under which the records of a VM disk
// scanned through changed-block tracking are kept: Store.Recorded finds
// its last record by it.
func TrackedPath(disk string) string { return "vm-disk:" + disk }

// trackedIdentity is the Record.Identity of a VM disk's record at a
// checkpoint: the disk's name and the checkpoint, digested, so that it
// never equals a chain's Identity.
func trackedIdentity(disk, checkpoint string) string {
	h := sha256.Sum256([]byte("snapscan changed-block tracking\x00" + disk + "\x00" + checkpoint))
	return "cbt-" + hex.EncodeToString(h[:])
}

// changedPlan is the changed-block-tracking part of a Plan.
type changedPlan struct {
	c       Changes
	changed int64 // bytes in c.Extents, merged
	used    bool  // the record at c.Since gave outcomes
}

// Checkpoint returns the checkpoint at which the VM disk was last
// recorded under the session's rules, "" when it never was (or its record
// is no longer kept). Ask the connector for the changes since it, then
// call PlanChanged.
func (s *Session) Checkpoint(ctx context.Context, disk string) (string, error) {
	id, _, err := s.store.Recorded(ctx, TrackedPath(disk), s.rules)
	if err != nil || id == "" {
		return "", err
	}
	rec, err := s.store.Get(ctx, id, s.rules)
	if err != nil || rec == nil {
		return "", err
	}
	s.keep(rec)
	return rec.Checkpoint, nil
}

// keep holds the last record Checkpoint read, for PlanChanged, so that a
// large record is read from the store once.
func (s *Session) keep(r *Record) {
	s.mu.Lock()
	s.last = r
	s.mu.Unlock()
}

func (s *Session) tracked(ctx context.Context, identity string) (*Record, error) {
	s.mu.Lock()
	r := s.last
	s.mu.Unlock()
	if r != nil && r.Identity == identity {
		return r, nil
	}
	return s.store.Get(ctx, identity, s.rules)
}

// PlanChanged is Plan for a VM disk whose hypervisor tracks changed
// blocks: the disk's files are compared with the record made at c.Since,
// and a file none of whose data and metadata ranges meets c.Extents takes
// that record's outcome; the rest is read. The metadata the walk needs is
// always read from d. The scan is recorded under c.At for the next one.
//
// Where the changes are not known (c.Err, no record at c.Since, the
// disk's size changed since) the plan is Plan's (a base layer of the
// chain, when one is recorded, else a full scan), with a warning in the
// log and in the report. With c.Disk or c.At empty it is Plan.
func (s *Session) PlanChanged(ctx context.Context, d *snapshot.Disk, c Changes) *Plan {
	p := s.Plan(ctx, d)
	if c.Disk == "" || c.At == "" {
		return p
	}
	cp := &changedPlan{c: c}
	p.changed = cp
	size := d.Image().Size()
	// The scan is the VM disk's record at At; a chain identity of a
	// frozen file the VM wrote to will not be seen again.
	p.own.Identity, p.own.Path = trackedIdentity(c.Disk, c.At), TrackedPath(c.Disk)
	p.own.Checkpoint, p.own.DiskSize = c.At, size
	if c.Since == "" {
		return p
	}
	if c.Err != nil {
		p.warn("VM disk %s: the changes since checkpoint %s are not known: %v: full scan", c.Disk, c.Since, c.Err)
		return p
	}
	rec, err := s.tracked(ctx, trackedIdentity(c.Disk, c.Since))
	switch {
	case err != nil:
		p.warn("VM disk %s: reading the record at checkpoint %s: %v: full scan", c.Disk, c.Since, err)
		return p
	case rec == nil:
		p.warn("VM disk %s: no record at checkpoint %s (not kept any more): full scan", c.Disk, c.Since)
		return p
	case rec.DiskSize != size:
		p.warn("VM disk %s: its size changed since checkpoint %s (%d bytes, now %d): full scan", c.Disk, c.Since, rec.DiskSize, size)
		return p
	}
	upper, n, err := changedSpans(c.Extents, size)
	if err != nil {
		p.warn("VM disk %s: the changes since checkpoint %s: %v: full scan", c.Disk, c.Since, err)
		return p
	}
	p.base, p.baseName, p.upper = rec, fmt.Sprintf("VM disk %s at checkpoint %s", c.Disk, c.Since), upper
	cp.changed, cp.used = n, true
	// A parent recorded from the files the top's layers leave untouched
	// is still right; the layer base, if Plan found one, gives way.
	p.matchVolumes()
	return p
}

// changedSpans sorts and merges the changed extents of a disk of size
// bytes and counts their bytes.
func changedSpans(ext []vfs.Range, size int64) (spans, int64, error) {
	xs := append([]vfs.Range(nil), ext...)
	for _, x := range xs {
		if x.Off < 0 || x.Len < 0 || x.Off > size || x.Len > size-x.Off {
			return nil, 0, fmt.Errorf("%w: extent at %d, %d bytes, is not within the %d-byte disk", errBadChanges, x.Off, x.Len, size)
		}
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].Off < xs[j].Off })
	var out spans
	for _, x := range xs {
		if x.Len > 0 {
			out.add(x.Off, x.Len)
		}
	}
	var n int64
	for _, s := range out {
		n += s[1] - s[0]
	}
	return out, n, nil
}

var errBadChanges = errors.New("incremental: changed areas out of range")

// finishChanged writes the tracking part of the report.
func (p *Plan) finishChanged(inc *scanner.IncrementalReport) {
	cp := p.changed
	if cp == nil {
		return
	}
	t := &scanner.TrackedReport{Disk: cp.c.Disk, Checkpoint: cp.c.At}
	if cp.used {
		t.Since, t.ChangedBytes = cp.c.Since, cp.changed
	}
	inc.Tracked = t
}

// sessionCache is the Session's state for PlanChanged.
type sessionCache struct {
	mu   sync.Mutex
	last *Record
}
