package snapshot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"

	"github.com/snapscan/snapscan/snapshot/image"
)

// Options controls how a disk is opened. The zero value is ready to use.
type Options struct {
	// AllowedDirs lists folders, besides the image's own folder and those
	// below it, from which backing files, parent disks and extents may be
	// read. See image.Options.
	AllowedDirs []string

	// WrapReader, when set, wraps every file the disk reads (the image,
	// its extents and backing chain), for example to hold the reads to a
	// datastore's I/O budget.
	WrapReader func(path string, r io.ReaderAt) io.ReaderAt
}

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

	r io.ReaderAt // the volume's bytes
}

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

// Open opens the disk image or block device at path read-only, detects
// its format by content, and finds its volumes. The Disk owns the file:
// Close releases it. A volume that cannot be read is listed with its Err;
// only a disk whose image cannot be opened at all is an error.
func Open(path string, opts *Options) (*Disk, error) {
	if opts == nil {
		opts = &Options{}
	}
	o := &opener{opts: opts}
	img, err := o.open(path, 0, nil)
	if err != nil {
		return nil, err
	}
	return newDisk(img, path), nil
}

// New reads a disk whose bytes r serves, of the given size, named name in
// messages. Related files (backing files, extents) are resolved against
// name when it is a path; pass "" to forbid them. Close does not close r.
func New(r io.ReaderAt, size int64, name string, opts *Options) (*Disk, error) {
	if opts == nil {
		opts = &Options{}
	}
	o := &opener{opts: opts}
	img, err := o.detect(r, size, name, 0, nil, nil)
	if err != nil {
		return nil, err
	}
	return newDisk(img, name), nil
}

// NewFromImage finds the volumes of an already opened image. Close closes img.
func NewFromImage(img image.Image, name string) *Disk { return newDisk(img, name) }

func newDisk(img image.Image, name string) *Disk {
	d := &Disk{Name: name, Format: img.Format(), Size: img.Size(), img: img}
	d.findVolumes()
	return d
}

// Image returns the disk's bytes as the guest sees them.
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

// opener opens images and their backing chains, bounding depth and
// refusing loops.
type opener struct {
	opts *Options
}

func (o *opener) imageOptions(chain []string) *image.Options {
	return &image.Options{
		AllowedDirs: o.opts.AllowedDirs,
		WrapReader:  o.opts.WrapReader,
		OpenParent: func(path string) (image.Image, error) {
			return o.open(path, len(chain), chain)
		},
	}
}

// open opens the image file at path as the depth-th link of a chain.
func (o *opener) open(path string, depth int, chain []string) (image.Image, error) {
	if depth > image.MaxChainDepth {
		return nil, fmt.Errorf("%s: backing chain deeper than %d images: %s", path, image.MaxChainDepth, strings.Join(chain, " -> "))
	}
	abs, err := filepath.Abs(path)
	if err == nil {
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
	}
	for _, p := range chain {
		if p == abs {
			return nil, fmt.Errorf("%s: backing chain loops: %s -> %s", path, strings.Join(chain, " -> "), abs)
		}
	}
	f, err := image.OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	size, err := image.SizeOf(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open image %s: %w", path, err)
	}
	r := o.opts.WrapReader
	var ra io.ReaderAt = f
	if r != nil {
		ra = r(path, f)
	}
	img, err := o.detect(ra, size, path, depth, append(chain[:len(chain):len(chain)], abs), f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

// closeBoth closes an image and then the file under it.
type closeBoth struct {
	image.Image
	f io.Closer
}

// Unwrap returns the format reader, for image.Unwrap.
func (c closeBoth) Unwrap() image.Image { return c.Image }

func (c closeBoth) Close() error {
	err := c.Image.Close()
	if c.f != nil {
		if err2 := c.f.Close(); err == nil {
			err = err2
		}
	}
	return err
}

// detect tries each image format in turn on r.
func (o *opener) detect(r io.ReaderAt, size int64, name string, depth int, chain []string, f io.Closer) (img image.Image, err error) {
	defer func() {
		// A format reader must never take the process down on hostile bytes.
		if p := recover(); p != nil {
			img, err = nil, fmt.Errorf("%s: image reader failed on corrupt input: %v", name, p)
		}
	}()
	iopts := o.imageOptions(chain)
	for _, fmtr := range formats {
		img, err := fmtr.open(r, size, name, iopts)
		if err == nil {
			return closeBoth{img, f}, nil
		}
		if !errors.Is(err, image.ErrWrongType) {
			return nil, fmt.Errorf("%s: %s image: %w", name, fmtr.name, err)
		}
	}
	return closeBoth{image.NewRaw(r, size, nil), f}, nil
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
