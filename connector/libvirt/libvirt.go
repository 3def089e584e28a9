// Package libvirt is snapscan's connector for KVM/QEMU hosts run by
// libvirtd. It speaks libvirt's RPC protocol over libvirtd's unix socket
// in pure Go (github.com/digitalocean/go-libvirt) and reads and writes
// libvirt's XML with libvirt.org/go/libvirtxml.
//
// # Freezing
//
// A running VM is frozen with an atomic external disk-only snapshot: every
// disk's top image stops being written and a new qcow2 overlay, named
// "<image>.snapscan-<id>.qcow2" beside it, takes the guest's writes. The
// former chain (top first, with the formats libvirt declares) is the
// frozen view. With Options.Quiesce the guest agent flushes the guest's
// file systems first. Release deletes the snapshot through libvirt, which
// (since libvirt 9.0) commits the overlay back into its backing image,
// pivots the running disk to it and removes the overlay: the chain is as
// before, with the guest's writes. A VM that is shut off is read in place.
//
// # Changed blocks
//
// With Options.TrackChanges a qcow2 v3 disk also gets a checkpoint (a
// persistent dirty bitmap in the image) just before the snapshot, so every
// write after it is tracked. Changes asks QEMU for an incremental push
// backup from an earlier checkpoint into a scratch qcow2 beside the disk:
// the clusters that file holds are the blocks written since (and during)
// that freeze. Only the previous and the current checkpoint of a VM are
// kept.
//
// # Crashes
//
// Every step that changes the VM runs inside libvirtd, not in snapscan: a
// snapscan process killed mid-freeze leaves either nothing or a snapshot
// named snapscan-* whose metadata libvirtd keeps. Stale lists those, and
// ReleaseStale deletes them the same way Release does, committing the
// overlay of a running VM or, for a VM shut off since, of its disk image.
// An overlay snapscan's name marks that has no snapshot metadata (someone
// removed it) is reported by Stale and refused by ReleaseStale with what to
// do by hand, never dropped silently.
//
// # Where files are read
//
// Layer paths are the host's paths. The appliance must see them: run it on
// the host, or mount the same storage and map the host's folders to the
// local ones with Config.PathMap.
package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"libvirt.org/go/libvirtxml"

	"github.com/snapscan/snapscan/connector"
)

// DefaultSocket is libvirtd's read-write socket on a host.
const DefaultSocket = "/run/libvirt/libvirt-sock"

// Config says how to reach a libvirtd.
type Config struct {
	// Socket is the path of libvirtd's unix socket (DefaultSocket when
	// empty). The read-only socket lists VMs but cannot freeze them.
	Socket string
	// URI is the libvirt connection URI; "qemu:///system" when empty.
	URI string
	// Timeout bounds connecting (10 s when zero) and each wait for a
	// block job or backup.
	Timeout time.Duration
	// PathMap maps folders of the host (keys) to where the appliance
	// sees them (values), for an appliance that reads the host's storage
	// through its own mount. Paths under no key are read as they are.
	PathMap map[string]string
	// Log receives what the connector does; nil discards.
	Log *slog.Logger
}

// Connector is a connection to one libvirtd. It is safe for concurrent
// use.
type Connector struct {
	cfg      Config
	endpoint string
	l        *golibvirt.Libvirt
	log      *slog.Logger

	mu   sync.Mutex
	busy map[string]bool // VM UUIDs with a freeze or release in progress
}

var _ connector.Connector = (*Connector)(nil)

// Dial connects to libvirtd.
func Dial(ctx context.Context, cfg Config) (*Connector, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.URI == "" {
		cfg.URI = string(golibvirt.QEMUSystem)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Connector{cfg: cfg, endpoint: cfg.URI + " (" + cfg.Socket + ")", log: log, busy: map[string]bool{}}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(cfg.Socket), dialers.WithLocalTimeout(cfg.Timeout)))
	done := make(chan error, 1)
	go func() { done <- l.ConnectToURI(golibvirt.ConnectURI(cfg.URI)) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, c.fail("connect", "", "", err)
		}
	case <-ctx.Done():
		// The dial gives up by itself after cfg.Timeout; wait for it so
		// that no goroutine outlives the call.
		if err := <-done; err == nil {
			l.Disconnect()
		}
		return nil, ctx.Err()
	}
	c.l = l
	return c, nil
}

