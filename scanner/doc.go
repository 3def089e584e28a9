// Package scanner scans the files of file systems (any fs.FS: a volume of
// a disk snapshot, os.DirFS of a folder) with YARA rules, through libyara
// and go-yara; it is the only package of snapscan that uses cgo.
//
// Rules are compiled once (Compile, CompileSources) and shared; a Scanner
// runs a bounded pool of workers over all volumes of a Target, each worker
// with its own YARA scanner and scan memory, reused from file to file.
// Each file is read whole into memory and scanned with one ScanMem call,
// as the yara command line tool scans a mapped file, so that results
// equal the tool's: patterns match anywhere, modules (pe, elf, math, hash)
// see the whole file and filesize is exact.
//
// Per file, the string externals filename (base name), filepath (the
// '/'-separated absolute path inside the volume, /etc/hosts), extension
// (lower case with its dot, or ""), filetype (see Filetype) and owner are
// set on the worker's YARA scanner. owner is a name: where the file system
// records only a uid (ext4, XFS), the name comes from the /etc/passwd of
// the target's volumes; a uid the guest does not name, or a file system
// with no owners (FAT), gives "". Rules
// are compiled with all five defined as "".
//
// Archives (zip, tar, gzip, zstd, bzip2, xz, nested) are expanded in
// memory within ArchiveLimits, and each member is scanned like a file,
// reported as /path/a.zip!dir/inner.exe.
//
// Nothing is skipped silently: every file not scanned is counted in its
// volume's report under a reason (Skip* constants), with its error where
// there is one. Empty files are scanned (a rule "filesize == 0" matches
// them), although the yara tool refuses to map them; the verdict cache
// makes that cost one scan per rule set.
//
// Memory: the bytes held for file content and archive members are bounded
// by Options.MemoryBudget, for all workers together, and live outside the
// Go heap; decompressors are given fixed window limits and archive
// directories are parsed within fixed bounds. Peak RSS stays under
// 512 MiB with the defaults, whatever the size of the image.
package scanner
