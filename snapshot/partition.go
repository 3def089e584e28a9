package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// partition is one entry of a partition table.
type partition struct {
	num   int    // as the table numbers it (1-based; MBR logical from 5)
	start int64  // bytes
	size  int64  // bytes
	typ   string // human-readable type
	skip  string // non-empty: holds no file system, with this reason
	bad   string // non-empty: the entry is invalid, with this reason
}

// Hard bounds on hostile tables.
const (
	maxGPTEntries   = 4096
	maxLogicalParts = 256
)

var errNoTable = errors.New("no partition table")

// readTable finds a GPT or MBR partition table. It returns errNoTable when
// the disk has none (it may hold a file system directly).
func readTable(r io.ReaderAt, size int64) (string, []partition, error) {
	var mbr [512]byte
	if _, err := r.ReadAt(mbr[:], 0); err != nil {
		return "", nil, fmt.Errorf("reading sector 0: %w", err)
	}
	hasSig := mbr[510] == 0x55 && mbr[511] == 0xAA
	// GPT: a header at LBA 1 (512-byte sectors) or LBA 1 of 4096-byte ones.
	for _, ss := range []int64{512, 4096} {
		var sig [8]byte
		if _, err := r.ReadAt(sig[:], ss); err == nil && string(sig[:]) == "EFI PART" {
			parts, err := readGPT(r, size, int(ss))
			if err != nil {
				return "gpt", nil, err
			}
			return "gpt", parts, nil
		}
	}
	if !hasSig || looksLikeBootSector(mbr[:]) {
		return "", nil, errNoTable
	}
	parts, err := readMBR(r, size, mbr[:])
	if err != nil {
		return "mbr", nil, err
	}
	if len(parts) == 0 {
		return "", nil, errNoTable
	}
	return "mbr", parts, nil
}

// looksLikeBootSector reports whether sector 0 is the boot sector of a
// FAT or NTFS file system (which also ends in 55 AA) rather than an MBR.
func looksLikeBootSector(b []byte) bool {
	if string(b[3:11]) == "NTFS    " || string(b[3:11]) == "EXFAT   " || string(b[3:11]) == "-FVE-FS-" {
		return true
	}
	if b[0] != 0xEB && b[0] != 0xE9 {
		return false
	}
	bps := binary.LittleEndian.Uint16(b[11:13])
	spc := b[13]
	if bps != 512 && bps != 1024 && bps != 2048 && bps != 4096 || spc == 0 || spc&(spc-1) != 0 {
		return false
	}
	// A BPB with a sane geometry and a FAT count: the MBR status bytes of
	// such a sector are part of boot code, not a table.
	return b[16] == 1 || b[16] == 2
}

var mbrTypes = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x06: "FAT16", 0x07: "NTFS/exFAT", 0x0b: "W95 FAT32",
	0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)", 0x27: "Windows recovery", 0x82: "Linux swap",
	0x83: "Linux", 0x8e: "Linux LVM", 0xa5: "FreeBSD", 0xee: "GPT protective", 0xef: "EFI System",
	0xfd: "Linux raid autodetect",
}

