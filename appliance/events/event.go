package events

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Kind says what happened. It is the "kind" of the JSON form, the MSGID
// of the syslog header and the Device Event Class ID of CEF (for kinds
// other than findings, whose class is the rule).
type Kind string

// The kinds of event the appliance sends.
const (
	// KindFinding: a rule matched a file. Every finding is one event.
	KindFinding Kind = "finding"
	// KindScanFailed: a scan job ended failed (it will not be retried).
	KindScanFailed Kind = "scan_failed"
	// KindScanIncomplete: a scan finished but could not read or scan
	// everything (Reasons says what and how often); it is not clean.
	KindScanIncomplete Kind = "scan_incomplete"
	// KindVMUnreadable: a VM could not be snapshotted, or one of its disks
	// could not be opened or read.
	KindVMUnreadable Kind = "vm_unreadable"
	// KindSignatureInstalled: a signature set version became active.
	KindSignatureInstalled Kind = "signature_installed"
	// KindSignatureRefused: a signature bundle was offered and refused
	// (bad signature, wrong name, older version, does not compile...).
	KindSignatureRefused Kind = "signature_refused"
)

// Kinds lists every kind, in the order the documentation gives them.
var Kinds = []Kind{KindFinding, KindScanFailed, KindScanIncomplete, KindVMUnreadable, KindSignatureInstalled, KindSignatureRefused}

// Event is one thing the appliance tells a SIEM. Fields that do not apply
// to a kind are left empty and omitted from every format.
//
// The JSON form (the "json" format, and the original JSON lines and
// webhook body) is this struct as encoding/json writes it; the keys of a
// finding are those of the appliance's GET /v1/findings rows plus kind,
// time, appliance, datastore, severity and sig_name.
type Event struct {
	Kind Kind      `json:"kind"`
	Time time.Time `json:"time"`
	// Appliance names the appliance that saw it (signatures.appliance_id,
	// by default the host name); the Dispatcher fills it in when empty.
	Appliance string `json:"appliance"`
	// Severity is 0 (least) to 10 (most), CEF's scale; zero means the
	// kind's default (DefaultSeverity), or for a finding the rule's
	// "severity" meta when it has one.
	Severity int `json:"severity"`

	// ID is the finding's id in the appliance's database.
	ID        int64  `json:"id,omitempty"`
	JobID     int64  `json:"job_id,omitempty"`
	VM        string `json:"vm,omitempty"`
	Datastore string `json:"datastore,omitempty"`
	// Disk is the disk's path on its datastore.
	Disk   string `json:"disk,omitempty"`
	Volume string `json:"volume,omitempty"`
	// Path is the file's path in the volume ('/'-separated, absolute;
	// archive members as /a.zip!inner).
	Path   string `json:"path,omitempty"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`

	Namespace string   `json:"namespace,omitempty"`
	Rule      string   `json:"rule,omitempty"`
	Tags      []string `json:"tags,omitempty"`
	Meta      []Meta   `json:"meta,omitempty"`

	SigName    string    `json:"sig_name,omitempty"`
	SigVersion uint64    `json:"sig_version,omitempty"`
	FoundAt    time.Time `json:"found_at,omitzero"`

	// Error is why a scan failed, a VM could not be read or a bundle was
	// refused.
	Error string `json:"error,omitempty"`
	// Reasons counts what an incomplete scan left out, by reason
	// (the scanner's skip reasons: too_large, timeout, read_error, ...).
	Reasons map[string]int64 `json:"reasons,omitempty"`
}

// Meta is one metadata entry of a rule, in the rule's order (keys may
// repeat). Value is a string, an integer or a bool.
type Meta struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// DefaultSeverity is each kind's severity when the event does not say.
func DefaultSeverity(k Kind) int {
	switch k {
	case KindFinding:
		return 8
	case KindScanFailed, KindVMUnreadable:
		return 5
	case KindScanIncomplete:
		return 4
	case KindSignatureRefused:
		return 6
	case KindSignatureInstalled:
		return 1
	}
	return 5
}

// severity is the event's effective severity, 0-10.
func (e *Event) severity() int {
	if e.Severity > 0 {
		return min(e.Severity, 10)
	}
	if e.Kind == KindFinding {
		if s, ok := metaSeverity(e.Meta); ok {
			return s
		}
	}
	return DefaultSeverity(e.Kind)
}

// metaSeverity reads a rule's "severity" meta: an integer 0-10, or one of
// the words rule authors use (low, medium, high, critical...).
func metaSeverity(meta []Meta) (int, bool) {
	for _, m := range meta {
		if !strings.EqualFold(m.Key, "severity") {
			continue
		}
		switch v := m.Value.(type) {
		case int:
			return clamp(int64(v)), true
		case int64:
			return clamp(v), true
		case float64:
			return clamp(int64(v)), true
		case string:
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return clamp(n), true
			}
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "info", "informational":
				return 1, true
			case "low":
				return 3, true
			case "medium", "moderate":
				return 5, true
			case "high":
				return 8, true
			case "critical", "very-high", "very high":
				return 10, true
			}
		}
	}
	return 0, false
}

func clamp(n int64) int { return int(max(0, min(n, 10))) }

// title is a short human description of the event, the CEF Name and the
// OCSF message.
func (e *Event) title() string {
	switch e.Kind {
	case KindFinding:
		return "YARA rule " + e.Rule + " matched"
	case KindScanFailed:
		return "Scan failed"
	case KindScanIncomplete:
		return "Scan incomplete"
	case KindVMUnreadable:
		return "VM could not be read"
	case KindSignatureInstalled:
		return "Signature update installed"
	case KindSignatureRefused:
		return "Signature update refused"
	}
	return string(e.Kind)
}

// summary is one sentence with the event's particulars, the CEF msg.
func (e *Event) summary() string {
	var b strings.Builder
	switch e.Kind {
	case KindFinding:
		fmt.Fprintf(&b, "%s matched %s on VM %s", e.Rule, e.Path, e.VM)
	case KindScanFailed, KindScanIncomplete, KindVMUnreadable:
		fmt.Fprintf(&b, "%s: VM %s", e.title(), e.VM)
		if e.Disk != "" {
			fmt.Fprintf(&b, " disk %s", e.Disk)
		}
		if e.Kind == KindScanIncomplete && len(e.Reasons) > 0 {
			b.WriteString(": not scanned: " + e.reasonsText())
		}
	case KindSignatureInstalled, KindSignatureRefused:
		fmt.Fprintf(&b, "%s: %s version %d", e.title(), e.SigName, e.SigVersion)
	default:
		b.WriteString(e.title())
	}
	if e.Error != "" {
		b.WriteString(": " + e.Error)
	}
	return b.String()
}

// reasonsText is "read_error 2, too_large 1", reasons sorted by name.
func (e *Event) reasonsText() string {
	keys := make([]string, 0, len(e.Reasons))
	for k := range e.Reasons {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, e.Reasons[k])
	}
	return strings.Join(parts, ", ")
}

func (e *Event) skipped() int64 {
	var n int64
	for _, c := range e.Reasons {
		n += c
	}
	return n
}
