// Package results is what the appliance keeps about its scans, as one
// database-neutral contract: the stored result of each job with its
// volumes and findings, the scanner's verdict cache, an inventory of the
// VMs the appliance knows, and a coarse history of each datastore's reads.
//
// Store is the interface; package sqlite implements it on the appliance's
// embedded SQLite database, and a PostgreSQL implementation for fleet mode
// implements the same contract. Package resultstest is the conformance
// suite every implementation runs (restic's internal/backend/test is the
// model): what it checks is the contract, this documentation says why.
//
// The package holds types and rules only: no SQL, no cgo, no scanner. The
// appliance turns scanner reports into a Scan and scanner cache keys into
// VerdictKeys.
//
// # Contract
//
//   - Every method is safe for concurrent use and takes a context; a
//     cancelled context makes it return an error wrapping ctx.Err() without
//     having committed anything.
//   - A method that returns nil has committed what it wrote. Any error but
//     ErrNotFound means the write may or may not have happened; callers
//     retry (every write here is idempotent) or give up, never assume.
//   - SaveScan is idempotent by job id: a job saved twice (it ran again
//     after a crash) leaves one result, its second set of findings and
//     volumes, and one inventory update. The result, its volumes, its
//     findings and the VM's last-scan fields change in one transaction, so a
//     reader never sees half a result.
//   - Lists are ordered by a stable key (finding id, VM id, sample time)
//     and paged with an exclusive lower bound (After) and a Limit in
//     [1, MaxPage] (0 means MaxPage; more is an error wrapping ErrInvalid).
//   - Times are stored to the nanosecond and returned in UTC.
//   - Meta values round-trip as string, int64 or bool.
package results

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Errors the package's implementations return; match them with errors.Is.
var (
	// ErrNotFound: no stored result, VM or verdict has that key.
	ErrNotFound = errors.New("results: not found")
	// ErrInvalid: a query or a value is malformed (a limit out of range, a
	// scan without a job id).
	ErrInvalid = errors.New("results: invalid")
	// ErrFenced: SaveScan refused a scan whose Fence did not hold (the run
	// that made it is no longer the job's current run); nothing was
	// written.
	ErrFenced = errors.New("results: refused: the run is no longer the job's")
	// ErrNameInUse: Announce refused a name another appliance holds.
	ErrNameInUse = errors.New("results: appliance name in use by another appliance")
)

// MaxPage bounds the rows one list call returns.
const MaxPage = 1000

// Store is everything the appliance keeps about scans. See the package
// documentation for the contract every implementation keeps.
type Store interface {
	Results
	Verdicts
	Inventory
	History
	Appliances
	Rescans
	Freezes
	Records
	// Close releases what the store holds (prepared statements, caches).
	// It does not close the database handle, which belongs to whoever
	// opened it. Nothing may be called after Close.
	Close() error
}

// Results keeps the result of each job.
type Results interface {
	// SaveScan stores a job's result, replacing any result stored before
	// for the same job id (with its volumes and findings), and records it
	// as the last scan of its VM in the inventory (adding the VM if
	// unknown, with s.Disks), all in one transaction. It returns the
	// findings as stored, with their ids, in s.Findings' order. With
	// s.Fence set, the fence's query runs first in that transaction, and
	// without a row from it nothing is written and the error wraps
	// ErrFenced.
	SaveScan(ctx context.Context, s *Scan) ([]Finding, error)

	// Scan returns a job's stored result with its volumes; Findings is
	// left nil (they are paged through Findings). ErrNotFound when the job
	// has no stored result.
	Scan(ctx context.Context, jobID int64) (*Scan, error)

	// Findings returns the findings q selects in ascending id order.
	Findings(ctx context.Context, q FindingQuery) ([]Finding, error)

	// CountFindings counts the findings q selects, all of them: q's
	// After and Limit are ignored. It is what a report or a page shows as
	// the total without reading every finding.
	CountFindings(ctx context.Context, q FindingQuery) (int64, error)
}

