package libvirt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/snapscan/snapscan/connector"
)

// Freeze holds the VM's disks still: an atomic external disk-only
// snapshot for a running or paused VM, nothing for a VM that is off.
func (c *Connector) Freeze(ctx context.Context, vmID string, opts connector.Options) (*connector.Freeze, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, err := c.lookup("freeze", vmID)
	if err != nil {
		return nil, err
	}
	done, err := c.claim("freeze", d.Name, uuidString(d.UUID))
	if err != nil {
		return nil, err
	}
	defer done()
	vm, x, err := c.describe(d, c.pools())
	if err != nil {
		return nil, err
	}
	f := &connector.Freeze{VM: vm, Taken: time.Now()}
	frozen := func(cp string) {
		for _, disk := range vm.Disks {
			fd := connector.FrozenDisk{Disk: disk, Layers: disk.Layers}
			if cp != "" && disk.ChangeTracking {
				fd.Checkpoint = cp
			}
			f.Disks = append(f.Disks, fd)
		}
	}
	switch vm.Power {
	case connector.PoweredOff:
		f.InPlace = true
		frozen("")
		return f, nil
	case connector.Unknown:
		return nil, c.refuse("freeze", vm.Name, "", false, "the VM's state is not known to libvirt")
	}
	if jobType, _, _, _, _, _, _, _, _, _, _, _, err := c.l.DomainGetJobInfo(d); err == nil && jobType != int32(golibvirt.DomainJobNone) {
		return nil, c.refuse("freeze", vm.Name, "", true, "a job (a migration, a save or a backup) is running on the VM")
	}
	ours, err := c.snapshots(d)
	if err != nil {
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	if len(ours) > 0 {
		return nil, c.refuse("freeze", vm.Name, "", true, fmt.Sprintf("the VM is already frozen by snapscan (snapshot %s)", ours[0].name))
	}
	var disks []libvirtxml.DomainDisk
	for _, xd := range x.Devices.Disks {
		if xd.Device != "" && xd.Device != "disk" {
			continue
		}
		if !freezable(xd) {
			return nil, c.refuse("freeze", vm.Name, target(xd), false, refusal(xd))
		}
		disks = append(disks, xd)
	}
	if len(disks) == 0 {
		return nil, c.refuse("freeze", vm.Name, "", false, "the VM has no disk")
	}
	id := newID(f.Taken)
	cp := ""
	if opts.TrackChanges {
		if cp, err = c.checkpoint(d, id, vm.Disks); err != nil {
			return nil, c.fail("freeze", vm.Name, "", err)
		}
	}
	snap := snapshotXML(id, x, disks)
	doc, err := snap.Marshal()
	if err != nil {
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	flags := uint32(golibvirt.DomainSnapshotCreateDiskOnly | golibvirt.DomainSnapshotCreateAtomic)
	start := time.Now()
	if opts.Quiesce != connector.QuiesceNever {
		_, err = c.l.DomainSnapshotCreateXML(d, doc, flags|uint32(golibvirt.DomainSnapshotCreateQuiesce))
		if err == nil {
			f.Quiesced = true
		} else if opts.Quiesce == connector.QuiesceRequired {
			c.dropCheckpoint(d, cp)
			return nil, c.fail("freeze", vm.Name, "", fmt.Errorf("quiesce through the guest agent: %w", err))
		} else {
			c.log.Info("freeze without quiesce: the guest agent did not answer", "vm", vm.Name, "err", err)
			start = time.Now()
		}
	}
	if !f.Quiesced {
		_, err = c.l.DomainSnapshotCreateXML(d, doc, flags)
	}
	f.Stun = time.Since(start)
	if err != nil {
		c.dropCheckpoint(d, cp)
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	f.ID = id
	frozen(cp)
	// Check the overlays are in place: the frozen files must be the ones
	// no one writes any more.
	_, now, err := c.describe(d, nil)
	if err == nil {
		err = checkOverlays(id, now, f.Disks)
	}
	if err != nil {
		if _, rerr := c.release(ctx, d, vm.Name, id); rerr != nil {
			c.log.Error("release after a failed freeze", "vm", vm.Name, "snapshot", id, "err", rerr)
		}
		return nil, c.fail("freeze", vm.Name, "", err)
	}
	c.log.Info("froze VM", "vm", vm.Name, "snapshot", id, "stun", f.Stun, "quiesced", f.Quiesced, "checkpoint", cp)
	return f, nil
}

// snapshotXML describes an external disk-only snapshot of disks, each
// with an overlay beside its top image.
func snapshotXML(id string, x *libvirtxml.Domain, disks []libvirtxml.DomainDisk) *libvirtxml.DomainSnapshot {
	s := &libvirtxml.DomainSnapshot{Name: id, Description: connector.Description, Disks: &libvirtxml.DomainSnapshotDisks{}}
	for _, xd := range x.Devices.Disks {
		if xd.Device != "" && xd.Device != "disk" {
			s.Disks.Disks = append(s.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: target(xd), Snapshot: "no"})
		}
	}
	for _, xd := range disks {
		s.Disks.Disks = append(s.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name:     target(xd),
			Snapshot: "external",
			Driver:   &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: overlayPath(sourcePath(xd.Source), id)}},
		})
	}
	return s
}

