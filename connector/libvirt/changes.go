package libvirt

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/snapscan/snapscan/connector"
)

// checkpoint creates checkpoint id with a dirty bitmap in every qcow2 disk
// of disks. It returns "" when no disk can track changes.
func (c *Connector) checkpoint(d golibvirt.Domain, id string, disks []connector.Disk) (string, error) {
	cx := libvirtxml.DomainCheckpoint{Name: id, Description: connector.Description, Disks: &libvirtxml.DomainCheckpointDisks{}}
	any := false
	for _, disk := range disks {
		mode := "no"
		if disk.ChangeTracking {
			mode, any = "bitmap", true
		}
		cx.Disks.Disks = append(cx.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: disk.Key, Checkpoint: mode})
	}
	if !any {
		return "", nil
	}
	doc, err := cx.Marshal()
	if err != nil {
		return "", err
	}
	if _, err := c.l.DomainCheckpointCreateXML(d, doc, 0); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	return id, nil
}

func (c *Connector) dropCheckpoint(d golibvirt.Domain, id string) {
	if id == "" {
		return
	}
	cp, err := c.l.DomainCheckpointLookupByName(d, id, 0)
	if err == nil {
		err = c.l.DomainCheckpointDelete(cp, 0)
	}
	if err != nil {
		c.log.Warn("drop checkpoint", "vm", d.Name, "checkpoint", id, "err", err)
	}
}

// pruneCheckpoints deletes snapscan's checkpoints of d but those in keep
// (deleting a checkpoint merges its bitmap into its parent's: nothing is
// lost for the checkpoints that stay).
func (c *Connector) pruneCheckpoints(d golibvirt.Domain, keep map[string]bool) {
	cps, _, err := c.l.DomainListAllCheckpoints(d, 1, 0)
	if err != nil {
		return
	}
	for _, cp := range cps {
		if keep[cp.Name] || !strings.HasPrefix(cp.Name, connector.NamePrefix) {
			continue
		}
		if err := c.l.DomainCheckpointDelete(cp, 0); err != nil {
			c.log.Warn("drop old checkpoint", "vm", d.Name, "checkpoint", cp.Name, "err", err)
		}
	}
}

// Changes reports the areas of a disk written since checkpoint since: QEMU
// copies them (push-mode incremental backup) into a scratch qcow2 beside
// the disk, whose allocated clusters are the answer; the scratch file is
// removed afterwards. The answer covers writes up to the call, a superset
// of those up to freeze f: never fewer areas than changed.
func (c *Connector) Changes(ctx context.Context, f *connector.Freeze, disk, since string) ([]connector.Extent, error) {
	if since == "" || f == nil {
		return nil, fmt.Errorf("changes of VM %q disk %s: %w: no earlier checkpoint", vmName(f), disk, connector.ErrNoTracking)
	}
	var fd *connector.FrozenDisk
	for i := range f.Disks {
		if f.Disks[i].Disk.Key == disk {
			fd = &f.Disks[i]
		}
	}
	if fd == nil {
		return nil, &connector.Error{Kind: connector.NotFound, Endpoint: c.endpoint, Op: "changes", VM: f.VM.Name, Disk: disk, Reason: "no such disk in the freeze"}
	}
	if !fd.Disk.ChangeTracking {
		return nil, fmt.Errorf("changes of VM %q disk %s: %w: the disk is %s, dirty bitmaps need qcow2 v3", f.VM.Name, disk, connector.ErrNoTracking, fd.Disk.Top().Format)
	}
	d, err := c.lookup("changes", f.VM.ID)
	if err != nil {
		return nil, err
	}
	if _, err := c.l.DomainCheckpointLookupByName(d, since, 0); err != nil {
		if isCode(err, golibvirt.ErrNoDomainCheckpoint) {
			return nil, fmt.Errorf("changes of VM %q disk %s: %w: checkpoint %s is gone", f.VM.Name, disk, connector.ErrNoTracking, since)
		}
		return nil, c.fail("changes", f.VM.Name, disk, err)
	}
	scratch := filepath.Join(filepath.Dir(fd.Top().Path), f.ID+"-changes-"+disk+".qcow2")
	bx := libvirtxml.DomainBackup{Incremental: since, Push: &libvirtxml.DomainBackupPush{Disks: &libvirtxml.DomainBackupPushDisks{}}}
	for _, other := range f.Disks {
		bd := libvirtxml.DomainBackupPushDisk{Name: other.Disk.Key, Backup: "no"}
		if other.Disk.Key == disk {
			bd.Backup = "yes"
			bd.Target = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: scratch}}
			bd.Driver = &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"}
		}
		bx.Push.Disks.Disks = append(bx.Push.Disks.Disks, bd)
	}
	doc, err := bx.Marshal()
	if err != nil {
		return nil, c.fail("changes", f.VM.Name, disk, err)
	}
	local := mapPath(c.cfg.PathMap, scratch)
	defer os.Remove(local)
	if err := c.l.DomainBackupBegin(d, doc, nil, 0); err != nil {
		return nil, c.fail("changes", f.VM.Name, disk, err)
	}
	if err := c.waitJob(ctx, d); err != nil {
		c.l.DomainAbortJob(d)
		return nil, c.fail("changes", f.VM.Name, disk, err)
	}
	fh, err := os.Open(local)
	if err != nil {
		return nil, c.fail("changes", f.VM.Name, disk, fmt.Errorf("read the incremental backup: %w", err))
	}
	defer fh.Close()
	ext, err := qcow2Allocated(fh)
	if err != nil {
		return nil, c.fail("changes", f.VM.Name, disk, fmt.Errorf("incremental backup %s: %w", scratch, err))
	}
	return ext, nil
}