// Verdicts is the scanner's verdict cache kept in the database: a file
// already scanned under a rule set (in another VM, or before a restart) is
// not scanned again. A lost or stale entry only costs a rescan, so
// implementations need no stronger guarantee than "what Get returns was
// Put under that exact key".
type Verdicts interface {
	// Verdict returns the verdict stored under k, or ErrNotFound.
	Verdict(ctx context.Context, k VerdictKey) (Verdict, error)
	// PutVerdicts stores verdicts, replacing those under the same keys, in
	// one transaction.
	PutVerdicts(ctx context.Context, vs []VerdictEntry) error
}

// Inventory is every VM the appliance knows: submitted through the API,
// registered by a hypervisor connector, or scanned.
type Inventory interface {
	// PutVM adds a VM or updates its identity (Name, Source, Disks),
	// keeping its last-scan fields, which only SaveScan sets. UpdatedAt
	// is set to v.UpdatedAt, or now when zero.
	PutVM(ctx context.Context, v VM) error
	// VM returns one VM by id, or ErrNotFound.
	VM(ctx context.Context, id string) (VM, error)
	// VMs returns the VMs q selects in ascending id order.
	VMs(ctx context.Context, q VMQuery) ([]VM, error)
	// RemoveVM forgets a VM (a connector saw it deleted); its stored
	// results and findings stay. Removing an unknown VM is not an error.
	RemoveVM(ctx context.Context, id string) error
}

// History is a coarse record of what each datastore delivered, for charts
// that look back further than the live metrics.
type History interface {
	// AddIOSamples stores samples, replacing any stored for the same
	// datastore and time, in one transaction.
	AddIOSamples(ctx context.Context, s []IOSample) error
	// IOHistory returns the samples q selects in ascending time order
	// (then datastore).
	IOHistory(ctx context.Context, q IOQuery) ([]IOSample, error)
	// PruneIOHistory deletes the samples taken before t and says how many.
	PruneIOHistory(ctx context.Context, before time.Time) (int64, error)
}

// Appliances is the fleet's register of its appliances: which signature
// set each one runs and when it was last heard of. It also keeps names
// unique: an appliance announces itself under its name with an instance
// id that a restart keeps, and a name another instance announced within
// the last staleAfter is refused.
type Appliances interface {
	// Announce records a as the state of appliance a.Name, seen now by
	// the store's clock (a.SeenAt is ignored; StartedAt is kept from the
	// first announce of an instance). It fails with ErrNameInUse, writing
	// nothing, when another instance announced that name within
	// staleAfter.
	Announce(ctx context.Context, a Appliance, staleAfter time.Duration) error
	// Appliances returns every appliance announced, by name.
	Appliances(ctx context.Context) ([]Appliance, error)
}

// Rescans makes the rescan a signature version calls for happen once for
// the fleet, not once per appliance that installs the version: the first
// appliance to claim it enqueues it; a claim left unfinished (its
// appliance died between the claim and the enqueue) may be taken over.
type Rescans interface {
	// ClaimRescan claims the rescan for version of signature set set for
	// appliance. It reports true when the caller should enqueue it: no
	// one claimed it before, or the claim is the caller's own, or the
	// claim is older than staleAfter and not done. It reports false once
	// the rescan is done (RescanDone), or while another appliance's fresh
	// claim stands.
	ClaimRescan(ctx context.Context, set string, version uint64, appliance string, staleAfter time.Duration) (bool, error)
	// RescanDone records that the claimed rescan was enqueued, as jobs
	// jobs.
	RescanDone(ctx context.Context, set string, version uint64, jobs int) error
}

// Freezes records every freeze a hypervisor connector made for a scan
// and its release, with the stun times the hypervisor's API showed: what
// the API reports per VM and per scan (the metrics keep only histograms
// per connector, never a label per VM).
type Freezes interface {
	// PutFreeze stores f under (f.VM, f.ID), replacing what was stored
	// there: a freeze is stored when taken and again when released.
	PutFreeze(ctx context.Context, f Freeze) error
	// Freezes returns the freezes q selects, newest (by Taken) first.
	Freezes(ctx context.Context, q FreezeQuery) ([]Freeze, error)
}

