package scanner

import (
	"encoding/json"
	"io/fs"
	"time"
)

// Target is what one Scan covers: a disk image, a block device or a
// folder, made of one or more volumes.
type Target struct {
	Name    string // shown in findings and reports: the image path, for example
	Volumes []Volume
}

// Volume is one file system of a target.
type Volume struct {
	ID         string // "p1", "vg0/root", "." ...: unique within the target
	FileSystem string // "ext4", "ntfs", "dir" ...
	FS         fs.FS  // nil when Err is set
	// Err records why the volume cannot be read (unknown file system,
	// damaged superblock). Such a volume is reported, not scanned.
	Err error
}

// Match is one rule that matched.
type Match struct {
	Rule      string      `json:"rule"`
	Namespace string      `json:"namespace"`
	Tags      []string    `json:"tags"`
	Meta      []MetaEntry `json:"meta"`
}

// MetaEntry is one metadata field of a rule. Meta is a list, in the rule's
// order, rather than an object because rules repeat keys (several "hash"
// entries are common in public rule sets). Value is a string, an int or a
// bool.
type MetaEntry struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// Finding is a file, or archive member, that matched at least one rule.
type Finding struct {
	Target string `json:"target"`
	Volume string `json:"volume"`
	// Path is '/'-separated and absolute within the volume; an archive
	// member is written /path/a.zip!dir/inner.exe, and the single member
	// of a compressed stream (gzip, zstd, bzip2, xz) is named after the
	// stream without its compression suffix: /x/b.tar.gz!b.tar!etc/passwd.
	Path    string  `json:"path"`
	Size    int64   `json:"size"`
	SHA256  string  `json:"sha256"` // hex
	Matches []Match `json:"matches"`
}

// Skip reasons: the keys of VolumeReport.Skipped.
const (
	SkipTooLarge    = "too_large"    // larger than Options.MaxFileSize
	SkipExcluded    = "excluded"     // a file matched an exclusion glob
	SkipExcludedDir = "excluded_dir" // a folder matched one: its content was not listed
	SkipNotRegular  = "not_regular"  // link, device, fifo, socket (also inside archives)
	SkipReadError   = "read_error"   // unreadable file, folder or archive member
	SkipTimeout     = "timeout"      // YARA's per-file timeout fired
	SkipLimitHit    = "limit_hit"    // an archive limit stopped expansion (member not scanned)
	SkipScanError   = "scan_error"   // libyara failed for another reason
	SkipCanceled    = "canceled"     // listed but not scanned because the scan was canceled
)

// VolumeReport says what happened to one volume.
type VolumeReport struct {
	ID         string `json:"id"`
	FileSystem string `json:"file_system"`
	// Err is why the volume was not scanned at all (Volume.Err).
	Err string `json:"error,omitempty"`
	// Files and Bytes count the files and archive members whose content
	// was checked, by YARA or by the verdict cache.
	Files int64 `json:"files"`
	Bytes int64 `json:"bytes"`
	// Cached counts the files of Files whose verdict came from the cache.
	Cached int64 `json:"cached"`
	// Skipped counts what was not scanned, by reason (Skip* constants).
	Skipped map[string]int64 `json:"skipped"`
	// Errors lists read errors, timeouts and archive problems per path;
	// it keeps the first MaxErrors, ErrorsDropped counts the rest.
	Errors        []FileError `json:"errors"`
	ErrorsDropped int64       `json:"errors_dropped,omitempty"`
}

// MaxErrors bounds VolumeReport.Errors, so that a volume of a million
// unreadable files does not hold a million messages; counts stay exact.
const MaxErrors = 1000

// FileError is a file that could not be (fully) scanned.
type FileError struct {
	Path   string // as in Finding.Path
	Reason string // a Skip* constant
	Err    error
}

// MarshalJSON writes {"path", "reason", "error"} with the error as text.
func (e FileError) MarshalJSON() ([]byte, error) {
	msg := ""
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return json.Marshal(struct {
		Path   string `json:"path"`
		Reason string `json:"reason"`
		Error  string `json:"error"`
	}{e.Path, e.Reason, msg})
}

// Error says which file and why; FileError is usable as an error.
func (e FileError) Error() string {
	if e.Err == nil {
		return e.Path + ": " + e.Reason
	}
	return e.Path + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e FileError) Unwrap() error { return e.Err }

// Report is the result of scanning one target.
type Report struct {
	Target   string         `json:"target"`
	RulesID  string         `json:"rules_id"`
	Volumes  []VolumeReport `json:"volumes"`
	Findings []Finding      `json:"findings"`
	Started  time.Time      `json:"started"`
	Duration time.Duration  `json:"duration_ns"`
}

// Files returns the number of files checked over all volumes.
func (r *Report) Files() (n int64) {
	for _, v := range r.Volumes {
		n += v.Files
	}
	return n
}

// Bytes returns the bytes checked over all volumes.
func (r *Report) Bytes() (n int64) {
	for _, v := range r.Volumes {
		n += v.Bytes
	}
	return n
}

// Progress is passed to Options.OnProgress.
type Progress struct {
	Target string
	// Files and Bytes count what has been checked or skipped so far.
	Files, Bytes int64
	// TotalFiles and TotalBytes count what the listing has found so far;
	// they are final once Listed is true. Listing runs ahead of scanning,
	// so they are known early.
	TotalFiles, TotalBytes int64
	Listed                 bool
}