// checkOverlays checks that every frozen disk now writes to its overlay
// of freeze id, above the frozen top.
func checkOverlays(id string, x *libvirtxml.Domain, frozen []connector.FrozenDisk) error {
	for _, fd := range frozen {
		var found bool
		for _, xd := range x.Devices.Disks {
			if target(xd) != fd.Disk.Key {
				continue
			}
			found = true
			l := chain(xd)
			want := overlayPath(fd.Top().Path, id)
			if len(l) == 0 || l[0].Path != want {
				return fmt.Errorf("disk %s writes to %v after the snapshot, not to its overlay %s", fd.Disk.Key, l, want)
			}
		}
		if !found {
			return fmt.Errorf("disk %s is gone after the snapshot", fd.Disk.Key)
		}
	}
	return nil
}

// Release deletes the freeze's snapshot: libvirt commits each overlay
// into the image below it, pivots a running VM's disks to that image and
// removes the overlay. Snapscan's older checkpoints of the VM are dropped,
// but for the freeze's own (for the next Changes) and those its disks'
// FrozenDisk.Keep name; a freeze without disks (ReleaseStale's) drops
// none.
func (c *Connector) Release(ctx context.Context, f *connector.Freeze) (connector.Released, error) {
	if f == nil || f.InPlace || f.ID == "" {
		return connector.Released{}, nil
	}
	if err := ctx.Err(); err != nil {
		return connector.Released{}, err
	}
	d, err := c.lookup("release", f.VM.ID)
	if err != nil {
		if connector.IsPermanent(err) && isCode(err, golibvirt.ErrNoDomain) {
			// The VM was undefined: libvirt removed it with its snapshots.
			return connector.Released{}, nil
		}
		return connector.Released{}, err
	}
	done, err := c.claim("release", f.VM.Name, uuidString(d.UUID))
	if err != nil {
		return connector.Released{}, err
	}
	defer done()
	r, err := c.release(ctx, d, f.VM.Name, f.ID)
	if err != nil {
		return r, err
	}
	// A freeze without its disks (a stale one, found after a crash) says
	// nothing of which checkpoints are still needed: none is dropped.
	if len(f.Disks) > 0 {
		keep := map[string]bool{}
		for _, fd := range f.Disks {
			keep[fd.Checkpoint] = true
			for _, k := range fd.Keep {
				keep[k] = true
			}
		}
		c.pruneCheckpoints(d, keep)
	}
	return r, nil
}

