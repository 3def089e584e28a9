package snapshot

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Options controls how a disk is opened. The zero value is ready to use:
// the format is probed by content and the disk may read no file but its
// own.
type Options struct {
	// Format is the disk's format as the hypervisor or the submitter
	// declares it: "raw", "qcow2", "vmdk", "vhd" or "vhdx" (see Formats).
	// "" means probe by content. A declared format is never second-
	// guessed: "raw" means raw, and no header in the disk's bytes is ever
	// parsed (a guest owns those bytes, and can write a qcow2 header into
	// them). A declared format that does not match the content is an
	// error naming both. A declared image follows its chain as the
	// hypervisor would, within the allowed folders.
	Format string

	// Layers lists the files the caller says the disk is made of: the
	// image, then its extents and backing files or parents, as a
	// connector or the submitter knows them. When set, no file outside
	// it is opened, and the chain opened must be exactly this list.
	Layers []string

	// AllowUnnamedLayers lets a probed image (Format "") open related
	// files (backing files, parents, extents) that Layers does not name.
	// Without it, such an open fails with ErrUnnamedLayer: a probed
	// header may have been written by a guest to make snapscan read
	// another disk. It is an explicit opt-in, for a person at the CLI
	// who knows the chain is the host's.
	AllowUnnamedLayers bool

	// AllowedDirs lists folders, besides the image's own folder and those
	// below it, from which backing files, parent disks and extents may be
	// read. See image.Options.
	AllowedDirs []string

	// WrapReader, when set, wraps every file the disk reads (the image,
	// its extents and backing chain), for example to hold the reads to a
	// datastore's I/O budget.
	WrapReader func(path string, r io.ReaderAt) io.ReaderAt

	// OpenFile, when set, opens the disk's files (the image named to
	// Open, its extents, backing files and parents) in place of the local
	// file system, for a datastore read over its hypervisor's HTTP
	// interface. Related files are then resolved lexically against the
	// file that names them, within its folder and AllowedDirs (see
	// image.Options.OpenFile); Layers and the other rules apply as ever.
	OpenFile func(path string) (image.File, error)
}

// ErrUnnamedLayer is wrapped when an image names a related file (backing
// file, parent, extent) that may not be opened: the image's format was
// probed and the file is neither listed in Options.Layers nor allowed by
// Options.AllowUnnamedLayers, or Options.Layers is set and does not list
// it. The message names the image and the file as the image writes it.
var ErrUnnamedLayer = errors.New("snapshot: related file not named by the caller")

// ErrFormatMismatch is wrapped when the content of a disk does not match
// its declared Options.Format.
var ErrFormatMismatch = errors.New("snapshot: content does not match the declared format")

// Disk is a virtual disk opened read-only, with the volumes found on it.
// Its methods are safe for concurrent use once Open or New has returned.
type Disk struct {
	// Name is the path the disk was opened from, or the name given to New.
	Name string
	// Format is the image format ("raw", "qcow2", "vmdk/streamOptimized", ...).
	Format string
	// Size is the virtual size of the disk in bytes.
	Size int64
	// Table is the partition table: "gpt", "mbr", or "" for a disk that
	// holds a file system (or nothing known) with no table.
	Table string
	// Volumes are the partitions, logical volumes and whole-disk file
	// systems found, in table order; logical volumes come last.
	Volumes []*Volume
	// Chain lists every file the disk reads, top first: the image, its
	// extents, then its backing files or parents, each with its format,
	// size, modification time and identity digest (image.Layer).
	Chain []image.Layer

	img image.Image
}

