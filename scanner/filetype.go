package scanner

import (
	"bytes"
	"encoding/binary"
)

// File types that Filetype returns, and the magic that gives each one.
// The external variable filetype holds one of them, or "" when no magic
// is recognised.
//
//	EXE     "MZ" at 0 (DOS, PE executables and DLLs, EFI images)
//	ELF     "\x7fELF" at 0
//	MACHO   Mach-O: FEEDFACE, FEEDFACF (either byte order) at 0, or
//	        CAFEBABE followed by an architecture count below 20 (fat binary)
//	CLASS   CAFEBABE followed by a Java class-file version (>= 20)
//	DEX     "dex\n" at 0
//	WASM    "\x00asm" at 0
//	ZIP     "PK\x03\x04", "PK\x05\x06" or "PK\x07\x08" at 0 (also JAR, APK, DOCX)
//	GZIP    1F 8B at 0
//	ZSTD    28 B5 2F FD at 0
//	BZIP2   "BZh1".."BZh9" at 0
//	XZ      FD "7zXZ" 00 at 0
//	TAR     "ustar" at 257
//	7Z      "7z\xBC\xAF\x27\x1C" at 0
//	RAR     "Rar!\x1A\x07" at 0
//	CAB     "MSCF" at 0
//	OLE     D0 CF 11 E0 A1 B1 1A E1 at 0 (MSI, DOC, XLS, MSG)
//	PDF     "%PDF-" within the first 1024 bytes (as readers accept it)
//	RTF     "{\rtf" at 0
//	LNK     4C 00 00 00 01 14 02 00 at 0 (Windows shortcut)
//	PNG, JPEG, GIF
//	SCRIPT  "#!" at 0, or "<?php" at 0
const (
	TypeEXE    = "EXE"
	TypeELF    = "ELF"
	TypeMachO  = "MACHO"
	TypeClass  = "CLASS"
	TypeDEX    = "DEX"
	TypeWASM   = "WASM"
	TypeZIP    = "ZIP"
	TypeGZIP   = "GZIP"
	TypeZSTD   = "ZSTD"
	TypeBZIP2  = "BZIP2"
	TypeXZ     = "XZ"
	TypeTAR    = "TAR"
	Type7Z     = "7Z"
	TypeRAR    = "RAR"
	TypeCAB    = "CAB"
	TypeOLE    = "OLE"
	TypePDF    = "PDF"
	TypeRTF    = "RTF"
	TypeLNK    = "LNK"
	TypePNG    = "PNG"
	TypeJPEG   = "JPEG"
	TypeGIF    = "GIF"
	TypeScript = "SCRIPT"
)

// SniffLen is how many leading bytes Filetype looks at.
const SniffLen = 1024

var prefixes = []struct {
	magic string
	typ   string
}{
	{"MZ", TypeEXE},
	{"\x7fELF", TypeELF},
	{"\xfe\xed\xfa\xce", TypeMachO},
	{"\xce\xfa\xed\xfe", TypeMachO},
	{"\xfe\xed\xfa\xcf", TypeMachO},
	{"\xcf\xfa\xed\xfe", TypeMachO},
	{"dex\n", TypeDEX},
	{"\x00asm", TypeWASM},
	{"PK\x03\x04", TypeZIP},
	{"PK\x05\x06", TypeZIP},
	{"PK\x07\x08", TypeZIP},
	{"\x1f\x8b", TypeGZIP},
	{"\x28\xb5\x2f\xfd", TypeZSTD},
	{"\xfd7zXZ\x00", TypeXZ},
	{"7z\xbc\xaf\x27\x1c", Type7Z},
	{"Rar!\x1a\x07", TypeRAR},
	{"MSCF", TypeCAB},
	{"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", TypeOLE},
	{"{\\rtf", TypeRTF},
	{"\x4c\x00\x00\x00\x01\x14\x02\x00", TypeLNK},
	{"\x89PNG\r\n\x1a\n", TypePNG},
	{"\xff\xd8\xff", TypeJPEG},
	{"GIF87a", TypeGIF},
	{"GIF89a", TypeGIF},
	{"#!", TypeScript},
	{"<?php", TypeScript},
}

// Filetype names the type of a file from its first bytes (at least
// SniffLen of them when the file is that long), or returns "".
func Filetype(b []byte) string {
	if len(b) > SniffLen {
		b = b[:SniffLen]
	}
	for _, p := range prefixes {
		if len(b) >= len(p.magic) && string(b[:len(p.magic)]) == p.magic {
			return p.typ
		}
	}
	if len(b) >= 8 && string(b[:4]) == "\xca\xfe\xba\xbe" {
		// Fat Mach-O and Java classes share a magic: a fat header counts
		// architectures (a handful), a class file has its version (45+).
		if binary.BigEndian.Uint32(b[4:8]) < 20 {
			return TypeMachO
		}
		return TypeClass
	}
	if len(b) >= 3 && string(b[:3]) == "BZh" && len(b) >= 4 && b[3] >= '1' && b[3] <= '9' {
		return TypeBZIP2
	}
	if len(b) >= 262 && string(b[257:262]) == "ustar" {
		return TypeTAR
	}
	if bytes.Contains(b, []byte("%PDF-")) {
		return TypePDF
	}
	return ""
}