// release deletes snapshot id of domain d and checks that nothing of it
// is left: not in the chain, not on disk.
func (c *Connector) release(ctx context.Context, d golibvirt.Domain, name, id string) (connector.Released, error) {
	var r connector.Released
	start := time.Now()
	before, x, err := c.describe(d, nil)
	if err != nil {
		return r, err
	}
	snap, err := c.l.DomainSnapshotLookupByName(d, id, 0)
	if isCode(err, golibvirt.ErrNoDomainSnapshot) {
		// Gone already, or someone removed the metadata: an overlay of it
		// still in a chain must not be left unnoticed.
		if disk, path := orphanOverlay(x, id); path != "" {
			return r, c.refuse("release", name, disk, false, fmt.Sprintf(
				"overlay %s of freeze %s is still in the disk's chain but its snapshot metadata is gone; "+
					"commit it by hand (virsh blockcommit %s %s --active --pivot --shallow) and remove the file", path, id, name, disk))
		}
		r.Duration = time.Since(start)
		return r, nil
	}
	if err != nil {
		return r, c.fail("release", name, "", err)
	}
	var overlays []string
	if doc, err := c.l.DomainSnapshotGetXMLDesc(snap, 0); err == nil {
		var sx libvirtxml.DomainSnapshot
		if sx.Unmarshal(doc) == nil && sx.Disks != nil {
			for _, sd := range sx.Disks.Disks {
				if sd.Snapshot == "external" {
					overlays = append(overlays, sourcePath(sd.Source))
				}
			}
		}
	}
	// A half-done earlier release (its process was killed) may still run
	// inside libvirtd: retry while the domain is busy.
	deadline := time.Now().Add(c.cfg.Timeout)
	for {
		t := time.Now()
		err = c.l.DomainSnapshotDelete(snap, 0)
		r.Stun = time.Since(t)
		if err == nil || isCode(err, golibvirt.ErrNoDomainSnapshot) {
			break
		}
		if !busy(err) || time.Now().After(deadline) {
			return r, c.fail("release", name, "", err)
		}
		r.Repaired = true
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	_, after, err := c.describe(d, nil)
	if err != nil {
		return r, err
	}
	if disk, path := orphanOverlay(after, id); path != "" {
		return r, c.fail("release", name, disk, fmt.Errorf("overlay %s is still in the chain after the snapshot was deleted", path))
	}
	for _, p := range overlays {
		local := mapPath(c.cfg.PathMap, p)
		if _, err := os.Stat(local); err == nil {
			// libvirt leaves the overlay of a snapshot whose disks it did
			// not have to commit (none was written): remove it here.
			if err := os.Remove(local); err != nil {
				return r, c.fail("release", name, "", fmt.Errorf("remove overlay: %w", err))
			}
		}
	}
	r.Duration = time.Since(start)
	c.log.Info("released VM", "vm", before.Name, "snapshot", id, "stun", r.Stun, "took", r.Duration)
	return r, nil
}

// busy tells errors that mean "another job holds the domain, try again".
func busy(err error) bool {
	s := err.Error()
	return isCode(err, golibvirt.ErrOperationTimeout) || isCode(err, golibvirt.ErrBlockCopyActive) ||
		strings.Contains(s, "cannot acquire state change lock") || strings.Contains(s, "job") && strings.Contains(s, "active")
}

// overlayName matches the files snapscan's overlays are named with.
var overlayName = regexp.MustCompile(`\.(` + regexp.QuoteMeta(connector.NamePrefix) + `[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})\.qcow2$`)

// orphanOverlay finds a disk of x whose chain holds an overlay of freeze
// id ("" for any of snapscan's).
func orphanOverlay(x *libvirtxml.Domain, id string) (disk, path string) {
	if x == nil || x.Devices == nil {
		return "", ""
	}
	for _, xd := range x.Devices.Disks {
		for _, l := range chain(xd) {
			m := overlayName.FindStringSubmatch(filepath.Base(l.Path))
			if m != nil && (id == "" || m[1] == id) {
				return target(xd), l.Path
			}
		}
	}
	return "", ""
}

type ourSnapshot struct {
	name  string
	taken time.Time
}

// snapshots lists snapscan's snapshots of d.
func (c *Connector) snapshots(d golibvirt.Domain) ([]ourSnapshot, error) {
	snaps, _, err := c.l.DomainListAllSnapshots(d, 1, 0)
	if err != nil {
		return nil, err
	}
	var out []ourSnapshot
	for _, s := range snaps {
		if !strings.HasPrefix(s.Name, connector.NamePrefix) {
			continue
		}
		doc, err := c.l.DomainSnapshotGetXMLDesc(s, 0)
		if err != nil {
			continue
		}
		var sx libvirtxml.DomainSnapshot
		if sx.Unmarshal(doc) != nil || !strings.Contains(sx.Description, "snapscan") {
			continue // named like ours but not marked: not ours to touch
		}
		var taken time.Time
		if secs, err := strconv.ParseInt(sx.CreationTime, 10, 64); err == nil {
			taken = time.Unix(secs, 0)
		}
		out = append(out, ourSnapshot{s.Name, taken})
	}
	return out, nil
}

// Stale lists snapscan's snapshots made before the given time, and
// overlays of snapscan's whose snapshot metadata is gone (with a zero
// Taken).
func (c *Connector) Stale(ctx context.Context, before time.Time) ([]connector.StaleFreeze, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	doms, _, err := c.l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, c.fail("stale", "", "", err)
	}
	var out []connector.StaleFreeze
	for _, d := range doms {
		vm := connector.VM{ID: uuidString(d.UUID), Name: d.Name}
		snaps, err := c.snapshots(d)
		if err != nil {
			if isCode(err, golibvirt.ErrNoDomain) {
				continue
			}
			return nil, c.fail("stale", d.Name, "", err)
		}
		known := map[string]bool{}
		for _, s := range snaps {
			known[s.name] = true
			if s.taken.Before(before) {
				out = append(out, connector.StaleFreeze{VM: vm, ID: s.name, Taken: s.taken})
			}
		}
		if doc, err := c.l.DomainGetXMLDesc(d, 0); err == nil {
			var x libvirtxml.Domain
			if x.Unmarshal(doc) == nil && x.Devices != nil {
				for _, xd := range x.Devices.Disks {
					for _, l := range chain(xd) {
						if m := overlayName.FindStringSubmatch(filepath.Base(l.Path)); m != nil && !known[m[1]] {
							known[m[1]] = true
							out = append(out, connector.StaleFreeze{VM: vm, ID: m[1]})
						}
					}
				}
			}
		}
	}
	return out, nil
}

// ReleaseStale releases a freeze Stale found.
func (c *Connector) ReleaseStale(ctx context.Context, s connector.StaleFreeze) (connector.Released, error) {
	if !strings.HasPrefix(s.ID, connector.NamePrefix) {
		return connector.Released{}, c.refuse("release", s.VM.Name, "", false, fmt.Sprintf("%q is not a freeze snapscan made", s.ID))
	}
	r, err := c.Release(ctx, &connector.Freeze{ID: s.ID, VM: s.VM})
	r.Repaired = true
	return r, err
}

func (c *Connector) refuse(op, vm, disk string, retry bool, reason string) error {
	return &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: op, VM: vm, Disk: disk, Retry: retry, Reason: reason}
}
