package events

import (
	"encoding/json"
	"strconv"
	"strings"
)

// OCSFVersion is the OCSF schema version the "ocsf" format follows
// (1.5.0: the first with malware, malware_scan_info and file.volume in
// Detection Finding).
const OCSFVersion = "1.5.0"

// OCSF class identifiers used by the "ocsf" format.
const (
	OCSFDetectionFinding     = 2004 // findings
	OCSFScanActivity         = 6007 // scans failed or incomplete, VMs unreadable
	OCSFApplicationLifecycle = 6002 // signature updates installed or refused
)

// OCSF formats an event as one OCSF event (JSON, no trailing newline):
//
//   - a finding is a Detection Finding (class_uid 2004, activity Create):
//     finding_info names the rule as its analytic (uid "namespace:rule",
//     version the signature version) and the finding id as its uid;
//     evidences and malware[].files carry the file (path, name, size,
//     SHA-256, volume) and the VM as a virtual device; resources list the
//     VM, datastore and disk;
//   - a failed or incomplete scan, or an unreadable VM, is a Scan Activity
//     (6007): Error, or Completed with status Other ("Incomplete") and
//     num_skipped_items;
//   - a signature update is an Application Lifecycle (6002) Update of the
//     signature set, status Success (installed) or Failure (refused).
//
// In every class, "unmapped" holds the fields OCSF has no place for (the
// appliance, the rule's namespace, tags and meta, the datastore, disk and
// job), with the keys of the JSON form.
func OCSF(e *Event, p Product) []byte {
	p = p.withDefaults()
	sev := e.severity()
	sevID := ocsfSeverity(sev)
	m := map[string]any{
		"time":        e.Time.UnixMilli(),
		"severity_id": sevID,
		"severity":    ocsfSeverityNames[sevID],
		"message":     e.summary(),
		"metadata": map[string]any{
			"version":  OCSFVersion,
			"product":  map[string]any{"name": p.Name, "vendor_name": p.Vendor, "version": p.Version},
			"log_name": string(e.Kind),
		},
	}
	set := func(classUID, category int, className, categoryName string, activity int, activityName string) {
		m["class_uid"], m["class_name"] = classUID, className
		m["category_uid"], m["category_name"] = category, categoryName
		m["activity_id"], m["activity_name"] = activity, activityName
		m["type_uid"], m["type_name"] = classUID*100+activity, className+": "+activityName
	}
	vmDevice := func() map[string]any {
		// type_id 6: Virtual.
		return map[string]any{"name": e.VM, "hostname": e.VM, "type_id": 6, "type": "Virtual"}
	}
	unmapped := map[string]any{"appliance": e.Appliance}
	put := func(k string, v any, ok bool) {
		if ok {
			unmapped[k] = v
		}
	}
	put("job_id", e.JobID, e.JobID != 0)
	put("datastore", e.Datastore, e.Datastore != "")
	put("disk", e.Disk, e.Disk != "")
	put("sig_name", e.SigName, e.SigName != "")
	put("sig_version", e.SigVersion, e.SigVersion != 0)

	switch e.Kind {
	case KindFinding:
		set(OCSFDetectionFinding, 2, "Detection Finding", "Findings", 1, "Create")
		m["status_id"], m["status"] = 1, "New"
		m["is_alert"] = true
		file := map[string]any{
			"name": baseName(e.Path), "path": e.Path, "size": e.Size,
			"type_id": 1, "type": "Regular File",
		}
		if e.SHA256 != "" {
			file["hashes"] = []any{map[string]any{"algorithm_id": 3, "algorithm": "SHA-256", "value": e.SHA256}}
		}
		if e.Volume != "" {
			file["volume"] = e.Volume
		}
		uid := strconv.FormatInt(e.ID, 10)
		if e.ID == 0 {
			uid = e.Appliance + "/" + e.VM + "/" + e.Path + "/" + e.Namespace + ":" + e.Rule
		}
		analytic := map[string]any{"name": e.Rule, "uid": e.Namespace + ":" + e.Rule, "type_id": 1, "type": "Rule", "category": e.Namespace}
		if e.SigVersion != 0 {
			analytic["version"] = strconv.FormatUint(e.SigVersion, 10)
		}
		info := map[string]any{"uid": uid, "title": e.title(), "desc": e.summary(), "analytic": analytic}
		if len(e.Tags) > 0 {
			info["types"] = e.Tags
		}
		if !e.FoundAt.IsZero() {
			info["created_time"] = e.FoundAt.UnixMilli()
		}
		m["finding_info"] = info
		m["evidences"] = []any{map[string]any{"file": file, "device": vmDevice()}}
		m["malware"] = []any{map[string]any{
			"name": e.Rule, "uid": e.Namespace + ":" + e.Rule,
			"classification_ids": malwareClasses(e.Tags),
			"files":              []any{file},
			"severity_id":        sevID, "severity": ocsfSeverityNames[sevID],
		}}
		if e.JobID != 0 {
			m["malware_scan_info"] = map[string]any{"uid": strconv.FormatInt(e.JobID, 10), "type_id": 0, "type": "Unknown"}
		}
		m["device"] = vmDevice()
		m["resources"] = ocsfResources(e)
		put("namespace", e.Namespace, true)
		put("rule", e.Rule, true)
		put("tags", e.Tags, len(e.Tags) > 0)
		put("meta", e.Meta, len(e.Meta) > 0)
	case KindScanFailed, KindScanIncomplete, KindVMUnreadable:
		if e.Kind == KindScanIncomplete {
			set(OCSFScanActivity, 6, "Scan Activity", "Application Activity", 2, "Completed")
			m["status_id"], m["status"] = 99, "Incomplete"
			m["num_skipped_items"] = e.skipped()
			put("reasons", e.Reasons, len(e.Reasons) > 0)
		} else {
			set(OCSFScanActivity, 6, "Scan Activity", "Application Activity", 6, "Error")
			m["status_id"], m["status"] = 2, "Failure"
		}
		if e.Error != "" {
			m["status_detail"] = e.Error
		}
		scan := map[string]any{"type_id": 0, "type": "Unknown", "name": "VM " + e.VM}
		if e.JobID != 0 {
			scan["uid"] = strconv.FormatInt(e.JobID, 10)
		}
		m["scan"] = scan
		m["device"] = vmDevice()
		put("vm", e.VM, e.VM != "")
	case KindSignatureInstalled, KindSignatureRefused:
		set(OCSFApplicationLifecycle, 6, "Application Lifecycle", "Application Activity", 8, "Update")
		if e.Kind == KindSignatureInstalled {
			m["status_id"], m["status"] = 1, "Success"
		} else {
			m["status_id"], m["status"] = 2, "Failure"
		}
		if e.Error != "" {
			m["status_detail"] = e.Error
		}
		app := map[string]any{"name": e.SigName, "vendor_name": p.Vendor}
		if e.SigVersion != 0 {
			app["version"] = strconv.FormatUint(e.SigVersion, 10)
		}
		m["app"] = app
	default:
		set(0, 0, "Base Event", "Uncategorized", 99, "Other")
	}
	m["unmapped"] = unmapped
	b, _ := json.Marshal(m)
	return b
}