// Close ends the connection.
func (c *Connector) Close() error { return c.l.Disconnect() }

// Files reads the host's files, through Config.PathMap.
func (c *Connector) Files() connector.Files { return localFiles{c.cfg.PathMap} }

// LocalPath maps a host path through Config.PathMap.
func (c *Connector) LocalPath(path string) (string, error) { return mapPath(c.cfg.PathMap, path), nil }

// List returns every VM libvirtd defines or runs.
func (c *Connector) List(ctx context.Context) ([]connector.VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	doms, _, err := c.l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, c.fail("list", "", "", err)
	}
	pools := c.pools()
	var vms []connector.VM
	for _, d := range doms {
		vm, _, err := c.describe(d, pools)
		if err != nil {
			if isCode(err, golibvirt.ErrNoDomain) {
				continue // gone since the listing
			}
			return nil, err
		}
		vms = append(vms, vm)
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	return vms, nil
}

// describe reads a domain's state and XML.
func (c *Connector) describe(d golibvirt.Domain, pools []pool) (connector.VM, *libvirtxml.Domain, error) {
	vm := connector.VM{ID: uuidString(d.UUID), Name: d.Name}
	state, _, err := c.l.DomainGetState(d, 0)
	if err != nil {
		return vm, nil, c.fail("list", d.Name, "", err)
	}
	vm.Power = power(golibvirt.DomainState(state))
	doc, err := c.l.DomainGetXMLDesc(d, 0)
	if err != nil {
		return vm, nil, c.fail("list", d.Name, "", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		return vm, nil, c.fail("list", d.Name, "", fmt.Errorf("domain XML: %w", err))
	}
	vm.GuestOS = guestOS(&x)
	if x.Devices != nil {
		for _, xd := range x.Devices.Disks {
			if xd.Device != "" && xd.Device != "disk" {
				continue // CD-ROMs, floppies, LUNs: no guest data of its own to scan
			}
			disk := connector.Disk{Key: target(xd)}
			disk.Layers = chain(xd)
			if top := disk.Top(); top.Path != "" {
				disk.Datastore = datastore(pools, top.Path)
				if _, capacity, _, err := c.l.DomainGetBlockInfo(d, disk.Key, 0); err == nil {
					disk.Size = int64(capacity)
				}
			}
			disk.Independent = !freezable(xd)
			disk.ChangeTracking = disk.Top().Format == "qcow2" && !disk.Independent
			vm.Disks = append(vm.Disks, disk)
		}
	}
	return vm, &x, nil
}

func power(s golibvirt.DomainState) connector.Power {
	switch s {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return connector.PoweredOn
	case golibvirt.DomainShutoff, golibvirt.DomainCrashed:
		return connector.PoweredOff
	case golibvirt.DomainPaused, golibvirt.DomainPmsuspended, golibvirt.DomainShutdown:
		return connector.Suspended
	}
	return connector.Unknown
}

// guestOS reads the libosinfo id virt-install records in the metadata.
func guestOS(x *libvirtxml.Domain) string {
	if x.Metadata == nil {
		return ""
	}
	const key = `os id="`
	s := x.Metadata.XML
	if i := strings.Index(s, key); i >= 0 {
		s = s[i+len(key):]
		if j := strings.IndexByte(s, '"'); j >= 0 {
			return s[:j]
		}
	}
	return ""
}

func target(d libvirtxml.DomainDisk) string {
	if d.Target != nil {
		return d.Target.Dev
	}
	return ""
}

// chain lists a disk's files, top first, with their declared formats.
func chain(d libvirtxml.DomainDisk) []connector.Layer {
	var layers []connector.Layer
	format := ""
	if d.Driver != nil {
		format = d.Driver.Type
	}
	if p := sourcePath(d.Source); p != "" {
		layers = append(layers, connector.Layer{Path: p, Format: normFormat(format)})
	}
	for b := d.BackingStore; b != nil && len(layers) <= 16; b = b.BackingStore {
		p := sourcePath(b.Source)
		if p == "" {
			break
		}
		f := ""
		if b.Format != nil {
			f = b.Format.Type
		}
		layers = append(layers, connector.Layer{Path: p, Format: normFormat(f)})
	}
	return layers
}

func normFormat(f string) string {
	if f == "" {
		return "raw" // libvirt's default for a disk without a driver type
	}
	return f
}

func sourcePath(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s == nil:
		return ""
	case s.File != nil:
		return s.File.File
	case s.Block != nil:
		return s.Block.Dev
	}
	return ""
}

