package vhdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf16"

	"github.com/snapscan/snapscan/snapshot/image"
)

// Parent locator keys (MS-VHDX 2.6.2.6.3), in the order the specification
// says paths are tried.
var pathKeys = []string{"relative_path", "volume_path", "absolute_win32_path"}

// parseLocator returns the key-value pairs of a VHDX parent locator.
func (img *Image) parseLocator(item []byte, at int64) (map[string]string, error) {
	if len(item) < 20 {
		return nil, img.corrupt(at, "parent locator is shorter than its 20-byte header")
	}
	var typ guid
	copy(typ[:], item[0:16])
	if typ != guidVHDXLocator {
		return nil, img.corrupt(at, fmt.Sprintf("parent locator type %s is not the VHDX locator", typ))
	}
	n := int(binary.LittleEndian.Uint16(item[18:20]))
	if 20+n*12 > len(item) {
		return nil, img.corrupt(at, fmt.Sprintf("parent locator with %d entries does not fit in %d bytes", n, len(item)))
	}
	kv := make(map[string]string, n)
	field := func(off uint32, length uint16) (string, bool) {
		if length == 0 || uint64(off)+uint64(length) > uint64(len(item)) {
			return "", false
		}
		return decodeUTF16LE(item[off : off+uint32(length)]), true
	}
	for i := range n {
		e := item[20+i*12:]
		k, ok1 := field(binary.LittleEndian.Uint32(e[0:4]), binary.LittleEndian.Uint16(e[8:10]))
		v, ok2 := field(binary.LittleEndian.Uint32(e[4:8]), binary.LittleEndian.Uint16(e[10:12]))
		if !ok1 || !ok2 {
			return nil, img.corrupt(at+20+int64(i)*12, fmt.Sprintf("parent locator entry %d lies outside the locator", i))
		}
		kv[k] = v
	}
	return kv, nil
}

func (img *Image) openParent(item []byte, mr region, opts *image.Options) error {
	kv, err := img.parseLocator(item, mr.off)
	if err != nil {
		return err
	}
	linkage, ok := parseGUID(kv["parent_linkage"])
	if !ok {
		return img.corrupt(mr.off, fmt.Sprintf("parent locator has no valid parent_linkage (%q)", kv["parent_linkage"]))
	}
	linkage2, has2 := parseGUID(kv["parent_linkage2"])
	if img.f.Name == "" {
		return fmt.Errorf("%s: %w: differencing disk read without a path", img.name, ErrNoParent)
	}
	var names []string
	for _, k := range pathKeys {
		p, ok := kv[k]
		if !ok {
			continue
		}
		p = strings.TrimPrefix(strings.ReplaceAll(p, `\`, "/"), "//?/")
		// Volume GUID paths and drive letters mean nothing on this
		// host; the relative path stands in for them.
		if p == "" || strings.HasPrefix(p, "Volume{") || (len(p) >= 2 && p[1] == ':') {
			continue
		}
		names = append(names, p)
	}
	if len(names) == 0 {
		return fmt.Errorf("%s: %w: parent locator has no usable path (%v)", img.name, ErrNoParent, kv)
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
		parent, err := opts.OpenParentImage(p, n, "vhdx", func(f image.File, o *image.Options) (image.Image, error) { return New(f, o) })
		if err != nil {
			return fmt.Errorf("%s: opening parent %q: %w", img.name, n, err)
		}
		// A VHDX's parent is a VHDX whose data write GUID the child recorded.
		var got guid
		w, ok := parent.(interface{ DataWriteGUID() [16]byte })
		if ok {
			got = guid(w.DataWriteGUID())
		}
		if !ok || (got != linkage && !(has2 && got == linkage2)) {
			parent.Close()
			return img.corrupt(mr.off, fmt.Sprintf("parent %q (%s) has data write GUID %s, the child expects %s (parent modified or replaced)", n, parent.Format(), got, linkage))
		}
		img.stack.Parent, img.stack.ParentName = parent, n
		return nil
	}
	return fmt.Errorf("%s: %w: %w", img.name, ErrNoParent, errors.Join(errs...))
}

func decodeUTF16LE(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[i*2:])
	}
	return string(utf16.Decode(u))
}
