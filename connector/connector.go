// Package connector is the seam between snapscan and the hypervisors that
// run the virtual machines it scans. A Connector lists a hypervisor's VMs
// with their disks, freezes a VM's disks (takes a snapshot) so that some
// files hold a consistent view nobody writes any more, releases the freeze
// afterwards so that the VM is left as it was found, reports the areas of a
// disk that changed since an earlier freeze where the hypervisor tracks
// them, and finds the freezes snapscan left behind (a crash, a killed
// process) so that they can be released.
//
// One package per hypervisor implements it: connector/libvirt (KVM through
// libvirtd's socket), connector/vsphere (vCenter and ESXi through the
// vSphere API). connector/hyperv documents how Hyper-V disks are scanned
// today and what a connector for it would do. connector/connectortest holds
// the conformance suite every implementation passes.
//
// # Formats are declared, never probed
//
// Every file a Connector returns carries the format the hypervisor declares
// for it (Layer.Format). A caller opens the disk with that format and that
// chain, and does not detect the format by content: a guest owns the bytes
// of its disk and can write any header into them (a raw disk that starts
// with a qcow2 header naming another disk as its backing file would make a
// prober read the other disk).
//
// # Names snapscan leaves
//
// Every snapshot, checkpoint and overlay file a connector makes is named
// with the prefix NamePrefix and carries Description in the hypervisor's
// description field, so that it can be told apart from the
// administrators' own snapshots, which a connector never touches.
package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// NamePrefix starts the name of every snapshot, checkpoint and overlay file
// a connector makes; Stale finds them by it.
const NamePrefix = "snapscan-"

// Description is written into the description of every snapshot a
// connector makes, beside the name prefix, as a second mark.
const Description = "snapscan: temporary freeze for a malware scan; released automatically"

// Power is a VM's power state.
type Power string

// The power states. A VM that is PoweredOff has disks nobody writes: it is
// scanned in place, without a snapshot.
const (
	PoweredOn  Power = "on"
	PoweredOff Power = "off"
	Suspended  Power = "suspended" // paused or suspended: disks are still open
	Unknown    Power = "unknown"
)

// VM is a virtual machine as the hypervisor describes it.
type VM struct {
	// ID is the hypervisor's stable identity of the VM (libvirt's UUID, a
	// vSphere managed object id). It is what Freeze and Changes take.
	ID string `json:"id"`
	// Name is the name an administrator sees.
	Name string `json:"name"`
	// Power is the power state when listed.
	Power Power `json:"power"`
	// GuestOS is the guest operating system where the hypervisor knows
	// it ("" otherwise).
	GuestOS string `json:"guest_os,omitempty"`
	// Folder is the VM's inventory folder ("/dc/vm/prod"), "" where the
	// hypervisor has none.
	Folder string `json:"folder,omitempty"`
	// Tags are the hypervisor's tags or labels, where it has them.
	Tags []string `json:"tags,omitempty"`
	// Disks are the VM's virtual disks, in the order the VM has them.
	Disks []Disk `json:"disks"`
}

// Disk is one virtual disk of a VM.
type Disk struct {
	// Key names the disk inside its VM: libvirt's target ("vda"), vSphere's
	// device key ("2000").
	Key string `json:"key"`
	// Datastore is where the disk's files live: the vSphere datastore, the
	// libvirt storage pool, or for a file outside any pool its folder. The
	// queue's per-datastore budgets are kept under this name.
	Datastore string `json:"datastore"`
	// Layers is the disk's chain, top (the file the VM writes) first.
	Layers []Layer `json:"layers"`
	// Size is the virtual size the guest sees, in bytes (0 when unknown).
	Size int64 `json:"size"`
	// Independent is set for disks a snapshot cannot freeze (vSphere's
	// independent modes, libvirt disks of a format with no snapshots, raw
	// block devices): a running VM with such a disk is refused.
	Independent bool `json:"independent,omitempty"`
	// ChangeTracking says whether the hypervisor tracks changed blocks of
	// this disk (vSphere CBT, qcow2 v3 dirty bitmaps).
	ChangeTracking bool `json:"change_tracking,omitempty"`
}

// Layer is one file of a disk's chain.
type Layer struct {
	// Path names the file where the connector's Files opens it: a local
	// path, or for vSphere the datastore path "[ds] folder/file.vmdk".
	Path string `json:"path"`
	// Format is the format the hypervisor declares: "raw", "qcow2",
	// "vmdk", "vhd", "vhdx". It is what the file is opened as.
	Format string `json:"format"`
}

// Top returns the disk's top layer (the zero Layer for a disk with none).
func (d Disk) Top() Layer {
	if len(d.Layers) == 0 {
		return Layer{}
	}
	return d.Layers[0]
}