// freezable reports whether an external snapshot can hold the disk: a
// file or block device the VM does not share with another and does not
// throw away.
func freezable(d libvirtxml.DomainDisk) bool {
	if d.Shareable != nil || d.Transient != nil || d.ReadOnly != nil {
		return false
	}
	if d.Source == nil || (d.Source.File == nil && d.Source.Block == nil) {
		return false
	}
	if d.Driver != nil && d.Driver.Type != "" && d.Driver.Type != "raw" && d.Driver.Type != "qcow2" {
		return false
	}
	return true
}

// refusal says why a disk cannot be frozen.
func refusal(d libvirtxml.DomainDisk) string {
	switch {
	case d.Shareable != nil:
		return "the disk is shareable (attached to several VMs): a snapshot of it is not consistent"
	case d.Transient != nil:
		return "the disk is transient"
	case d.ReadOnly != nil:
		return "the disk is read-only"
	case d.Source == nil || (d.Source.File == nil && d.Source.Block == nil):
		return "the disk is not a file or block device (network or volume disks are not supported)"
	case d.Driver != nil:
		return fmt.Sprintf("the disk's format %q cannot take an external qcow2 overlay", d.Driver.Type)
	}
	return "the disk cannot be frozen"
}

// pool is a directory storage pool: its name and folder.
type pool struct{ name, dir string }

func (c *Connector) pools() []pool {
	ps, _, err := c.l.ConnectListAllStoragePools(1, 0)
	if err != nil {
		return nil
	}
	var out []pool
	for _, p := range ps {
		doc, err := c.l.StoragePoolGetXMLDesc(p, 0)
		if err != nil {
			continue
		}
		var x libvirtxml.StoragePool
		if x.Unmarshal(doc) == nil && x.Target != nil && x.Target.Path != "" {
			out = append(out, pool{p.Name, filepath.Clean(x.Target.Path)})
		}
	}
	return out
}

// datastore names where a file lives: the storage pool that holds it,
// or its folder.
func datastore(pools []pool, path string) string {
	best := pool{}
	for _, p := range pools {
		if strings.HasPrefix(path, p.dir+"/") && len(p.dir) > len(best.dir) {
			best = p
		}
	}
	if best.name != "" {
		return best.name
	}
	return filepath.Dir(path)
}

