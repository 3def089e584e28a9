package scanner

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"time"
)

// Target is what one Scan covers: a disk image, a block device, a folder
// or a single file, made of one or more volumes. DiskTarget, FolderTarget
// and FileTarget make one; any other fs.FS can be given as a Volume.
type Target struct {
	Name string // shown in findings and reports: the image path, for example
	// Kind says which way the target is read (Kind* constants); it is
	// copied to the Report.
	Kind    string
	Volumes []Volume
	// Reuse, when set, gives the outcome of files known to hold the same
	// bytes as files of an earlier scan, so that they are not read, and is
	// told the outcome of every file read (scanner/incremental).
	Reuse Reuse
}

// Kinds of target: which way a target was read.
const (
	KindImage       = "image"        // a disk image file, through snapshot
	KindBlockDevice = "block_device" // a block device, through snapshot
	KindFolder      = "folder"       // a folder of the host, as one volume
	KindFile        = "file"         // one plain file of the host
)

// Volume is one file system of a target.
type Volume struct {
	ID         string // "p1", "vg0/root", "." ...: unique within the target
	FileSystem string // "ext4", "ntfs", "dir" ...
	FS         fs.FS  // nil when Err is set
	// Err records why the volume cannot be read (unknown file system,
	// damaged superblock). Such a volume is reported, not scanned, and
	// makes the scan incomplete unless Err wraps snapshot.ErrNoFiles
	// (swap, an LVM2 physical volume, a BIOS boot partition).
	Err error
	// BytesRead, when set, returns the bytes read so far from the
	// volume's device (snapshot.Volume.BytesRead): VolumeReport.ReadBytes.
	BytesRead func() int64
}

// Match is one rule that matched, with what it matched.
type Match struct {
	Rule      string      `json:"rule"`
	Namespace string      `json:"namespace"`
	Tags      []string    `json:"tags"`
	Meta      []MetaEntry `json:"meta"`
	// Strings are the occurrences of the rule's strings, in the rule's
	// order of strings and then by offset: at most MaxStringMatches per
	// string, the rest counted in StringsDropped. A rule whose condition
	// needs no string has none.
	Strings        []StringMatch `json:"strings"`
	StringsDropped int           `json:"strings_dropped,omitempty"`
}

// StringMatch is one occurrence of one of a rule's strings.
type StringMatch struct {
	Identifier string `json:"identifier"` // "$a"
	// Offset is where the occurrence starts in the file, or in the
	// archive member the finding names.
	Offset int64 `json:"offset"`
	// Data is the matched bytes written so that they are safe to print
	// on a terminal or in a log: printable ASCII as is, a backslash as
	// \\, every other byte as \xNN (as yara -s prints them); at most
	// MaxMatchData bytes of the match, Truncated when there were more.
	Data      string `json:"data"`
	Truncated bool   `json:"truncated,omitempty"`
}

// Bounds on what a Match carries, so that a file crafted to match a
// string a million times costs a bounded report.
const (
	MaxStringMatches = 10  // occurrences kept per string of a rule
	MaxMatchData     = 128 // bytes of each occurrence kept in StringMatch.Data
)

// escapeData writes b as StringMatch.Data does.
func escapeData(b []byte) string {
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(b))
	for _, c := range b {
		switch {
		case c == '\\':
			out = append(out, '\\', '\\')
		case c >= 0x20 && c < 0x7f:
			out = append(out, c)
		default:
			out = append(out, '\\', 'x', hex[c>>4], hex[c&15])
		}
	}
	return string(out)
}