// Records keeps the records of incremental scans (scanner/incremental):
// what a scan of a disk saw, under the identity of its image chain and
// the scanner's reuse key, so that a later disk above it (a linked clone
// of a golden image, the next snapshot of a VM) reads only its own bytes.
// In a fleet the records are shared: a golden image one appliance scanned
// spares every appliance's clones. The store keeps each record as opaque
// bytes (the appliance encodes them, compressed); it bounds their size
// and number. A lost record only costs a full scan.
type Records interface {
	// IncrementalRecord returns the bytes stored under identity and
	// rules, or an error wrapping ErrNotFound.
	IncrementalRecord(ctx context.Context, identity, rules string) ([]byte, error)
	// IncrementalRecordedAs returns the identity and time of the last
	// record stored for path under rules (the record itself may be gone
	// since), or an error wrapping ErrNotFound.
	IncrementalRecordedAs(ctx context.Context, path, rules string) (identity string, at time.Time, err error)
	// PutIncrementalRecord stores r, replacing the record of the same
	// identity and rules, and (when r.Path is set) makes it the last
	// recorded for its path. In the same transaction it drops the
	// records of r.Rules beyond the keep written last, and every record
	// of the rule sets but the MaxRecordRuleSets written to last (a rule
	// set the fleet no longer runs). A record over MaxRecordBytes, or
	// keep below 1, is refused with ErrInvalid, writing nothing.
	PutIncrementalRecord(ctx context.Context, r IncrementalRecord, keep int) error
}

// Bounds of the Records a store keeps.
const (
	// MaxRecordBytes bounds one record's bytes (about 400,000 files).
	MaxRecordBytes = 64 << 20
	// MaxRecordRuleSets is how many rule sets' records are kept: the
	// current one, and those of appliances still on an earlier signature
	// version during a roll-out.
	MaxRecordRuleSets = 4
)

// IncrementalRecord is one record of Records: Data is the encoded record;
// the other fields are what it is found by.
type IncrementalRecord struct {
	Identity string
	Rules    string
	Path     string
	Time     time.Time
	Data     []byte
}

// CheckRecord validates a record to put and its bound.
func CheckRecord(r *IncrementalRecord, keep int) error {
	switch {
	case r.Identity == "" || r.Rules == "":
		return fmt.Errorf("%w: an incremental record needs its identity and rules", ErrInvalid)
	case len(r.Data) > MaxRecordBytes:
		return fmt.Errorf("%w: the incremental record of %s is %d bytes, over the %d-byte bound", ErrInvalid, r.Identity, len(r.Data), MaxRecordBytes)
	case keep < 1:
		return fmt.Errorf("%w: keep %d incremental records (at least 1)", ErrInvalid, keep)
	}
	return nil
}

// Freeze is one freeze of a VM's disks (a hypervisor snapshot) and its
// release. Durations are in nanoseconds in JSON, like IOSample's.
type Freeze struct {
	// VM is the inventory id of the VM ("connector/id"); ID the freeze's
	// name in the hypervisor (the snapshot's name).
	VM string `json:"vm"`
	ID string `json:"id"`
	// Connector is the connector's name; JobID the job that froze it (0
	// for a stale freeze found at start).
	Connector string `json:"connector"`
	JobID     int64  `json:"job_id,omitempty"`
	// Taken is when the freeze was made; FreezeStun how long making it
	// held the guest still, as the hypervisor's API shows it.
	Taken      time.Time     `json:"taken"`
	FreezeStun time.Duration `json:"freeze_stun_ns"`
	Quiesced   bool          `json:"quiesced,omitempty"`
	// Released is when the release ended (zero while the freeze is
	// held); ReleaseStun how long the release (pivot, snapshot removal)
	// held the guest still; ReleaseTook the whole release.
	Released    time.Time     `json:"released,omitzero"`
	ReleaseStun time.Duration `json:"release_stun_ns"`
	ReleaseTook time.Duration `json:"release_took_ns"`
	// Held is from the freeze to the release's end: how long the VM ran
	// on a snapshot because of snapscan.
	Held time.Duration `json:"held_ns"`
	// Stale is set for a freeze an earlier run left and this one
	// released; Repaired when the release found it half undone.
	Stale    bool `json:"stale,omitempty"`
	Repaired bool `json:"repaired,omitempty"`
	// Error is why the release failed, "" when it did not.
	Error string `json:"error,omitempty"`
}