// ocsfSeverity maps CEF's 0-10 to OCSF severity_id: 1 Informational,
// 2 Low, 3 Medium, 4 High, 5 Critical (the bands CEF names Low 0-3,
// Medium 4-6, High 7-8, Very-High 9-10, with 0-1 as informational).
func ocsfSeverity(s int) int {
	switch {
	case s <= 1:
		return 1
	case s <= 3:
		return 2
	case s <= 6:
		return 3
	case s <= 8:
		return 4
	}
	return 5
}

var ocsfSeverityNames = map[int]string{0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

// malwareIDs are OCSF's malware classification_ids, by caption.
var malwareIDs = map[string]int{
	"adware": 1, "backdoor": 2, "bot": 3, "bootkit": 4, "ddos": 5, "downloader": 6, "dropper": 7,
	"exploit-kit": 8, "keylogger": 9, "ransomware": 10, "remote-access-trojan": 11, "rat": 11,
	"resource-exploitation": 13, "rogue-security-software": 14, "rootkit": 15, "screen-capture": 16,
	"spyware": 17, "trojan": 18, "virus": 19, "webshell": 20, "wiper": 21, "worm": 22,
}

// malwareClasses maps a rule's tags that name an OCSF malware class
// (Ransomware, trojan, webshell...) to its id; [0] (Unknown) when none does.
func malwareClasses(tags []string) []int {
	var out []int
	seen := map[int]bool{}
	for _, t := range tags {
		k := strings.ToLower(strings.ReplaceAll(t, "_", "-"))
		if id, ok := malwareIDs[k]; ok && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	if len(out) == 0 {
		return []int{0}
	}
	return out
}

func ocsfResources(e *Event) []any {
	var out []any
	add := func(typ, name string) {
		if name != "" {
			out = append(out, map[string]any{"type": typ, "name": name, "uid": name})
		}
	}
	add("Virtual Machine", e.VM)
	add("Datastore", e.Datastore)
	add("Virtual Disk", e.Disk)
	return out
}
