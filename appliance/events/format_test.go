package events

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var testProduct = Product{Version: "1.2.3"}

// sampleFinding has characters every format must escape: "=" and "\" in
// the path, "|" in the VM name (not escaped in a CEF extension).
func sampleFinding() Event {
	return Event{
		Kind: KindFinding, Time: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC), Appliance: "appl-1",
		ID: 42, JobID: 7, VM: "web|01", Datastore: "ds-a", Disk: "vm01/disk.qcow2", Volume: "p2",
		Path: `/srv/a=b\c.exe`, Size: 68, SHA256: "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
		Namespace: "rules/planted.yar", Rule: "EICAR_Test", Tags: []string{"test", "eicar"},
		Meta:    []Meta{{"description", "EICAR test file"}, {"severity", 3}},
		SigName: "test", SigVersion: 3, FoundAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
	}
}

// The expected strings are written out by hand from the CEF and RFC 5424
// texts, not produced by the code under test.
const sampleCEF = `CEF:0|snapscan|snapscan|1.2.3|rules/planted.yar:EICAR_Test|YARA rule EICAR_Test matched|3|` +
	`rt=1714979289123 dvchost=appl-1 cat=finding externalId=42 dhost=web|01 filePath=/srv/a\=b\\c.exe fname=a\=b\\c.exe ` +
	`fsize=68 fileHash=275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f cs1Label=rule cs1=EICAR_Test ` +
	`cs2Label=namespace cs2=rules/planted.yar cs3Label=tags cs3=test,eicar ` +
	`cs4Label=meta cs4=[{"key":"description","value":"EICAR test file"},{"key":"severity","value":3}] ` +
	`cs5Label=datastore cs5=ds-a cs6Label=disk cs6=vm01/disk.qcow2 flexString1Label=volume flexString1=p2 ` +
	`flexString2Label=signature set flexString2=test cn1Label=signature version cn1=3 cn2Label=scan job cn2=7 ` +
	`msg=EICAR_Test matched /srv/a\=b\\c.exe on VM web|01`

func TestCEFFinding(t *testing.T) {
	ev := sampleFinding()
	if got := CEF(&ev, testProduct); got != sampleCEF {
		t.Errorf("CEF:\n got %s\nwant %s", got, sampleCEF)
	}
}

func TestCEFEscapes(t *testing.T) {
	for _, c := range []struct{ in, header, value string }{
		{`plain`, `plain`, `plain`},
		{`a|b`, `a\|b`, `a|b`},
		{`a\b`, `a\\b`, `a\\b`},
		{`a=b`, `a=b`, `a\=b`},
		{"two\nlines\r", "two lines ", `two\nlines\r`},
		{`\|=`, `\\\|=`, `\\|\=`},
		{"bad\xffutf8", "bad\uFFFDutf8", "bad\uFFFDutf8"},
		{"tab\tkept", "tab\tkept", "tab\tkept"},
	} {
		if got := cefHeader(c.in); got != c.header {
			t.Errorf("header %q: got %q, want %q", c.in, got, c.header)
		}
		if got := cefValue(c.in); got != c.value {
			t.Errorf("value %q: got %q, want %q", c.in, got, c.value)
		}
	}
}

func TestCEFHeaderEscapedNamespace(t *testing.T) {
	ev := Event{Kind: KindFinding, Time: time.UnixMilli(0).UTC(), Namespace: `x|y\z.yar`, Rule: "R", Path: "/p"}
	got := CEF(&ev, Product{Vendor: "V|v", Name: "N", Version: "1"})
	want := `CEF:0|V\|v|N|1|x\|y\\z.yar:R|YARA rule R matched|8|rt=0 cat=finding filePath=/p fname=p fsize=0 ` +
		`cs1Label=rule cs1=R cs2Label=namespace cs2=x|y\\z.yar msg=R matched /p on VM `
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestCEFOtherKinds(t *testing.T) {
	tm := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, c := range []struct {
		ev   Event
		want string
	}{
		{Event{Kind: KindScanFailed, Time: tm, Appliance: "a", JobID: 9, VM: "vm1", Datastore: "ds", Disk: "d.qcow2", Error: "qcow2: bad header"},
			`CEF:0|snapscan|snapscan|1.2.3|scan_failed|Scan failed|5|rt=1714979289000 dvchost=a cat=scan_failed dhost=vm1 ` +
				`cs5Label=datastore cs5=ds cs6Label=disk cs6=d.qcow2 cn2Label=scan job cn2=9 reason=qcow2: bad header ` +
				`msg=Scan failed: VM vm1 disk d.qcow2: qcow2: bad header`},
		{Event{Kind: KindScanIncomplete, Time: tm, Appliance: "a", JobID: 9, VM: "vm1", SigName: "s", SigVersion: 2,
			Reasons: map[string]int64{"too_large": 2, "read_error": 1}},
			`CEF:0|snapscan|snapscan|1.2.3|scan_incomplete|Scan incomplete|4|rt=1714979289000 dvchost=a cat=scan_incomplete dhost=vm1 ` +
				`flexString2Label=signature set flexString2=s cn1Label=signature version cn1=2 cn2Label=scan job cn2=9 cnt=3 ` +
				`reason=not scanned: read_error 1, too_large 2 msg=Scan incomplete: VM vm1: not scanned: read_error 1, too_large 2`},
		{Event{Kind: KindSignatureRefused, Time: tm, Appliance: "a", SigName: "s", SigVersion: 4, Error: "signature does not verify"},
			`CEF:0|snapscan|snapscan|1.2.3|signature_refused|Signature update refused|6|rt=1714979289000 dvchost=a cat=signature_refused ` +
				`flexString2Label=signature set flexString2=s cn1Label=signature version cn1=4 reason=signature does not verify ` +
				`msg=Signature update refused: s version 4: signature does not verify`},
	} {
		if got := CEF(&c.ev, testProduct); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.ev.Kind, got, c.want)
		}
	}
}

