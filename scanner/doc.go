// Package scanner scans the files of file systems (any fs.FS: a volume of
// a disk snapshot, a folder, a single file) with YARA rules, through
// libyara and go-yara; it is the only package of snapscan that uses cgo.
//
// Rules are compiled once (Compile, CompileSources) and shared; a Scanner
// runs a bounded pool of workers over all volumes of a Target, each worker
// with its own YARA scanner and scan memory, reused from file to file.
// Each file is scanned whole with one libyara call, as the yara command
// line tool scans a mapped file, so that results equal the tool's:
// patterns match anywhere, modules (pe, elf, math, hash) see the whole
// file and filesize is exact.
//
// # Large files
//
// A file up to the memory window (Options.SpoolAbove, 256 MiB by default)
// is read into the worker's memory and scanned there. A larger one (ISO
// images, installers, databases) is copied to a spool file, a private temp
// file in the budget's spool folder, unlinked as soon as it is created,
// and scanned from a read-only mapping of it, exactly as libyara's own
// ScanFile would map it. Streaming the file through YARA in blocks
// (ScanMemBlocks) was rejected: most patterns do not match across block
// boundaries, modules see only the block holding the header and filesize
// is undefined, so the results would differ from the yara tool's. Mapping
// the source itself was rejected too: a disk image or host file that
// shrinks under the mapping faults inside libyara, which then needs its
// process-wide signal handlers (that race the Go runtime's); the spool
// file is ours, nobody can truncate it, and libyara runs without them.
// The cost is one copy of each large file and its size in spool space,
// bounded for the whole process by the Budget. A file larger than the
// spool budget, or than Options.MaxFileSize when one is set, is not
// scanned: it is counted as too_large, and the scan is incomplete, never
// clean.
//
// # Results
//
// Per file, the string externals filename (base name), filepath (the
// '/'-separated absolute path inside the volume, /etc/hosts), extension
// (lower case with its dot, or ""), filetype (see Filetype) and owner are
// set on the worker's YARA scanner. owner is a name: where the file system
// records only a uid (ext4, XFS), the name comes from the /etc/passwd of
// the target's volumes; a uid the guest does not name, or a file system
// with no owners (FAT), gives "". Rules are compiled with all five defined
// as "".
//
// Archives (zip, tar, gzip, zstd, bzip2, xz, nested) are expanded in
// memory within ArchiveLimits, and each member is scanned like a file,
// reported as /path/a.zip!dir/inner.exe.
//
// Nothing is skipped silently: every file not scanned is counted in its
// volume's report under a reason (Skip* constants), with its error where
// there is one, and Report.Result sums up the scan as findings, clean or
// incomplete (see Result): a file too large, a YARA timeout, an archive
// member past a limit, a read error or an unreadable volume make a scan
// incomplete. Empty files are scanned (a rule "filesize == 0" matches
// them), although the yara tool refuses to map them; the verdict cache
// makes that cost one scan per rule set.
//
// # Speed
//
// libyara does the matching, as in the yara tool; what snapscan adds is
// kept small: files are read straight into the scan memory (one copy from
// the page cache, where yara maps the file), the largest listed files are
// started first so that the workers finish together, the verdict cache
// keys content with BLAKE3 (SHA-256 only for findings), and compiled rule
// sets can be kept by their sources' digest (CompileCached) so that a
// start loads them instead of compiling.
//
// # Memory
//
// The bytes held for file content, spool copy buffers and archive members
// are bounded by a Budget, one per process, shared by every Scanner given
// it (Options.Budget), and live outside the Go heap; decompressors are
// given fixed window limits and archive directories are parsed within
// fixed bounds. Anonymous memory stays under 512 MiB with the defaults,
// whatever the size of the image; a spooled file being scanned adds its
// mapped pages, which are page cache the kernel can take back.
package scanner