func mbrTypeName(t byte) string {
	if n, ok := mbrTypes[t]; ok {
		return fmt.Sprintf("0x%02x %s", t, n)
	}
	return fmt.Sprintf("0x%02x", t)
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// readMBR reads the four primary entries and the chain of extended boot
// records, numbering logical partitions from 5 as Linux does.
func readMBR(r io.ReaderAt, size int64, sector0 []byte) ([]partition, error) {
	var parts []partition
	var extStart, extSize int64 = -1, 0
	for i := 0; i < 4; i++ {
		e := sector0[446+16*i : 446+16*(i+1)]
		status, typ := e[0], e[4]
		lba := int64(binary.LittleEndian.Uint32(e[8:12]))
		n := int64(binary.LittleEndian.Uint32(e[12:16]))
		if typ == 0 || n == 0 {
			continue
		}
		if status != 0 && status != 0x80 {
			return nil, fmt.Errorf("mbr: entry %d has invalid status byte 0x%02x", i+1, status)
		}
		p := partition{num: i + 1, start: lba * 512, size: n * 512, typ: mbrTypeName(typ)}
		if isExtended(typ) {
			if extStart >= 0 {
				return nil, fmt.Errorf("mbr: more than one extended partition (entry %d)", i+1)
			}
			extStart, extSize = p.start, p.size
			continue // the container itself holds no file system
		}
		parts = append(parts, p)
	}
	if extStart >= 0 {
		logical, err := readEBRs(r, size, extStart, extSize)
		parts = append(parts, logical...)
		if err != nil {
			return parts, err
		}
	}
	return parts, nil
}

// readEBRs follows the linked list of extended boot records.
func readEBRs(r io.ReaderAt, size, extStart, extSize int64) ([]partition, error) {
	var parts []partition
	seen := map[int64]bool{}
	next := extStart
	for num := 5; ; num++ {
		if num-5 >= maxLogicalParts {
			return parts, fmt.Errorf("mbr: more than %d logical partitions", maxLogicalParts)
		}
		if seen[next] {
			return parts, fmt.Errorf("mbr: extended boot record chain loops at byte offset %d", next)
		}
		seen[next] = true
		var ebr [512]byte
		if _, err := r.ReadAt(ebr[:], next); err != nil {
			return parts, fmt.Errorf("mbr: reading extended boot record at byte offset %d: %w", next, err)
		}
		if ebr[510] != 0x55 || ebr[511] != 0xAA {
			return parts, fmt.Errorf("mbr: extended boot record at byte offset %d has no 55 AA signature", next)
		}
		e1, e2 := ebr[446:462], ebr[462:478]
		if t := e1[4]; t != 0 {
			lba := int64(binary.LittleEndian.Uint32(e1[8:12]))
			n := int64(binary.LittleEndian.Uint32(e1[12:16]))
			parts = append(parts, partition{num: num, start: next + lba*512, size: n * 512, typ: mbrTypeName(t)})
		}
		if e2[4] == 0 {
			return parts, nil
		}
		// The link is relative to the start of the extended partition.
		next = extStart + int64(binary.LittleEndian.Uint32(e2[8:12]))*512
		if next <= extStart || next >= extStart+extSize || next >= size {
			return parts, fmt.Errorf("mbr: extended boot record link points outside the extended partition (byte offset %d)", next)
		}
	}
}

// Well-known GPT partition types, lower-case GUIDs.
var gptTypes = map[string]struct{ name, skip string }{
	"c12a7328-f81f-11d2-ba4b-00a0c93ec93b": {"EFI System", ""},
	"e3c9e316-0b5c-4db8-817d-f92df00215ae": {"Microsoft reserved", "Microsoft reserved partition"},
	"ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": {"Microsoft basic data", ""},
	"de94bba4-06d1-4d40-a16a-bfd50179d6ac": {"Windows recovery", ""},
	"21686148-6449-6e6f-744e-656564454649": {"BIOS boot", "BIOS boot partition (boot loader code)"},
	"0fc63daf-8483-4772-8e79-3d69d8477de4": {"Linux filesystem", ""},
	"e6d6d379-f507-44c2-a23c-238f2a3df928": {"Linux LVM", ""},
	"0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": {"Linux swap", ""},
	"bc13c2ff-59e6-4262-a352-b275fd6f7172": {"Linux extended boot", ""},
	"4f68bce3-e8cd-4db1-96e7-fbcaf984b709": {"Linux root (x86-64)", ""},
	"a19d880f-05fc-4d3b-a006-743f0f84911e": {"Linux RAID", ""},
	"ca7d7ccb-63ed-4c53-861c-1742536059cc": {"Linux LUKS", ""},
}

// readGPT reads a GPT (UEFI specification 2.10, 5.3) whose header is at
// LBA 1 of ss-byte sectors: the header's size, CRC and entry-array bounds
// are checked, then the entry array's CRC, then each entry. LBAs are
// checked before any byte offset is computed from them, so a hostile
// entry cannot overflow into a negative size.
func readGPT(r io.ReaderAt, size int64, ss int) ([]partition, error) {
	hdr := make([]byte, ss)
	if _, err := r.ReadAt(hdr, int64(ss)); err != nil {
		return nil, fmt.Errorf("gpt: reading header at byte offset %d: %w", ss, err)
	}
	le := binary.LittleEndian
	hsize := le.Uint32(hdr[12:16])
	if hsize < 92 || int(hsize) > ss {
		return nil, fmt.Errorf("gpt: header size %d out of range (at byte offset %d)", hsize, ss+12)
	}
	sum := le.Uint32(hdr[16:20])
	chk := bytes.Clone(hdr[:hsize])
	clear(chk[16:20])
	if crc32.ChecksumIEEE(chk) != sum {
		return nil, fmt.Errorf("gpt: header checksum mismatch (at byte offset %d)", ss)
	}
	count := le.Uint32(hdr[80:84])
	esize := le.Uint32(hdr[84:88])
	first := le.Uint64(hdr[72:80])
	sectors := uint64(size) / uint64(ss)
	switch {
	case count == 0 || count > maxGPTEntries:
		return nil, fmt.Errorf("gpt: %d partition entries, want 1 to %d (at byte offset %d)", count, maxGPTEntries, ss+80)
	case esize < 128 || esize > 4096 || esize%8 != 0:
		return nil, fmt.Errorf("gpt: partition entry size %d out of range (at byte offset %d)", esize, ss+84)
	case first < 2 || first > sectors || first*uint64(ss)+uint64(count)*uint64(esize) > uint64(size):
		return nil, fmt.Errorf("gpt: partition entries at LBA %d lie outside the %d-byte disk", first, size)
	}
	table := make([]byte, int(count)*int(esize))
	if _, err := r.ReadAt(table, int64(first)*int64(ss)); err != nil {
		return nil, fmt.Errorf("gpt: reading partition entries at LBA %d: %w", first, err)
	}
	if got, want := crc32.ChecksumIEEE(table), le.Uint32(hdr[88:92]); got != want {
		return nil, fmt.Errorf("gpt: partition entry array checksum is %#08x, the header says %#08x (at byte offset %d)", got, want, ss+88)
	}
	var parts []partition
	for i := range int(count) {
		e := table[i*int(esize):]
		typ := guidString(e[0:16])
		if typ == "00000000-0000-0000-0000-000000000000" {
			continue
		}
		lo, hi := le.Uint64(e[32:40]), le.Uint64(e[40:48])
		pt := partition{num: i + 1, typ: typ}
		if known, ok := gptTypes[typ]; ok {
			pt.typ, pt.skip = known.name, known.skip
		}
		if name := utf16Name(e[56:128]); name != "" {
			pt.typ += " (" + name + ")"
		}
		if lo > hi || hi >= sectors {
			pt.bad = fmt.Sprintf("GPT entry %d gives LBAs %d to %d, outside the disk's %d sectors", i+1, lo, hi, sectors)
		} else {
			pt.start, pt.size = int64(lo)*int64(ss), int64(hi-lo+1)*int64(ss)
		}
		parts = append(parts, pt)
	}
	return parts, nil
}

// guidString formats a GUID stored as GPT stores it (the first three
// fields little-endian), lower case.
func guidString(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:4]), le.Uint16(b[4:6]), le.Uint16(b[6:8]), b[8:10], b[10:16])
}

// utf16Name decodes a GPT partition name (UTF-16LE, NUL-padded).
func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
