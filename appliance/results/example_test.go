package results_test

import (
	"fmt"

	"github.com/snapscan/snapscan/appliance/results"
)

// One rule decides a scan's status: findings win, then anything not
// scanned makes it incomplete — never clean.
func ExampleStatusOf() {
	fmt.Println(results.StatusOf(0, nil))
	fmt.Println(results.StatusOf(0, map[string]int64{"too_large": 3}))
	fmt.Println(results.StatusOf(2, map[string]int64{"too_large": 3}))
	// Output:
	// clean
	// incomplete
	// findings
}