func TestSeverity(t *testing.T) {
	for _, c := range []struct {
		meta []Meta
		sev  int
		want int
	}{
		{nil, 0, 8},
		{[]Meta{{"severity", 3}}, 0, 3},
		{[]Meta{{"Severity", "critical"}}, 0, 10},
		{[]Meta{{"severity", "7"}}, 0, 7},
		{[]Meta{{"severity", 99}}, 0, 10},
		{[]Meta{{"severity", "bogus"}}, 0, 8},
		{[]Meta{{"severity", 3}}, 9, 9}, // the event's own wins
	} {
		ev := Event{Kind: KindFinding, Meta: c.meta, Severity: c.sev}
		if got := ev.severity(); got != c.want {
			t.Errorf("%v sev %d: got %d, want %d", c.meta, c.sev, got, c.want)
		}
	}
}

func TestRFC5424(t *testing.T) {
	h := Header{Facility: 16, Hostname: "appl 1", ProcID: "123"}
	got := string(RFC5424(h, 3, KindFinding, time.Date(2024, 5, 6, 7, 8, 9, 120000000, time.FixedZone("x", 3600)), "CEF:0|x"))
	want := "<133>1 2024-05-06T06:08:09.120000Z appl_1 snapscan 123 finding - CEF:0|x"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	got = string(RFC5424(Header{Facility: 13}, 10, KindScanFailed, time.Unix(0, 0), ""))
	if want := "<106>1 1970-01-01T00:00:00.000000Z - snapscan - scan_failed -"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := string(OctetCounted([]byte("héllo"))); got != "6 héllo" {
		t.Errorf("octet counting: %q", got)
	}
}

