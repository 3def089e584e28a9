package vhd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf16"

	"github.com/snapscan/snapscan/snapshot/image"
)

// Parent locator platform codes that hold a path in UTF-16LE.
const (
	platW2ru = 0x57327275 // "W2ru": path relative to the child's folder
	platW2ku = 0x57326B75 // "W2ku": absolute path
)

// parentCandidates lists the names under which the parent may be found,
// in the order they are tried: the relative locator, the absolute one,
// then the bare name from the header.
func (img *Image) parentCandidates(h *dynHeader) []string {
	var rel, abs []string
	for i := range 8 {
		e := h.locatorBytes[i*24 : i*24+24]
		code := binary.BigEndian.Uint32(e[0:4])
		if code != platW2ru && code != platW2ku {
			continue
		}
		n := binary.BigEndian.Uint32(e[8:12])
		off := binary.BigEndian.Uint64(e[16:24])
		if n == 0 || n > maxLocatorLen || off > uint64(img.fileSize) || uint64(img.fileSize)-off < uint64(n) {
			continue
		}
		b := make([]byte, n)
		if _, err := img.r.ReadAt(b, int64(off)); err != nil {
			continue
		}
		p := windowsPath(decodeUTF16(b, binary.LittleEndian))
		if p == "" {
			continue
		}
		if code == platW2ru {
			rel = append(rel, p)
		} else if !hasDrive(p) {
			// A drive-letter path means nothing on this host; the
			// relative locator or the file name stands in for it.
			abs = append(abs, p)
		}
	}
	names := append(rel, abs...)
	if p := windowsPath(h.parentName); p != "" {
		names = append(names, filepath.Base(p))
	}
	return names
}

func (img *Image) openParent(h *dynHeader, hdrOff uint64, opts *image.Options) error {
	if img.f.Name == "" {
		return fmt.Errorf("%s: %w: differencing disk read without a path", img.name, ErrNoParent)
	}
	names := img.parentCandidates(h)
	if len(names) == 0 {
		return fmt.Errorf("%s: %w: differencing disk names no parent (header at offset %d)", img.name, ErrNoParent, hdrOff)
	}
	self, _ := filepath.EvalSymlinks(img.name)
	var errs []error
	for _, n := range names {
		p, err := opts.Resolve(img.name, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if self != "" && p == self {
			errs = append(errs, fmt.Errorf("parent %q is the image itself", n))
			continue
		}
		parent, err := opts.OpenParentImage(p, n, "vhd", func(f image.File, o *image.Options) (image.Image, error) { return New(f, o) })
		if err != nil {
			return fmt.Errorf("%s: opening parent %q: %w", img.name, n, err)
		}
		// A VHD's parent is a VHD that carries the unique id the child recorded.
		id, ok := parent.(interface{ UniqueID() [16]byte })
		if !ok || id.UniqueID() != h.parentID {
			parent.Close()
			got := "none"
			if ok {
				got = fmt.Sprintf("%x", id.UniqueID())
			}
			return img.corrupt(int64(hdrOff)+40, fmt.Sprintf("parent %q (%s) has unique id %s, the child expects %x (parent modified or replaced)", n, parent.Format(), got, h.parentID))
		}
		img.stack.Parent, img.stack.ParentName = parent, n
		return nil
	}
	return fmt.Errorf("%s: %w: %w", img.name, ErrNoParent, errors.Join(errs...))
}

// windowsPath turns a path written by Windows into a slash-separated one.
func windowsPath(s string) string {
	s = strings.ReplaceAll(s, `\`, "/")
	s = strings.TrimPrefix(s, "//?/")
	return s
}

func hasDrive(p string) bool {
	return len(p) >= 2 && p[1] == ':' && (p[0]|0x20 >= 'a' && p[0]|0x20 <= 'z')
}

// decodeUTF16 decodes b up to the first NUL code unit.
func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