// Options controls a freeze.
type Options struct {
	// Quiesce asks the guest to flush its file systems first (libvirt's
	// guest agent, VMware Tools). QuiesceIfAvailable quiesces where an
	// agent answers and freezes crash-consistent otherwise; QuiesceRequired
	// fails the freeze when the guest cannot be quiesced.
	Quiesce Quiesce
	// TrackChanges starts (or continues) changed-block tracking so that
	// the next freeze can report what changed since this one. Where the
	// disk cannot track changes it is ignored; Freeze.Disks says which do.
	TrackChanges bool
}

// Quiesce says whether to ask the guest to flush before a freeze.
type Quiesce int

// Quiesce modes.
const (
	QuiesceNever Quiesce = iota
	QuiesceIfAvailable
	QuiesceRequired
)

// Freeze is a VM's disks held still for a scan.
type Freeze struct {
	// ID is the freeze's name in the hypervisor: the snapshot's name, or
	// "" for a VM that was off and is read in place (nothing to release).
	ID string `json:"id"`
	// VM is the VM as it was when frozen.
	VM VM `json:"vm"`
	// Taken is when the freeze was made.
	Taken time.Time `json:"taken"`
	// InPlace is set when the VM was off: its disks are read as they are,
	// no snapshot was made, and Release has nothing to undo.
	InPlace bool `json:"in_place,omitempty"`
	// Quiesced is set when the guest flushed its file systems first.
	Quiesced bool `json:"quiesced,omitempty"`
	// Disks are the frozen views, one per disk of the VM.
	Disks []FrozenDisk `json:"disks"`
	// Stun is how long the freeze held the guest still, as far as the
	// hypervisor's API shows it (the time the snapshot call took).
	Stun time.Duration `json:"stun"`
}

// FrozenDisk is the consistent view of one disk while frozen.
type FrozenDisk struct {
	// Disk is the VM's disk as it was before the freeze.
	Disk Disk `json:"disk"`
	// Layers is the frozen chain, top first: files no one writes while
	// the freeze lasts. Open them with these formats, in this order.
	Layers []Layer `json:"layers"`
	// Checkpoint names this freeze's point in the disk's changed-block
	// tracking, for a later Changes; "" where the disk tracks none.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Keep names earlier checkpoints of the disk that the caller still
	// needs, set before Release: the one its last recorded scan was made
	// at, when this freeze's scan was not recorded (it failed, or was cut
	// short). A connector whose hypervisor drops checkpoints it no longer
	// needs (libvirt: Release prunes snapscan's older ones) keeps these as
	// well as Checkpoint; one whose checkpoints outlive a release
	// (vSphere's change ids) has nothing to do.
	Keep []string `json:"keep,omitempty"`
}

// Paths lists the frozen layers' paths, top first: what
// snapshot.Options.Layers takes, with Top().Format as its Format, so that
// the disk is opened as the hypervisor declares it and no other file is.
func (f FrozenDisk) Paths() []string {
	out := make([]string, len(f.Layers))
	for i, l := range f.Layers {
		out[i] = l.Path
	}
	return out
}

// Top returns the frozen view's top layer.
func (f FrozenDisk) Top() Layer {
	if len(f.Layers) == 0 {
		return Layer{}
	}
	return f.Layers[0]
}

// Released reports what undoing a freeze took.
type Released struct {
	// Stun is how long the release held the guest still as far as the
	// hypervisor's API shows it (the pivot, the snapshot removal).
	Stun time.Duration
	// Duration is the whole release, from the call to the VM's disks
	// being as they were.
	Duration time.Duration
	// Repaired is set when the release found the freeze half undone (a
	// crashed earlier run) and finished the job.
	Repaired bool
}

// Extent is a range of a disk in bytes.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// StaleFreeze is a freeze snapscan made and did not release.
type StaleFreeze struct {
	VM    VM        // the VM it belongs to (ID and Name at least)
	ID    string    // the freeze's name
	Taken time.Time // when it was made, as the hypervisor recorded it
}

// Connector is one hypervisor endpoint.
//
// Contract, which every implementation keeps and connectortest checks:
//
//   - Every method takes a context first and returns when it is done;
//     cancelling it abandons the call (a freeze or release the hypervisor
//     already started may still complete there: Stale finds it).
//   - Methods are safe for concurrent use, also on the same VM: a
//     connector serialises what must not overlap on one VM (two freezes of
//     one VM are refused with ErrRefused, not stacked).
//   - Release is idempotent: releasing a freeze twice, or one a crashed
//     run half released, finishes the release and returns no error; a
//     freeze already gone is not an error. After Release returns nil the
//     VM's disks, chain and definition are as List showed them before the
//     freeze, plus whatever the guest wrote meanwhile, and no file of the
//     freeze remains.
//   - Freeze either returns a Freeze or leaves no snapshot behind: when it
//     fails after the hypervisor made the snapshot, it releases it first.
//   - A shut-off VM is frozen in place (Freeze.InPlace); a connector does
//     not stop a VM from being started while it is read.
//   - Errors are *Error values (errors.As) naming the VM and disk, with a
//     Kind that says whether a retry can help (Error.Permanent).
type Connector interface {
	// List returns every VM the endpoint holds, with its disks.
	List(ctx context.Context) ([]VM, error)
	// Freeze holds the disks of the VM with the given ID still for a scan.
	Freeze(ctx context.Context, vmID string, opts Options) (*Freeze, error)
	// Release undoes a freeze (see the contract above).
	Release(ctx context.Context, f *Freeze) (Released, error)
	// Changes returns the areas of disk (by Disk.Key) of the VM written
	// between the freeze that recorded the checkpoint since and the
	// freeze f, sorted and not overlapping. It fails with ErrNoTracking
	// where the hypervisor cannot say (no tracking, the checkpoint is gone).
	Changes(ctx context.Context, f *Freeze, disk, since string) ([]Extent, error)
	// Stale lists the freezes snapscan made that were taken before the
	// given time and are still there.
	Stale(ctx context.Context, before time.Time) ([]StaleFreeze, error)
	// ReleaseStale releases a freeze Stale found, repairing a chain a
	// crashed run left half released.
	ReleaseStale(ctx context.Context, s StaleFreeze) (Released, error)
	// Files opens the files of frozen layers for reading.
	Files() Files
	// Close ends the connection to the endpoint.
	Close() error
}

