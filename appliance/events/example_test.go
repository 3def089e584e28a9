package events_test

import (
	"fmt"
	"time"

	"github.com/snapscan/snapscan/appliance/events"
)

// A finding as a CEF record, the MSG of the syslog sinks' default format.
func ExampleCEF() {
	ev := events.Event{
		Kind: events.KindFinding, Time: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), Appliance: "scan-01",
		VM: "web01", Datastore: "nfs-a", Disk: "web01/disk0.qcow2", Volume: "p1",
		Path: "/var/www/up=load.php", Size: 812, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Namespace: "webshells.yar", Rule: "PHP_Webshell", Tags: []string{"webshell"}, SigName: "site", SigVersion: 12,
	}
	fmt.Println(events.CEF(&ev, events.Product{Version: "1.0"}))
	// Output:
	// CEF:0|snapscan|snapscan|1.0|webshells.yar:PHP_Webshell|YARA rule PHP_Webshell matched|8|rt=1714979289000 dvchost=scan-01 cat=finding dhost=web01 filePath=/var/www/up\=load.php fname=up\=load.php fsize=812 fileHash=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 cs1Label=rule cs1=PHP_Webshell cs2Label=namespace cs2=webshells.yar cs3Label=tags cs3=webshell cs5Label=datastore cs5=nfs-a cs6Label=disk cs6=web01/disk0.qcow2 flexString1Label=volume flexString1=p1 flexString2Label=signature set flexString2=site cn1Label=signature version cn1=12 msg=PHP_Webshell matched /var/www/up\=load.php on VM web01
}

// A Dispatcher sends each event to every sink without blocking the
// caller; Serve delivers until its context ends.
func ExampleDispatcher() {
	d, err := events.New(events.Config{
		Appliance: "scan-01",
		Syslog: []events.SyslogConfig{
			{Network: "tls", Address: "siem.example.net:6514", Format: events.FormatCEF},
			{Network: "udp", Address: "127.0.0.1:514", Format: events.FormatOCSF, Kinds: []events.Kind{events.KindFinding}},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range d.Stats() {
		fmt.Println(s.Name, s.Format, s.Capacity)
	}
	// Output:
	// tls://siem.example.net:6514 cef 10000
	// udp://127.0.0.1:514 ocsf 10000
}