func vmName(f *connector.Freeze) string {
	if f == nil {
		return ""
	}
	return f.VM.Name
}

// waitJob waits for the domain's running job (a backup) to end and checks
// it completed.
func (c *Connector) waitJob(ctx context.Context, d golibvirt.Domain) error {
	for {
		jt, _, _, _, _, _, _, _, _, _, _, _, err := c.l.DomainGetJobInfo(d)
		if err != nil {
			return err
		}
		if jt == int32(golibvirt.DomainJobNone) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	jt, params, err := c.l.DomainGetJobStats(d, golibvirt.DomainJobStatsCompleted)
	if err != nil {
		return err
	}
	if jt != int32(golibvirt.DomainJobCompleted) {
		msg := ""
		for _, p := range params {
			if p.Field == "errmsg" {
				msg = fmt.Sprint(p.Value.I)
			}
		}
		return fmt.Errorf("backup job ended as %d %s", jt, msg)
	}
	return nil
}

// qcow2Allocated returns the guest ranges a qcow2 file holds itself (data
// or zero clusters), not those it leaves to a backing file, merged and in
// order. It reads the header and the L1 and L2 tables only.
func qcow2Allocated(r io.ReaderAt) ([]connector.Extent, error) {
	var h [104]byte
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("qcow2 header: %w", err)
	}
	be := binary.BigEndian
	if string(h[:4]) != "QFI\xfb" {
		return nil, fmt.Errorf("not a qcow2 file")
	}
	version := be.Uint32(h[4:])
	bits := be.Uint32(h[20:])
	size := int64(be.Uint64(h[24:]))
	l1Size := be.Uint32(h[36:])
	l1Off := int64(be.Uint64(h[40:]))
	if bits < 9 || bits > 21 || size < 0 {
		return nil, fmt.Errorf("qcow2 header: cluster bits %d, size %d", bits, size)
	}
	if version >= 3 && be.Uint64(h[72:])&(1<<4) != 0 { // incompatible features: extended L2
		return nil, fmt.Errorf("qcow2 with extended L2 entries is not read here")
	}
	cluster := int64(1) << bits
	perL2 := cluster / 8
	if need := (size + cluster*perL2 - 1) / (cluster * perL2); int64(l1Size) < need || l1Size > 1<<22 {
		return nil, fmt.Errorf("qcow2 header: L1 size %d for a %d-byte disk", l1Size, size)
	}
	l1 := make([]byte, int64(l1Size)*8)
	if _, err := r.ReadAt(l1, l1Off); err != nil {
		return nil, fmt.Errorf("qcow2 L1 table at %d: %w", l1Off, err)
	}
	const offMask = 0x00fffffffffffe00
	var out []connector.Extent
	add := func(off int64) {
		if off >= size {
			return
		}
		n := min(cluster, size-off)
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length == off {
			out[k-1].Length += n
			return
		}
		out = append(out, connector.Extent{Offset: off, Length: n})
	}
	l2 := make([]byte, cluster)
	for i := int64(0); i < int64(l1Size); i++ {
		l2Off := int64(be.Uint64(l1[i*8:]) & offMask)
		if l2Off == 0 {
			continue
		}
		if _, err := r.ReadAt(l2, l2Off); err != nil {
			return nil, fmt.Errorf("qcow2 L2 table at %d: %w", l2Off, err)
		}
		for j := int64(0); j < perL2; j++ {
			e := be.Uint64(l2[j*8:])
			compressed := e&(1<<62) != 0
			if compressed || e&offMask != 0 || e&1 != 0 {
				add((i*perL2 + j) * cluster)
			}
		}
	}
	return out, nil
}