// Files opens the files a Connector names (Layer.Path) for reading.
type Files interface {
	// Open opens the file at path read-only. The caller closes it.
	Open(ctx context.Context, path string) (File, error)
}

// LocalPather is implemented by connectors whose files the appliance
// reads from its own file system (libvirt's host paths through PathMap,
// vSphere's mounted datastores): LocalPath says where the file named
// path is here, or fails when it is not reachable so.
type LocalPather interface {
	LocalPath(path string) (string, error)
}

// File is a read-only file of a frozen disk. ReadAt is safe for
// concurrent use.
type File interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Kind classifies an Error.
type Kind int

// The kinds of Error.
const (
	// Unreachable: the endpoint did not answer (network, socket, timeout).
	// Transient.
	Unreachable Kind = iota + 1
	// Auth: the endpoint refused the credentials. Permanent until the
	// configuration changes.
	Auth
	// Refused: the hypervisor refused the operation for this VM or disk
	// (Error.Reason says why: a disk format with no snapshots, an
	// independent disk, the VM is being migrated). Permanent unless
	// Error.Retry is set.
	Refused
	// NotFound: the VM, its snapshot or a file is gone. Permanent.
	NotFound
	// Failed: the hypervisor accepted the operation and it failed.
	// Transient.
	Failed
)

func (k Kind) String() string {
	switch k {
	case Unreachable:
		return "unreachable"
	case Auth:
		return "authentication failed"
	case Refused:
		return "refused"
	case NotFound:
		return "not found"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Sentinels for errors.Is, one per Kind: an *Error matches the one of its
// kind.
var (
	ErrUnreachable = errors.New("connector: hypervisor unreachable")
	ErrAuth        = errors.New("connector: authentication failed")
	ErrRefused     = errors.New("connector: refused")
	ErrNotFound    = errors.New("connector: not found")
	ErrFailed      = errors.New("connector: operation failed")
	// ErrNoTracking is returned by Changes where changed areas are not
	// known; the caller scans the whole disk.
	ErrNoTracking = errors.New("connector: no changed-block tracking")
)

// Error is what a Connector returns when an operation fails.
type Error struct {
	Kind     Kind
	Endpoint string // the hypervisor endpoint ("qemu+unix:///...", "https://vc/sdk")
	Op       string // "list", "freeze", "release", "changes", "open", ...
	VM       string // the VM's name (or ID when the name is not known), "" for the endpoint
	Disk     string // the disk's key or file, "" for the whole VM
	Reason   string // for Refused: why, in words a person can act on
	Retry    bool   // for Refused: a later retry may succeed (the VM is migrating)
	Err      error  // the underlying error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.VM != "" {
		fmt.Fprintf(&b, " VM %q", e.VM)
	}
	if e.Disk != "" {
		fmt.Fprintf(&b, " disk %s", e.Disk)
	}
	if e.Endpoint != "" {
		fmt.Fprintf(&b, " on %s", e.Endpoint)
	}
	fmt.Fprintf(&b, ": %s", e.Kind)
	if e.Reason != "" {
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRefused) and the other kind sentinels work.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnreachable:
		return e.Kind == Unreachable
	case ErrAuth:
		return e.Kind == Auth
	case ErrRefused:
		return e.Kind == Refused
	case ErrNotFound:
		return e.Kind == NotFound
	case ErrFailed:
		return e.Kind == Failed
	}
	return false
}

// Permanent reports whether retrying the same operation cannot succeed
// until something changes (credentials, the VM's configuration).
func (e *Error) Permanent() bool {
	switch e.Kind {
	case Auth, NotFound:
		return true
	case Refused:
		return !e.Retry
	}
	return false
}

// IsPermanent reports whether err is, or wraps, an *Error that is
// permanent. Errors that are not *Error (a cancelled context) are not.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent()
}
