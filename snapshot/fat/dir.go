package fat

import (
	"encoding/binary"
	"strings"
	"unicode/utf16"
)

// lfnChars are the byte offsets of the 13 UTF-16 units in a long-name entry.
var lfnChars = [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}

// maxLFNEntries is the most long-name entries one name may take (255
// UTF-16 units).
const maxLFNEntries = 20

// parseDir calls fn for each live entry of the directory bytes b, with its
// name: the long name when its entries are complete, in order and carry
// the short entry's checksum, else the 8.3 name. ".", "..", deleted
// entries and volume labels are skipped. Parsing stops at the end marker.
// fn also gets the byte offsets in b of the short entry and of the first
// entry that names it (its first long-name entry, or the short entry).
func parseDir(b []byte, fn func(name string, e []byte, off, first int) error) error {
	var (
		lfn   [maxLFNEntries * 13]uint16
		count int // entries of the pending long name, 0 if none
		next  int // ordinal expected next; 0 once complete
		sum   byte
		start int // offset of the pending long name's first entry
	)
	for off := 0; off+32 <= len(b); off += 32 {
		e := b[off : off+32]
		if e[0] == 0x00 {
			return nil
		}
		if e[0] == 0xE5 {
			count = 0
			continue
		}
		if e[11]&0x3F == attrLFN {
			ord := int(e[0] & 0x1F)
			switch {
			case e[0]&0x40 != 0 && ord >= 1 && ord <= maxLFNEntries:
				count, next, sum, start = ord, ord, e[13], off
				clear(lfn[:])
			case count == 0 || ord != next || e[13] != sum:
				count = 0
				continue
			}
			k := (ord - 1) * 13
			for i, o := range lfnChars {
				lfn[k+i] = binary.LittleEndian.Uint16(e[o:])
			}
			next--
			continue
		}
		var long string
		first := off
		if count > 0 && next == 0 && checksum(e[:11]) == sum {
			long = decodeUTF16(lfn[:count*13])
			first = start
		}
		count = 0
		if e[11]&attrVolume != 0 {
			continue
		}
		short := shortName(e)
		if short == "." || short == ".." {
			continue
		}
		name := short
		if long != "" && !strings.ContainsAny(long, "/\x00") {
			name = long
		} else {
			first = off
		}
		if err := fn(name, e, off, first); err != nil {
			return err
		}
	}
	return nil
}

// findLabel returns the volume label entry of a root directory.
func findLabel(b []byte) (string, bool) {
	for off := 0; off+32 <= len(b); off += 32 {
		e := b[off : off+32]
		if e[0] == 0x00 {
			break
		}
		if e[0] != 0xE5 && e[11]&0x3F != attrLFN && e[11]&(attrVolume|attrDir) == attrVolume {
			return strings.TrimRight(decodeOEM(e[:11]), " "), true
		}
	}
	return "", false
}

// checksum is the short-name checksum stored in long-name entries.
func checksum(name []byte) byte {
	var s byte
	for _, c := range name {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

// decodeUTF16 decodes a long name up to its NUL terminator; unpaired
// surrogates become U+FFFD.
func decodeUTF16(u []uint16) string {
	for i, c := range u {
		if c == 0 {
			u = u[:i]
			break
		}
	}
	return string(utf16.Decode(u))
}

// shortName returns the 8.3 name of entry e, with the base and extension
// lower-cased where the Windows NT flags (byte 12) say so.
func shortName(e []byte) string {
	var raw [11]byte
	copy(raw[:], e[:11])
	if raw[0] == 0x05 { // an initial 0xE5 byte is stored as 0x05
		raw[0] = 0xE5
	}
	base := strings.TrimRight(decodeOEM(raw[:8]), " ")
	ext := strings.TrimRight(decodeOEM(raw[8:]), " ")
	if e[12]&0x08 != 0 {
		base = lowerASCII(base)
	}
	if e[12]&0x10 != 0 {
		ext = lowerASCII(ext)
	}
	if ext == "" {
		return base
	}
	return base + "." + ext
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// decodeOEM decodes code page 437, the OEM code page short names and
// labels are most often written in.
func decodeOEM(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		if c < 0x80 {
			sb.WriteByte(c)
		} else {
			sb.WriteRune(cp437[c-0x80])
		}
	}
	return sb.String()
}

var cp437 = [128]rune([]rune(
	"ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»" +
		"░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀" +
		"αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0"))