// Volume is one partition, logical volume or whole-disk file system.
// Exactly one of FS and Err is set.
type Volume struct {
	// ID names the volume inside its disk: "p<N>" for partition N as the
	// table numbers it (logical MBR partitions from 5), "disk" for a file
	// system with no partition table, "lvm/<vg>/<lv>" for an LVM2 logical
	// volume.
	ID string
	// FileSystem is the kind of content found: "ext4", "xfs", "ntfs",
	// "fat32", "iso9660", "squashfs", "swap", "luks", "lvm2", ..., or ""
	// when nothing known was found.
	FileSystem string
	// Offset and Size locate the volume on the disk in bytes. For a
	// logical volume, Offset is -1: its extents may lie anywhere.
	Offset int64
	Size   int64
	// Label is the file system's label, if it has one.
	Label string
	// PartType describes the partition type (a GPT type name or an MBR
	// type byte), where a table gives one.
	PartType string
	// FS serves the volume's files. It implements fs.ReadDirFS, fs.StatFS
	// and fs.ReadLinkFS; symbolic links are never followed.
	FS fs.FS
	// Err says why the volume's files cannot be served (swap, encrypted,
	// unsupported or damaged file system). It wraps ErrUnsupported or the
	// file system's own error.
	Err error

	r    io.ReaderAt  // the volume's bytes
	read atomic.Int64 // bytes read through r
	// place maps a logical volume's ranges to the disk (nil for others).
	place func(off, n int64) ([]vfs.Range, error)
	// placement caches Placement (a striped LV maps to many ranges).
	placeOnce sync.Once
	placement string
	placeErr  error
}

// DiskRanges returns where the volume's bytes [off, off+n) lie on the
// disk, in the volume's order: one range for a partition or a whole-disk
// file system, one per segment, stripe chunk and physical volume crossed
// for a logical volume. The range must lie inside the volume.
func (v *Volume) DiskRanges(off, n int64) ([]vfs.Range, error) {
	if off < 0 || n < 0 || off > v.Size || n > v.Size-off {
		return nil, fmt.Errorf("snapshot: volume %s: range %d+%d outside its %d bytes", v.ID, off, n, v.Size)
	}
	if v.place != nil {
		return v.place(off, n)
	}
	if v.Offset < 0 {
		return nil, fmt.Errorf("snapshot: volume %s: where it lies on the disk is not known", v.ID)
	}
	return []vfs.Range{{Off: v.Offset + off, Len: n}}, nil
}

// Placement identifies where the whole volume lies on the disk: equal for
// two volumes whose bytes lie at the same disk offsets, in the same order
// ("at OFFSET+SIZE" for a partition; for a logical volume, a digest of
// every range it maps to).
func (v *Volume) Placement() (string, error) {
	v.placeOnce.Do(func() {
		rs, err := v.DiskRanges(0, v.Size)
		switch {
		case err != nil:
			v.placeErr = err
		case v.place == nil:
			v.placement = fmt.Sprintf("at %d+%d", rs[0].Off, rs[0].Len)
		default:
			h := sha256.New()
			for _, r := range rs {
				fmt.Fprintf(h, "%d+%d\n", r.Off, r.Len)
			}
			v.placement = fmt.Sprintf("%d ranges %x", len(rs), h.Sum(nil))
		}
	})
	return v.placement, v.placeErr
}

// BytesRead returns the bytes read from the volume so far (finding its
// file system and serving its files), as the guest's disk holds them.
func (v *Volume) BytesRead() int64 { return v.read.Load() }

// ErrUnsupported is wrapped by Volume.Err for volumes that hold no file
// system snapscan reads: swap, encrypted volumes, unknown content.
var ErrUnsupported = errors.New("snapshot: volume not supported")

// ErrNoFiles is wrapped, with ErrUnsupported, by Volume.Err for volumes
// that hold no files at all: swap space, an LVM2 physical volume (its
// logical volumes are listed on their own), a BIOS boot or Microsoft
// reserved partition, a volume whose first sectors are all zeros. A scan
// that could not read such a volume missed nothing; an encrypted, damaged
// or unknown volume is another matter (scanner.Result counts it).
var ErrNoFiles = errors.New("holds no files")