// FreezeQuery selects freezes; zero fields do not filter.
type FreezeQuery struct {
	VM    string
	JobID int64
	// Before keeps freezes taken before it (the last Taken of the
	// previous page).
	Before time.Time
	// Limit is the most returned: 0 means MaxPage.
	Limit int
}

// Appliance is one appliance of the fleet as it last announced itself.
type Appliance struct {
	Name string `json:"name"`
	// Instance tells a restart of the appliance (same instance) from
	// another appliance under its name.
	Instance string `json:"instance"`
	// Version is the snapscan build.
	Version string `json:"version,omitempty"`
	// The active signature set (zero: none yet).
	SigName    string `json:"sig_name,omitempty"`
	SigVersion uint64 `json:"sig_version"`
	RulesID    string `json:"rules_id,omitempty"`
	// StartedAt is when the instance first announced itself since its
	// start; SeenAt when it last did, by the store's clock.
	StartedAt time.Time `json:"started_at"`
	SeenAt    time.Time `json:"seen_at"`
}

// Fence makes a save conditional on the run that produced it: SaveScan
// runs Query with Args inside its transaction before writing anything, and
// writes only if the query returns a row. The queue's store supplies the
// query (queue/sqlite.FenceQuery, queue/postgres.FenceQuery): it reads
// the queue's tables in the same database, so the check and the write
// commit together and a late result from an appliance whose lease ended is
// never stored. Query uses ? placeholders.
type Fence struct {
	Query string
	Args  []any
}

// Status is a scan's outcome: exactly one of StatusClean, StatusFindings
// and StatusIncomplete. A scan that could not read or scan everything is
// never clean.
type Status string

// The outcomes of a scan.
const (
	// StatusClean: every file was read and scanned and nothing matched.
	StatusClean Status = "clean"
	// StatusFindings: at least one rule matched. Scan.Incomplete may
	// still say what was not scanned besides.
	StatusFindings Status = "findings"
	// StatusIncomplete: nothing matched, but not everything was scanned;
	// Scan.Incomplete says what and how much.
	StatusIncomplete Status = "incomplete"
)

// Valid reports whether s is one of the three outcomes.
func (s Status) Valid() bool {
	return s == StatusClean || s == StatusFindings || s == StatusIncomplete
}

// StatusOf is the one rule that turns a scan's counts into its status:
// findings win, then anything not scanned makes it incomplete, else clean.
func StatusOf(findings int, incomplete map[string]int64) Status {
	switch {
	case findings > 0:
		return StatusFindings
	case len(incomplete) > 0:
		return StatusIncomplete
	}
	return StatusClean
}

// Disk is one disk of a VM as it was submitted or registered.
type Disk struct {
	// Datastore is the configured datastore the disk is read from.
	Datastore string `json:"datastore"`
	// Path is the image path relative to the datastore's folder.
	Path string `json:"path"`
	// Format is the image format the submitter declared ("raw", "qcow2",
	// ...), or "" when the format is probed.
	Format string `json:"format,omitempty"`
	// Layers are the other files of the disk's backing chain the submitter
	// named (paths relative to the datastore), outermost first.
	Layers []string `json:"layers,omitempty"`
}

