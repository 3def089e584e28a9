package connector_test

import (
	"errors"
	"fmt"

	"github.com/snapscan/snapscan/connector"
)

// A connector's errors name the VM and disk once, say what kind of failure
// it is, and whether a retry can help.
func ExampleError() {
	err := fmt.Errorf("scan job 42: %w", &connector.Error{
		Kind: connector.Refused, Op: "freeze", VM: "db1", Disk: "sdb",
		Reason: "the disk is shareable (attached to several VMs): a snapshot of it is not consistent",
	})
	fmt.Println(err)
	fmt.Println(errors.Is(err, connector.ErrRefused), connector.IsPermanent(err))

	err = &connector.Error{Kind: connector.Refused, Op: "freeze", VM: "web3", Retry: true, Reason: "a migration is running"}
	fmt.Println(connector.IsPermanent(err))
	// Output:
	// scan job 42: freeze VM "db1" disk sdb: refused: the disk is shareable (attached to several VMs): a snapshot of it is not consistent
	// true true
	// false
}