// ErrNoVolume is returned by Disk.Volume for an unknown id.
var ErrNoVolume = errors.New("snapshot: no such volume")

// Open opens the disk image or block device at path read-only, with the
// format opts.Format declares or else detected by content, and finds its
// volumes. The Disk owns the file and every related file: Close releases
// them. A volume that cannot be read is listed with its Err; only a disk
// whose image cannot be opened at all is an error.
func Open(path string, opts *Options) (*Disk, error) {
	o, err := newOpener(path, opts)
	if err != nil {
		return nil, err
	}
	img, err := o.open(path, "", o.opts.Format, 0, nil)
	if err != nil {
		return nil, err
	}
	if err := o.checkChain(img); err != nil {
		img.Close()
		return nil, err
	}
	return newDisk(img, path), nil
}

// New reads a disk whose bytes r serves, of the given size, named name in
// messages, with the format opts.Format declares or else detected by
// content. Related files (backing files, extents) are resolved against
// name when it is a path; pass "" to forbid them. Close does not close r.
func New(r io.ReaderAt, size int64, name string, opts *Options) (*Disk, error) {
	o, err := newOpener(name, opts)
	if err != nil {
		return nil, err
	}
	f := image.File{R: r, Size: size, Name: name}
	img, err := o.openFile(f, "", o.opts.Format, 0, nil)
	if err != nil {
		return nil, err
	}
	if err := o.checkChain(img); err != nil {
		img.Close()
		return nil, err
	}
	return newDisk(img, name), nil
}

// NewFromImage finds the volumes of an already opened image. Close closes img.
func NewFromImage(img image.Image, name string) *Disk { return newDisk(img, name) }

func newDisk(img image.Image, name string) *Disk {
	g := image.Guard(img, name)
	d := &Disk{Name: name, Format: img.Format(), Size: img.Size(), Chain: img.Layers(), img: g}
	d.findVolumes()
	return d
}

// Image returns the disk's bytes as the guest sees them. Its ReadAt and
// Map turn a panic of a format reader into an error naming the disk.
func (d *Disk) Image() image.Image { return d.img }

// Close releases the image and every file it opened.
func (d *Disk) Close() error { return d.img.Close() }

// Volume returns the volume with the given id.
func (d *Disk) Volume(id string) (*Volume, error) {
	for _, v := range d.Volumes {
		if v.ID == id {
			return v, nil
		}
	}
	ids := make([]string, len(d.Volumes))
	for i, v := range d.Volumes {
		ids[i] = v.ID
	}
	return nil, fmt.Errorf("%s: %w: %q (volumes: %s)", d.Name, ErrNoVolume, id, strings.Join(ids, ", "))
}

// ReaderAt returns the volume's raw bytes.
func (v *Volume) ReaderAt() io.ReaderAt { return v.r }

// opener opens images and their backing chains, bounding depth, refusing
// loops and applying the rules of Options.Format and Options.Layers.
type opener struct {
	opts   *Options
	top    string
	layers []string        // opts.Layers, resolved
	listed map[string]bool // the same, as a set
}

func newOpener(top string, opts *Options) (*opener, error) {
	if opts == nil {
		opts = &Options{}
	}
	if opts.Format != "" && opts.Format != "raw" {
		if _, ok := lookupFormat(opts.Format); !ok {
			return nil, fmt.Errorf("%s: unknown declared format %q (known: %s)", top, opts.Format, strings.Join(Formats(), ", "))
		}
	}
	o := &opener{opts: opts, top: top, listed: map[string]bool{}}
	for _, l := range opts.Layers {
		p := image.RealPath(l)
		o.layers = append(o.layers, p)
		o.listed[p] = true
	}
	return o, nil
}

