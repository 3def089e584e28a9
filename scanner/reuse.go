package scanner

// Reuse lets a scan take the outcome of a file from an earlier scan
// instead of reading it, and records the outcome of every file it reads
// (scanner/incremental implements it for the disks of a backing chain).
// Its methods are called by the scan's workers at once: they must be safe
// for concurrent use.
//
// The contract: Lookup returns an outcome only for a file whose bytes are
// known, without reading them, to be the bytes that the outcome was
// computed from, and — when context is not all zero (rules that read
// filename, filepath, extension or owner) — under the same externals.
type Reuse interface {
	// Rules is the Rules.ID the outcomes were recorded under: a Scanner
	// with other rules neither asks nor tells.
	Rules() string
	// Lookup is asked before the named regular file (an fs.FS name) of
	// volume vol (an index in Target.Volumes) is opened; context is the
	// file's CacheKey.Context. ok false: the file is read and scanned.
	Lookup(vol int, name string, context [32]byte) (o Outcome, ok bool)
	// Record is told the outcome of each file that was read whole and
	// scanned with no error, timeout or archive expansion.
	Record(vol int, name string, o Outcome)
}

// Outcome is what scanning one file gave, enough to give its verdict
// again without reading it.
type Outcome struct {
	Size    int64
	Content [32]byte // CacheKey.Content: keyed BLAKE3 of the bytes
	Context [32]byte // CacheKey.Context
	SHA256  [32]byte // of the bytes, set when Matches is not empty
	// Matches are every rule that matched, before Options.Tags and
	// SkipTags; nil for a clean file.
	Matches []Match
}