func TestTruncate(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"abcdef", 10, "abcdef"},
		{"abcdef", 3, "abc"},
		{"ab\u00e9", 3, "ab"},     // é cut in half
		{"a\u20acb", 3, "a"},      // € (3 bytes) cut
		{`ab\\cd`, 3, `ab`},       // half an escape
		{`ab\\cd`, 4, `ab\\`},     // a whole escape
		{`a\\\=b`, 4, `a\\`},      // \\ then half of \=
		{"\u00e9\u00e9", 4, "éé"}, // exact
	} {
		if got := string(truncate([]byte(c.in), c.n)); got != c.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestOCSFDetectionFinding(t *testing.T) {
	ev := sampleFinding()
	ev.Tags = []string{"Ransomware", "test"}
	var m map[string]any
	if err := json.Unmarshal(OCSF(&ev, testProduct), &m); err != nil {
		t.Fatal(err)
	}
	// The base event's and Detection Finding's required attributes.
	for k, want := range map[string]any{
		"class_uid": 2004.0, "category_uid": 2.0, "activity_id": 1.0, "type_uid": 200401.0,
		"time": 1714979289123.0, "severity_id": 2.0, "status_id": 1.0, "is_alert": true,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	md := m["metadata"].(map[string]any)
	if md["version"] != OCSFVersion || md["product"].(map[string]any)["version"] != "1.2.3" {
		t.Errorf("metadata = %v", md)
	}
	fi := m["finding_info"].(map[string]any)
	an := fi["analytic"].(map[string]any)
	if fi["uid"] != "42" || an["uid"] != "rules/planted.yar:EICAR_Test" || an["version"] != "3" || an["type_id"] != 1.0 {
		t.Errorf("finding_info = %v", fi)
	}
	mw := m["malware"].([]any)[0].(map[string]any)
	if ids := mw["classification_ids"].([]any); len(ids) != 1 || ids[0] != 10.0 {
		t.Errorf("classification_ids = %v, want [10] (Ransomware)", ids)
	}
	file := m["evidences"].([]any)[0].(map[string]any)["file"].(map[string]any)
	hash := file["hashes"].([]any)[0].(map[string]any)
	if file["path"] != ev.Path || file["name"] != `a=b\c.exe` || file["volume"] != "p2" || file["size"] != 68.0 ||
		hash["algorithm_id"] != 3.0 || hash["value"] != ev.SHA256 {
		t.Errorf("file = %v", file)
	}
	un := m["unmapped"].(map[string]any)
	if un["appliance"] != "appl-1" || un["datastore"] != "ds-a" || un["disk"] != "vm01/disk.qcow2" || un["namespace"] != "rules/planted.yar" ||
		len(un["meta"].([]any)) != 2 || len(un["tags"].([]any)) != 2 {
		t.Errorf("unmapped = %v", un)
	}
	if dev := m["device"].(map[string]any); dev["name"] != "web|01" || dev["type_id"] != 6.0 {
		t.Errorf("device = %v", dev)
	}
}

func TestOCSFOtherClasses(t *testing.T) {
	for _, c := range []struct {
		ev                  Event
		class, typ, status  float64
		detail, statusLabel string
	}{
		{Event{Kind: KindScanFailed, VM: "v", JobID: 3, Error: "boom"}, 6007, 600706, 2, "boom", "Failure"},
		{Event{Kind: KindVMUnreadable, VM: "v", Error: "no such disk"}, 6007, 600706, 2, "no such disk", "Failure"},
		{Event{Kind: KindScanIncomplete, VM: "v", Reasons: map[string]int64{"timeout": 2}}, 6007, 600702, 99, "", "Incomplete"},
		{Event{Kind: KindSignatureInstalled, SigName: "s", SigVersion: 5}, 6002, 600208, 1, "", "Success"},
		{Event{Kind: KindSignatureRefused, SigName: "s", SigVersion: 5, Error: "bad signature"}, 6002, 600208, 2, "bad signature", "Failure"},
	} {
		var m map[string]any
		if err := json.Unmarshal(OCSF(&c.ev, testProduct), &m); err != nil {
			t.Fatal(err)
		}
		if m["class_uid"] != c.class || m["type_uid"] != c.typ || m["status_id"] != c.status || m["status"] != c.statusLabel {
			t.Errorf("%s: class %v type %v status %v %v", c.ev.Kind, m["class_uid"], m["type_uid"], m["status_id"], m["status"])
		}
		if c.detail != "" && m["status_detail"] != c.detail {
			t.Errorf("%s: status_detail %v", c.ev.Kind, m["status_detail"])
		}
		if c.class == 6007 && m["scan"] == nil {
			t.Errorf("%s: Scan Activity without its required scan object", c.ev.Kind)
		}
		if c.class == 6002 && m["app"].(map[string]any)["version"] != "5" {
			t.Errorf("%s: app = %v", c.ev.Kind, m["app"])
		}
	}
}

func TestJSONForm(t *testing.T) {
	ev := sampleFinding()
	b, err := jsonEvent(&ev)
	if err != nil {
		t.Fatal(err)
	}
	// The keys of GET /v1/findings rows stay as they were.
	for _, k := range []string{`"kind":"finding"`, `"id":42`, `"job_id":7`, `"vm":"web|01"`, `"disk":"vm01/disk.qcow2"`,
		`"volume":"p2"`, `"path":"/srv/a=b\\c.exe"`, `"size":68`, `"namespace":"rules/planted.yar"`, `"rule":"EICAR_Test"`,
		`"tags":["test","eicar"]`, `"sig_version":3`, `"found_at":"2024-05-06T07:08:09Z"`, `"appliance":"appl-1"`,
		`"datastore":"ds-a"`, `"severity":3`, `"sig_name":"test"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON form lacks %s: %s", k, b)
		}
	}
	failed := Event{Kind: KindScanFailed, Time: ev.Time, VM: "v", Error: "x"}
	b, _ = jsonEvent(&failed)
	if strings.Contains(string(b), "found_at") || strings.Contains(string(b), `"rule"`) {
		t.Errorf("empty fields not left out: %s", b)
	}
}
