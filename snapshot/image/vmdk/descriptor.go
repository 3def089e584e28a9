package vmdk

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Limits on descriptors: real ones are a few hundred bytes with a handful
// of extents.
const (
	maxDescriptorBytes = 1 << 20
	maxExtents         = 1024
	maxSectors         = 1 << 37 // 64 TiB, above VMware's 62 TB limit
	noParentCID        = 0xffffffff
)

// Extent types of the descriptor's extent lines (Virtual Disk Format 1.1,
// "Extent Descriptions").
const (
	extFlat   = "FLAT"
	extSparse = "SPARSE"
	extZero   = "ZERO"
	extVMFS   = "VMFS" // a flat extent on a VMFS datastore
)

// descriptor is the parsed text descriptor of a VMDK disk.
type descriptor struct {
	createType string
	cid        uint32 // content id of this disk; noParentCID if absent
	parentCID  uint32
	parentHint string // parentFileNameHint, "" if none
	extents    []extentLine
}

// extentLine is one line of the extent description:
// ACCESS SECTORS TYPE ["FILENAME" [OFFSET]].
type extentLine struct {
	access  string
	sectors int64
	typ     string
	file    string
	offset  int64 // in sectors, FLAT only
	line    int
}

// isDescriptor reports whether b, the start of a file, is a text
// descriptor: comment and blank lines, then "version=N" (as qemu's probe).
func isDescriptor(b []byte) bool {
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		t := bytes.TrimRight(line, "\r")
		switch {
		case bytes.HasPrefix(t, []byte("#")):
		case len(bytes.Trim(t, " \t")) == 0:
		default:
			v := string(bytes.TrimSpace(t))
			return v == "version=1" || v == "version=2" || v == "version=3"
		}
		b = rest
	}
	return false
}

// parseDescriptor parses descriptor text (NUL padding allowed at its end).
func parseDescriptor(text []byte) (*descriptor, error) {
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	d := &descriptor{cid: noParentCID, parentCID: noParentCID}
	var total int64
	for n, raw := range strings.Split(string(text), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		first, _, _ := strings.Cut(line, " ")
		switch first {
		case "RW", "RDONLY", "NOACCESS":
			e, err := parseExtentLine(line)
			if err != nil {
				return nil, fmt.Errorf("descriptor line %d: %w", n+1, err)
			}
			e.line = n + 1
			if len(d.extents) == maxExtents {
				return nil, fmt.Errorf("descriptor line %d: more than %d extents", n+1, maxExtents)
			}
			total += e.sectors
			if total > maxSectors {
				return nil, fmt.Errorf("descriptor line %d: extents add up to more than %d sectors", n+1, int64(maxSectors))
			}
			d.extents = append(d.extents, e)
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue // unknown lines are ignored, as VMware and qemu do
		}
		key, val = strings.TrimSpace(key), unquote(strings.TrimSpace(val))
		switch key {
		case "createType":
			d.createType = val
		case "CID", "parentCID":
			cid, err := strconv.ParseUint(val, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("descriptor line %d: %s %q is not a hexadecimal number", n+1, key, val)
			}
			if key == "CID" {
				d.cid = uint32(cid)
			} else {
				d.parentCID = uint32(cid)
			}
		case "parentFileNameHint":
			d.parentHint = val
		}
	}
	return d, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

func parseExtentLine(line string) (extentLine, error) {
	var e extentLine
	fields := strings.Fields(line)
	if len(fields) < 3 {
		return e, fmt.Errorf("extent line %q has too few fields", line)
	}
	e.access, e.typ = fields[0], fields[2]
	n, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil || n <= 0 || n > maxSectors {
		return e, fmt.Errorf("extent size %q is not a number of sectors in 1..%d", fields[1], int64(maxSectors))
	}
	e.sectors = n
	if e.typ == extZero {
		return e, nil
	}
	// The file name is quoted and may hold spaces.
	_, rest, ok := strings.Cut(line, `"`)
	name, after, ok2 := strings.Cut(rest, `"`)
	if !ok || !ok2 || name == "" {
		return e, fmt.Errorf("extent line %q lacks a quoted file name", line)
	}
	e.file = name
	if after = strings.TrimSpace(after); after != "" {
		off, err := strconv.ParseInt(strings.Fields(after)[0], 10, 64)
		if err != nil || off < 0 || off > maxSectors {
			return e, fmt.Errorf("extent offset %q is not a sector number", after)
		}
		e.offset = off
	}
	return e, nil
}