func uuidString(u golibvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func parseUUID(s string) (golibvirt.UUID, bool) {
	var u golibvirt.UUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(u) {
		return u, false
	}
	copy(u[:], b)
	return u, true
}

// lookup finds a domain by UUID (or, failing that, by name).
func (c *Connector) lookup(op, id string) (golibvirt.Domain, error) {
	if u, ok := parseUUID(id); ok {
		d, err := c.l.DomainLookupByUUID(u)
		if err == nil {
			return d, nil
		}
		if !isCode(err, golibvirt.ErrNoDomain) {
			return d, c.fail(op, id, "", err)
		}
	}
	d, err := c.l.DomainLookupByName(id)
	if err != nil {
		return d, c.fail(op, id, "", err)
	}
	return d, nil
}

// newID makes a freeze name: the prefix, the time (so that a person sees
// the age) and random bits.
func newID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return connector.NamePrefix + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// overlayPath is where a disk's overlay of freeze id is made: beside its
// top image, so it lives on the same storage.
func overlayPath(top, id string) string {
	base := strings.TrimSuffix(filepath.Base(top), filepath.Ext(top))
	return filepath.Join(filepath.Dir(top), base+"."+id+".qcow2")
}

// claim marks a VM as being frozen or released by this connector.
func (c *Connector) claim(op, vm, id string) (func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy[id] {
		return nil, &connector.Error{Kind: connector.Refused, Endpoint: c.endpoint, Op: op, VM: vm, Retry: true,
			Reason: "another freeze or release of this VM is in progress"}
	}
	c.busy[id] = true
	return func() {
		c.mu.Lock()
		delete(c.busy, id)
		c.mu.Unlock()
	}, nil
}

// fail turns a libvirt or transport error into a *connector.Error.
func (c *Connector) fail(op, vm, disk string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connector.Error
	if errors.As(err, &ce) {
		return err
	}
	e := &connector.Error{Kind: connector.Failed, Endpoint: c.endpoint, Op: op, VM: vm, Disk: disk, Err: err}
	var le golibvirt.Error
	var ne net.Error
	switch {
	case errors.As(err, &le):
		switch golibvirt.ErrorNumber(le.Code) {
		case golibvirt.ErrNoDomain, golibvirt.ErrNoDomainSnapshot, golibvirt.ErrNoDomainCheckpoint, golibvirt.ErrNoStorageVol:
			e.Kind = connector.NotFound
		case golibvirt.ErrAuthFailed, golibvirt.ErrAuthCancelled, golibvirt.ErrAuthUnavailable, golibvirt.ErrOperationDenied:
			e.Kind = connector.Auth
		case golibvirt.ErrOperationInvalid, golibvirt.ErrConfigUnsupported, golibvirt.ErrOperationUnsupported,
			golibvirt.ErrArgumentUnsupported, golibvirt.ErrNoSupport, golibvirt.ErrBlockCopyActive:
			e.Kind = connector.Refused
			e.Reason = le.Message
			e.Err = nil
		case golibvirt.ErrAgentUnresponsive, golibvirt.ErrOperationTimeout:
			e.Kind = connector.Failed
		}
	case errors.As(err, &ne), errors.Is(err, os.ErrNotExist), errors.Is(err, golibvirt.ErrUnsupported),
		strings.Contains(err.Error(), "connection refused"), strings.Contains(err.Error(), "broken pipe"),
		strings.Contains(err.Error(), "libvirt: connection"), strings.Contains(err.Error(), "EOF"):
		e.Kind = connector.Unreachable
	}
	if e.Kind == connector.Failed && (op == "connect" || c.l != nil && !c.l.IsConnected()) {
		e.Kind = connector.Unreachable
	}
	return e
}

func isCode(err error, code golibvirt.ErrorNumber) bool {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return golibvirt.ErrorNumber(le.Code) == code
	}
	var ce *connector.Error
	if errors.As(err, &ce) && ce.Err != nil && ce.Err != err {
		return isCode(ce.Err, code)
	}
	return false
}

// localFiles opens host files through a folder map.
type localFiles struct{ m map[string]string }

func (f localFiles) Open(ctx context.Context, path string) (connector.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := mapPath(f.m, path)
	fh, err := os.Open(p)
	if err != nil {
		kind := connector.Failed
		if errors.Is(err, os.ErrNotExist) {
			kind = connector.NotFound
		}
		return nil, &connector.Error{Kind: kind, Op: "open", Disk: path, Err: err}
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, &connector.Error{Kind: connector.Failed, Op: "open", Disk: path, Err: err}
	}
	return file{fh, st.Size()}, nil
}

type file struct {
	*os.File
	size int64
}

func (f file) Size() int64 { return f.size }

// mapPath applies the longest matching folder prefix of m to path.
func mapPath(m map[string]string, path string) string {
	best, to := "", ""
	for from, dst := range m {
		from = filepath.Clean(from)
		if (path == from || strings.HasPrefix(path, from+"/")) && len(from) > len(best) {
			best, to = from, dst
		}
	}
	if best == "" {
		return path
	}
	return filepath.Join(to, strings.TrimPrefix(path, best))
}