// Scan is the stored result of one job: the run that completed it, or the
// run a time limit stopped.
type Scan struct {
	JobID int64  `json:"job_id"`
	VM    string `json:"vm"`
	// Status is the outcome; Incomplete counts what was not scanned, by
	// reason (the scanner's skip reasons, "volume_error",
	// "time_limit"), and is empty for a scan that read everything.
	Status     Status           `json:"status"`
	Incomplete map[string]int64 `json:"incomplete"`
	// The signature set the scan used.
	SigName    string    `json:"sig_name"`
	SigVersion uint64    `json:"sig_version"`
	RulesID    string    `json:"rules_id"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Files and Bytes count the files checked (by YARA or the verdict
	// cache) and their bytes; Cached the files whose verdict came from the
	// cache; FindingCount the findings stored.
	Files        int64 `json:"files"`
	Bytes        int64 `json:"bytes"`
	Cached       int64 `json:"cached"`
	FindingCount int64 `json:"findings"`
	// BytesRead and ReadOps are what the scan read from its datastores
	// (image metadata and backing files included).
	BytesRead int64 `json:"bytes_read"`
	ReadOps   int64 `json:"read_ops"`
	// Disks are the VM's disks as the job named them.
	Disks []Disk `json:"disks"`
	// Volumes, one per volume of each disk.
	Volumes []Volume `json:"volumes"`
	// Plans say how each disk scanned was planned: in full, or from a
	// recorded base layer or the hypervisor's changed-block tracking,
	// and why not, as SaveScan was given them (bounded: BoundPlan). Nil
	// when it was given none, and for results stored before plans were:
	// no plan recorded, which is not the same as a full scan.
	Plans []Plan `json:"plans"`
	// Findings are given to SaveScan; Scan leaves them nil.
	Findings []Finding `json:"-"`
	// Fence, given to SaveScan, makes the save conditional (see Fence).
	Fence *Fence `json:"-"`
}

// Volume is what one volume of one disk of a scan held.
type Volume struct {
	Disk       string `json:"disk"`
	Volume     string `json:"volume"`
	FileSystem string `json:"file_system"`
	// Error is why the volume was not read at all.
	Error  string `json:"error,omitempty"`
	Files  int64  `json:"files"`
	Bytes  int64  `json:"bytes"`
	Cached int64  `json:"cached"`
	// Reused counts the files of Files whose outcome came from the record
	// of a base layer (an incremental scan) without their bytes being
	// read.
	Reused int64 `json:"reused"`
	// Skipped counts the files not scanned, by the scanner's reason.
	Skipped map[string]int64 `json:"skipped"`
	// Errors lists some of the files that could not be scanned, at most
	// MaxVolumeErrors; ErrorsDropped counts the rest.
	Errors        []FileError `json:"errors"`
	ErrorsDropped int64       `json:"errors_dropped,omitempty"`
}

// MaxVolumeErrors bounds Volume.Errors as stored: the scanner's own bound
// is for memory, this one for rows. SaveScan keeps the first ones and adds
// the rest to ErrorsDropped.
const MaxVolumeErrors = 100

// PlanMode is how a disk's scan was planned.
type PlanMode string

// The modes of a Plan.
const (
	// PlanFull: every file was read; Plan.Warnings say why no record
	// was used, when one could have been.
	PlanFull PlanMode = "full"
	// PlanBase: the files a recorded base layer (Plan.Base) holds
	// unchanged took their outcome from its record without being read.
	PlanBase PlanMode = "base"
	// PlanTracked: the hypervisor's changed-block tracking said which
	// bytes changed since an earlier scan's checkpoint
	// (Plan.Tracked.Since); only the files they touch were read.
	PlanTracked PlanMode = "tracked"
)

// Plan is how the scan of one disk was planned (scanner/incremental):
// what an operator reads to know why a scan read a whole disk.
type Plan struct {
	// Datastore and Disk name the disk as the job did (Disk is its
	// path, as in Volume.Disk).
	Datastore string   `json:"datastore"`
	Disk      string   `json:"disk"`
	Mode      PlanMode `json:"mode"`
	// Base is what gave outcomes: the base layer's path (relative to
	// the datastore), or the VM disk at its checkpoint; Identity is the
	// identity it was recorded under. Both "" for a full scan.
	Base     string `json:"base,omitempty"`
	Identity string `json:"identity,omitempty"`
	// Reused counts the files whose outcome came from Base without
	// their bytes being read (the disk's volumes' Reused, summed).
	Reused int64 `json:"reused"`
	// Tracked is set for a VM disk planned with changed-block tracking,
	// even when the changes were not known (then Since is "" and
	// Warnings say why).
	Tracked *TrackedPlan `json:"tracked,omitempty"`
	// Warnings say why a recorded base was not trusted or could not be
	// used, at most MaxPlanWarnings of at most MaxPlanWarningBytes each;
	// WarningsDropped counts the rest.
	Warnings        []string `json:"warnings,omitempty"`
	WarningsDropped int64    `json:"warnings_dropped,omitempty"`
}

// TrackedPlan is what changed-block tracking gave a disk's scan.
type TrackedPlan struct {
	// VMDisk names the VM disk (connector, VM id, disk key).
	VMDisk string `json:"vm_disk"`
	// Checkpoint is this scan's point in the disk's tracking; Since the
	// earlier checkpoint whose record gave outcomes ("" when none did).
	Checkpoint string `json:"checkpoint"`
	Since      string `json:"since,omitempty"`
	// ChangedBytes is how many bytes the hypervisor reported written
	// since Since.
	ChangedBytes int64 `json:"changed_bytes"`
}

// Bounds of a Plan as stored, like MaxVolumeErrors: SaveScan keeps the
// first MaxPlanWarnings warnings, each cut to MaxPlanWarningBytes, and
// adds the rest to WarningsDropped.
const (
	MaxPlanWarnings     = 20
	MaxPlanWarningBytes = 1024
)

// BoundPlan returns p as a store keeps it: within MaxPlanWarnings and
// MaxPlanWarningBytes. p is not modified.
func BoundPlan(p Plan) Plan {
	ws := p.Warnings
	if len(ws) > MaxPlanWarnings {
		p.WarningsDropped += int64(len(ws) - MaxPlanWarnings)
		ws = ws[:MaxPlanWarnings]
	}
	p.Warnings = nil
	for _, w := range ws {
		if len(w) > MaxPlanWarningBytes {
			cut := MaxPlanWarningBytes - len("…")
			for cut > 0 && !utf8.RuneStart(w[cut]) {
				cut--
			}
			w = w[:cut] + "…"
		}
		p.Warnings = append(p.Warnings, w)
	}
	return p
}

// FileError is one file that could not be (fully) scanned.
type FileError struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// Finding is one rule that matched one file.
type Finding struct {
	// ID is given by the store, ascending in storing order.
	ID        int64  `json:"id"`
	JobID     int64  `json:"job_id"`
	VM        string `json:"vm"`
	Datastore string `json:"datastore"`
	Disk      string `json:"disk"`
	Volume    string `json:"volume"`
	// Path is "/dir/file", or "/a.zip!inner" for an archive member.
	Path      string   `json:"path"`
	Size      int64    `json:"size"`
	SHA256    string   `json:"sha256"`
	Namespace string   `json:"namespace"`
	Rule      string   `json:"rule"`
	Tags      []string `json:"tags"`
	Meta      []Meta   `json:"meta"`
	// Strings are the rule's strings that matched, where the scanner
	// reported them.
	Strings    []StringMatch `json:"strings,omitempty"`
	SigVersion uint64        `json:"sig_version"`
	FoundAt    time.Time     `json:"found_at"`
}

// Meta is one metadata field of a rule; Value is a string, an int64 or a
// bool. Rules repeat keys, hence a list.
type Meta struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// StringMatch is one match of a rule's string: its identifier, where in
// the file, and the bytes matched (possibly cut short by the scanner).
type StringMatch struct {
	Identifier string `json:"identifier"`
	Offset     int64  `json:"offset"`
	Data       []byte `json:"data"`
}

// FindingQuery selects findings; zero fields do not filter.
type FindingQuery struct {
	JobID     int64
	VM        string
	Datastore string
	Rule      string
	// Tag keeps findings whose rule has this tag.
	Tag string
	// Since and Until bound FoundAt: Since <= FoundAt < Until.
	Since, Until time.Time
	// After keeps ids above it (the last id of the previous page).
	After int64
	// Limit is the most returned: 0 means MaxPage.
	Limit int
}

// VerdictKey identifies a verdict: the file's content hash, the rule set
// and a hash of the path-like externals the rules could see.
type VerdictKey struct {
	Content [32]byte
	Rules   string
	Context [32]byte
}

// Verdict is what the rules said about one file: the rules that matched,
// none for a clean file.
type Verdict struct {
	Matches []Match `json:"matches"`
}

// Match is one rule that matched, as the verdict cache keeps it.
type Match struct {
	Rule      string        `json:"rule"`
	Namespace string        `json:"namespace"`
	Tags      []string      `json:"tags"`
	Meta      []Meta        `json:"meta"`
	Strings   []StringMatch `json:"strings,omitempty"`
}

// VerdictEntry is one verdict to store.
type VerdictEntry struct {
	Key     VerdictKey
	Verdict Verdict
}

// VM is one VM of the inventory.
type VM struct {
	// ID is the VM's key: the name the queue knows it by (a connector's
	// stable id, or the name given to the submit API).
	ID string `json:"id"`
	// Name is what people call it; it defaults to ID.
	Name string `json:"name"`
	// Source says who made it known: "api", "scan", or a connector's name.
	Source string `json:"source"`
	Disks  []Disk `json:"disks"`
	// UpdatedAt is when Name, Source or Disks last changed.
	UpdatedAt time.Time `json:"updated_at"`

	// The last stored scan (SaveScan sets them; zero when never scanned).
	LastJob        int64     `json:"last_job,omitempty"`
	LastScanned    time.Time `json:"last_scanned,omitzero"`
	LastStatus     Status    `json:"last_status,omitempty"`
	LastFindings   int64     `json:"last_findings"`
	LastSigVersion uint64    `json:"last_sig_version,omitempty"`
	LastBytesRead  int64     `json:"last_bytes_read"`
}

// VMQuery selects VMs; zero fields do not filter.
type VMQuery struct {
	// Search keeps VMs whose id or name contains it (case-insensitive
	// for ASCII letters).
	Search string
	// Scanned keeps VMs with at least one stored scan.
	Scanned bool
	// After keeps ids above it (the last id of the previous page).
	After string
	// Limit is the most returned: 0 means MaxPage.
	Limit int
}

// IOSample is what one datastore delivered over one interval.
type IOSample struct {
	Datastore string `json:"datastore"`
	// At is the end of the interval, Interval its length.
	At       time.Time     `json:"at"`
	Interval time.Duration `json:"interval_ns"`
	// BytesRead and ReadOps over the interval.
	BytesRead int64 `json:"bytes_read"`
	ReadOps   int64 `json:"read_ops"`
	// The budget in force at At (0: unlimited), and the scans reading
	// the datastore then.
	BudgetBytesPerSec float64 `json:"budget_bytes_per_sec"`
	BudgetOpsPerSec   float64 `json:"budget_ops_per_sec"`
	Running           int     `json:"running"`
}

// BytesPerSec is the sample's mean read rate.
func (s IOSample) BytesPerSec() float64 {
	if s.Interval <= 0 {
		return 0
	}
	return float64(s.BytesRead) / s.Interval.Seconds()
}

// OpsPerSec is the sample's mean operation rate.
func (s IOSample) OpsPerSec() float64 {
	if s.Interval <= 0 {
		return 0
	}
	return float64(s.ReadOps) / s.Interval.Seconds()
}

// IOQuery selects samples; zero fields do not filter.
type IOQuery struct {
	Datastore string
	// Since and Until bound At: Since <= At < Until.
	Since, Until time.Time
	// Limit is the most returned: 0 means MaxPage.
	Limit int
}

// CheckLimit validates a query's limit and returns the one to use: 0 means
// MaxPage, a negative limit or one above MaxPage is an error. Every
// implementation checks limits with it, so that they agree.
func CheckLimit(limit int) (int, error) {
	if limit < 0 || limit > MaxPage {
		return 0, errorf("limit %d not in [0, %d]", limit, MaxPage)
	}
	if limit == 0 {
		return MaxPage, nil
	}
	return limit, nil
}

// CheckScan validates a scan before it is saved: a job id, a VM, a valid
// status that agrees with its findings and reasons (StatusOf).
func CheckScan(s *Scan) error {
	switch {
	case s.JobID <= 0:
		return errorf("scan without a job id")
	case s.VM == "":
		return errorf("scan of job %d without a VM", s.JobID)
	case !s.Status.Valid():
		return errorf("job %d: status %q is not clean, findings or incomplete", s.JobID, s.Status)
	case s.Status != StatusOf(len(s.Findings), s.Incomplete):
		return errorf("job %d: status %s, but %d findings and %d incomplete reasons", s.JobID, s.Status, len(s.Findings), len(s.Incomplete))
	}
	return nil
}

func errorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}