// admit applies the layer rules to a related file, before it is opened.
func (o *opener) admit(referrer, name, path string) error {
	switch {
	case len(o.layers) > 0:
		if o.listed[image.RealPath(path)] {
			return nil
		}
		return fmt.Errorf("%w: Options.Layers does not list it", ErrUnnamedLayer)
	case o.opts.Format != "" || o.opts.AllowUnnamedLayers:
		return nil
	}
	return fmt.Errorf("%w: the disk's format was probed, not declared, so it opens only files listed in Options.Layers (snapscan --layer) unless AllowUnnamedLayers (--allow-unnamed-layers) is set", ErrUnnamedLayer)
}

func (o *opener) imageOptions(chain []string) *image.Options {
	return &image.Options{
		AllowedDirs: o.opts.AllowedDirs,
		WrapReader:  o.opts.WrapReader,
		OpenFile:    o.opts.OpenFile,
		Admit:       o.admit,
		OpenParent: func(path, name, format string) (image.Image, error) {
			return o.open(path, name, format, len(chain), chain)
		},
	}
}

// open opens the image file at path as the depth-th link of a chain, of
// the given format ("" to detect it); name is how its child names it.
func (o *opener) open(path, name, format string, depth int, chain []string) (image.Image, error) {
	if depth > image.MaxChainDepth {
		return nil, fmt.Errorf("%s: backing chain deeper than %d images", o.top, image.MaxChainDepth)
	}
	abs := image.RealPath(path)
	for _, p := range chain {
		if p == abs {
			return nil, fmt.Errorf("%s: backing chain loops: %q is already in it", o.top, name)
		}
	}
	f, err := o.imageOptions(nil).Open(path)
	if err != nil {
		if name != "" {
			return nil, fmt.Errorf("%s: related file %q: %w", o.top, name, err)
		}
		return nil, err
	}
	img, err := o.openFile(f, name, format, depth, append(chain[:len(chain):len(chain)], abs))
	if err != nil {
		f.Closer.Close()
		return nil, err
	}
	return img, nil
}

// openFile reads f as format ("" to detect it, "raw" for raw). On success
// the image owns f.Closer.
func (o *opener) openFile(f image.File, name, format string, depth int, chain []string) (image.Image, error) {
	iopts := o.imageOptions(chain)
	switch format {
	case "":
		return image.Detect(formats, f, iopts)
	case "raw":
		return image.NewRaw(f), nil
	}
	fm, ok := lookupFormat(format)
	if !ok {
		return nil, fmt.Errorf("%s: recorded format %q is not one snapscan reads (%s)", f.Label(), format, strings.Join(Formats(), ", "))
	}
	img, err := fm.New(f, iopts)
	if errors.Is(err, image.ErrWrongType) {
		return nil, fmt.Errorf("%s: %w: declared %s, but the content is %s: %w", f.Label(), ErrFormatMismatch, format, image.Probe(formats, f), err)
	}
	return img, err
}

// checkChain compares the chain opened with Options.Layers, when given.
func (o *opener) checkChain(img image.Image) error {
	if len(o.layers) == 0 {
		return nil
	}
	var got []string
	for _, l := range img.Layers() {
		got = append(got, image.RealPath(l.Path))
	}
	if slices.Equal(got, o.layers) {
		return nil
	}
	return fmt.Errorf("%s: %w: the disk reads %d files, Options.Layers lists %d (%s)", o.top, ErrUnnamedLayer, len(got), len(o.layers),
		strings.Join(o.opts.Layers, ", "))
}

// sortVolumes orders partitions by number, then the rest by id.
func sortVolumes(vs []*Volume) {
	sort.SliceStable(vs, func(i, j int) bool {
		pi, pj := partNum(vs[i].ID), partNum(vs[j].ID)
		if pi != pj {
			return pi < pj
		}
		return vs[i].ID < vs[j].ID
	})
}

func partNum(id string) int {
	if strings.HasPrefix(id, "p") {
		n := 0
		for _, c := range id[1:] {
			if c < '0' || c > '9' {
				return 1 << 30
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	if id == "disk" {
		return 0
	}
	return 1 << 30
}