// MetaEntry is one metadata field of a rule. Meta is a list, in the rule's
// order, rather than an object because rules repeat keys (several "hash"
// entries are common in public rule sets). Value is a string, an int64 or
// a bool; decoding JSON restores those types (an integer is not turned
// into a float64), so a Match round-trips through JSON unchanged.
type MetaEntry struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// UnmarshalJSON decodes {"key", "value"} with integers as int64.
func (m *MetaEntry) UnmarshalJSON(b []byte) error {
	var raw struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(raw.Value))
	d.UseNumber()
	var v any
	if len(raw.Value) > 0 {
		if err := d.Decode(&v); err != nil {
			return err
		}
	}
	if n, ok := v.(json.Number); ok {
		if iv, err := n.Int64(); err == nil {
			v = iv
		} else if fv, err := n.Float64(); err == nil {
			v = fv
		}
	}
	m.Key, m.Value = raw.Key, v
	return nil
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
	SkipSpoolError  = "spool_error"  // larger than the memory window and could not be spooled (spool folder full or unwritable)
	SkipVolume      = "volume_error" // the volume itself could not be read (encrypted, damaged, unknown): counted once
)

// incomplete reports whether a skip reason means content went unscanned,
// so that the scan is incomplete. Exclusions were asked for, and links,
// devices, fifos and sockets have no content to scan.
func incomplete(reason string) bool {
	switch reason {
	case SkipExcluded, SkipExcludedDir, SkipNotRegular:
		return false
	}
	return true
}

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
	// PathScanned counts the files of Files scanned by the path-reading
	// rule sources alone, the rest of their verdict coming from the cache
	// (identical bytes scanned at another path; see Rules.PathSplit).
	PathScanned int64 `json:"path_scanned,omitempty"`
	// Pruned counts the files of Files that YARA scanned with only the
	// rules their size and header leave able to match (see
	// Options.NoPrefilter).
	Pruned int64 `json:"pruned,omitempty"`
	// Reused counts the files of Files whose outcome came from the record
	// of a base layer (Target.Reuse) without their bytes being read.
	Reused int64 `json:"reused"`
	// ReadBytes is what was read from the volume's device, file-system
	// metadata included, from its opening to the end of the scan; 0 where
	// not counted (folders, files).
	ReadBytes int64 `json:"read_bytes"`
	// NoReuse says why no file of the volume could come from a base
	// layer's record, where a base was used for the disk.
	NoReuse string `json:"no_reuse,omitempty"`
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
	Target string `json:"target"`
	Kind   string `json:"kind"` // Target.Kind: image, block_device, folder, file
	// Result is the verdict: findings, clean, or incomplete.
	Result   Result         `json:"result"`
	RulesID  string         `json:"rules_id"`
	Volumes  []VolumeReport `json:"volumes"`
	Findings []Finding      `json:"findings"`
	// Excludes counts, for each Options.Exclude pattern in order, the
	// files and folders it matched in this scan (see UnusedExcludes).
	Excludes []ExcludeCount `json:"excludes"`
	Started  time.Time      `json:"started"`
	Duration time.Duration  `json:"duration_ns"`
	// Incremental says which recorded base layer gave outcomes, or why
	// none did; nil when the scan was not incremental.
	Incremental *IncrementalReport `json:"incremental,omitempty"`
}

// IncrementalReport is the part of a Report about an incremental scan
// (scanner/incremental fills it in).
type IncrementalReport struct {
	// Base is the layer of the disk's chain whose record gave outcomes
	// (its path), "" when none did and every file was read.
	Base string `json:"base,omitempty"`
	// Identity is the base's identity (the digest of its chain).
	Identity string `json:"identity,omitempty"`
	// Warnings say why a base that was recorded could not be trusted
	// (it changed since), or why the disk could not use one.
	Warnings []string `json:"warnings,omitempty"`
	// Recorded lists the identities recorded by this scan, for later
	// scans of disks whose chain holds them.
	Recorded []string `json:"recorded,omitempty"`
	// Tracked is set for a VM disk planned with the hypervisor's
	// changed-block tracking (incremental.Session.PlanChanged).
	Tracked *TrackedReport `json:"tracked,omitempty"`
}

