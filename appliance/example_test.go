package appliance_test

import (
	"errors"
	"fmt"

	"github.com/snapscan/snapscan/appliance"
)

// A misspelled setting never falls back to its default: the error names
// its key path and line.
func ExampleParse() {
	_, err := appliance.Parse([]byte("server:\n  listn: 0.0.0.0:8443\n"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, appliance.ErrConfig))
	// Output:
	// appliance: bad configuration: server.listn: unknown key (line 2)
	// true
}

// Parse fills in the defaults; Validate then names the first wrong
// setting.
func ExampleConfig_Validate() {
	c, err := appliance.Parse([]byte(`
auth: {tokens: [operator-token-0123456789]}
signatures: {trusted_keys: [/etc/snapscan/signing.pub]}
datastores: [{name: gold, path: /}]
queue: {max_scans: -1}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("job timeout:", c.Queue.JobTimeout, "grace:", c.Server.ShutdownGrace)
	fmt.Println(c.Validate())
	// Output:
	// job timeout: 24h0m0s grace: 1m0s
	// appliance: bad configuration: queue: max_scans and max_attempts must not be negative
}

// Disk paths are relative to their datastore's folder and stay inside it.
func ExampleDiskPath() {
	for _, p := range []string{"vm1/disk0.qcow2", "../other/disk.img", "/etc/shadow"} {
		path, err := appliance.DiskPath("/mnt/datastores/gold", p)
		fmt.Printf("%s -> %q, %v\n", p, path, err)
	}
	// Output:
	// vm1/disk0.qcow2 -> "/mnt/datastores/gold/vm1/disk0.qcow2", <nil>
	// ../other/disk.img -> "", appliance: bad request: disk path "../other/disk.img": must be relative to the datastore, clean, without ".."
	// /etc/shadow -> "", appliance: bad request: disk path "/etc/shadow": must be relative to the datastore, clean, without ".."
}
