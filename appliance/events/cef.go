package events

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Product names the software in every event: CEF's Device Vendor,
// Device Product and Device Version, OCSF's metadata.product.
type Product struct {
	Vendor  string // default "snapscan"
	Name    string // default "snapscan"
	Version string // the binary's version; default "0"
}

func (p Product) withDefaults() Product {
	if p.Vendor == "" {
		p.Vendor = "snapscan"
	}
	if p.Name == "" {
		p.Name = "snapscan"
	}
	if p.Version == "" {
		p.Version = "0"
	}
	return p
}

// CEF formats an event as one ArcSight Common Event Format record,
//
//	CEF:0|Vendor|Product|Version|Class|Name|Severity|Extension
//
// Header fields escape "\" and "|" with a backslash; a line break, which
// the header may not hold, becomes a space. Extension values escape "\"
// and "=" with a backslash and write CR and LF as \r and \n; "|" is not
// escaped there (the spec's rules, "Implementing ArcSight CEF"). Invalid
// UTF-8 (file names are bytes) is replaced by U+FFFD, CEF being UTF-8.
//
// The Device Event Class ID of a finding is "namespace:rule", the way
// YARA itself names a rule; other events use their Kind. Extension keys,
// in this order, empty ones left out: rt (event time, ms since the epoch),
// dvchost (the appliance), cat (the kind), externalId (finding id), dhost
// (the VM), filePath, fname, fsize, fileHash (SHA-256, hex), cs1 rule,
// cs2 namespace, cs3 tags (comma-separated), cs4 meta (JSON array of
// {key, value}), cs5 datastore, cs6 disk, flexString1 volume, flexString2
// signature set name, cn1 signature version, cn2 scan job id, cnt (items
// an incomplete scan left out), reason (error or what was left out) and
// msg (a sentence). Each csN, cnN and flexStringN has its Label.
func CEF(e *Event, p Product) string {
	p = p.withDefaults()
	var b strings.Builder
	b.Grow(512)
	b.WriteString("CEF:0")
	class := string(e.Kind)
	if e.Kind == KindFinding {
		class = e.Namespace + ":" + e.Rule
	}
	for _, h := range []string{p.Vendor, p.Name, p.Version, class, e.title(), strconv.Itoa(e.severity())} {
		b.WriteByte('|')
		b.WriteString(cefHeader(h))
	}
	b.WriteByte('|')
	first := true
	ext := func(key, val string) {
		if val == "" {
			return
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(cefValue(val))
	}
	num := func(key string, n int64, ok bool) {
		if ok {
			ext(key, strconv.FormatInt(n, 10))
		}
	}
	labelled := func(key, label, val string) {
		if val != "" {
			ext(key+"Label", label)
			ext(key, val)
		}
	}
	ext("rt", strconv.FormatInt(e.Time.UnixMilli(), 10))
	ext("dvchost", e.Appliance)
	ext("cat", string(e.Kind))
	num("externalId", e.ID, e.ID != 0)
	ext("dhost", e.VM)
	ext("filePath", e.Path)
	ext("fname", baseName(e.Path))
	num("fsize", e.Size, e.Kind == KindFinding)
	ext("fileHash", e.SHA256)
	labelled("cs1", "rule", e.Rule)
	labelled("cs2", "namespace", e.Namespace)
	labelled("cs3", "tags", strings.Join(e.Tags, ","))
	if len(e.Meta) > 0 {
		mj, _ := json.Marshal(e.Meta)
		labelled("cs4", "meta", string(mj))
	}
	labelled("cs5", "datastore", e.Datastore)
	labelled("cs6", "disk", e.Disk)
	labelled("flexString1", "volume", e.Volume)
	labelled("flexString2", "signature set", e.SigName)
	if e.SigVersion != 0 {
		labelled("cn1", "signature version", strconv.FormatUint(e.SigVersion, 10))
	}
	if e.JobID != 0 {
		labelled("cn2", "scan job", strconv.FormatInt(e.JobID, 10))
	}
	if len(e.Reasons) > 0 {
		num("cnt", e.skipped(), true)
	}
	reason := e.Error
	if e.Kind == KindScanIncomplete && len(e.Reasons) > 0 {
		reason = "not scanned: " + e.reasonsText()
	}
	ext("reason", reason)
	ext("msg", e.summary())
	return b.String()
}

// baseName is the last element of a volume path, archive members
// included: /a/b.zip!dir/x.exe gives x.exe.
func baseName(p string) string {
	if i := strings.LastIndexAny(p, "/!"); i >= 0 {
		return p[i+1:]
	}
	return p
}

// cefHeader escapes a CEF header field.
func cefHeader(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !strings.ContainsAny(s, "\\|\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '|':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\r', '\n':
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cefValue escapes a CEF extension value.
func cefValue(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !strings.ContainsAny(s, "\\=\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '=':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\r':
			b.WriteString(`\r`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