// TrackedReport is what changed-block tracking gave a disk's scan.
type TrackedReport struct {
	// Disk names the VM disk (connector, VM id, disk key).
	Disk string `json:"disk"`
	// Checkpoint is this scan's point in the disk's tracking, under which
	// it is recorded for the next scan.
	Checkpoint string `json:"checkpoint"`
	// Since is the earlier checkpoint whose record gave outcomes, "" when
	// none did (the first scan, or the changes were not known: Warnings
	// say why).
	Since string `json:"since,omitempty"`
	// ChangedBytes is how many bytes of the disk the hypervisor reported
	// written since then: the files they touch are read, the others reused.
	ChangedBytes int64 `json:"changed_bytes"`
}

// ExcludeCount is how many paths an exclusion pattern matched.
type ExcludeCount struct {
	Pattern string `json:"pattern"`
	Matched int64  `json:"matched"`
}

// UnusedExcludes returns the exclusion patterns that matched nothing in
// any of the reports (the targets of one run), in order, so that a
// caller can warn about a pattern that was probably mistyped.
func UnusedExcludes(reps ...*Report) []string {
	var order []string
	hits := map[string]int64{}
	for _, r := range reps {
		for _, e := range r.Excludes {
			if _, seen := hits[e.Pattern]; !seen {
				order = append(order, e.Pattern)
			}
			hits[e.Pattern] += e.Matched
		}
	}
	var out []string
	for _, p := range order {
		if hits[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

// Status is the one-word verdict of a scan.
type Status string

// The statuses, in the order they take precedence when results are
// merged: findings over incomplete over clean.
const (
	// StatusFindings: at least one rule matched, whether or not
	// everything was scanned (Result.NotScanned says what was not).
	StatusFindings Status = "findings"
	// StatusIncomplete: nothing matched in what was scanned, but some
	// content was not scanned (Result.NotScanned says what and why). It
	// is never a clean bill of health.
	StatusIncomplete Status = "incomplete"
	// StatusClean: everything that holds content was scanned and nothing
	// matched. Excluded paths, links and devices do not count against it.
	StatusClean Status = "clean"
)

// Result is the verdict of one scan (Report.Result), or of several merged
// (MergeResults): what the appliance stores, events and metrics carry and
// the CLI turns into its exit status. It is computed from the report's
// volumes and findings when the scan ends.
//
// Content counts as not scanned, and makes the result incomplete, for
// every skip reason but excluded, excluded_dir and not_regular: too_large,
// read_error, timeout, limit_hit (an archive member past a limit),
// scan_error, canceled, spool_error, and volume_error for a volume that
// may hold files but could not be read (encrypted, damaged, unknown).
type Result struct {
	Status Status `json:"status"`
	// Findings is the number of findings (files or members that matched).
	Findings int `json:"findings"`
	// NotScanned counts, by skip reason, the files, members and volumes
	// whose content was not scanned; empty when the scan was complete.
	NotScanned map[string]int64 `json:"not_scanned"`
}

// Complete reports whether everything that holds content was scanned.
func (r Result) Complete() bool {
	for _, n := range r.NotScanned {
		if n > 0 {
			return false
		}
	}
	return true
}

// MergeResults combines the results of several scans (the disks of one
// VM, the targets of one command): findings if any has findings, else
// incomplete if any is incomplete, else clean; counts are added.
func MergeResults(rs ...Result) Result {
	out := Result{Status: StatusClean, NotScanned: map[string]int64{}}
	for _, r := range rs {
		out.Findings += r.Findings
		for k, n := range r.NotScanned {
			out.NotScanned[k] += n
		}
	}
	out.setStatus()
	return out
}

func (r *Result) setStatus() {
	switch {
	case r.Findings > 0:
		r.Status = StatusFindings
	case !r.Complete():
		r.Status = StatusIncomplete
	default:
		r.Status = StatusClean
	}
}

// computeResult sets rep.Result from its volumes and findings.
func (rep *Report) computeResult() {
	res := Result{Findings: len(rep.Findings), NotScanned: map[string]int64{}}
	for _, v := range rep.Volumes {
		for k, n := range v.Skipped {
			if n > 0 && incomplete(k) {
				res.NotScanned[k] += n
			}
		}
	}
	res.setStatus()
	rep.Result = res
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
