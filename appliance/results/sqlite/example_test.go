package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/sqlitedb"
)

// The appliance opens the database and hands the store its handle; the
// store keeps each job's result, its findings and the VM's last scan.
func Example() {
	dir, err := os.MkdirTemp("", "results-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	db, err := sqlitedb.Open(filepath.Join(dir, "snapscan.db"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	ctx := context.Background()
	st, err := sqlite.New(ctx, db)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()

	at := time.Date(2024, 1, 2, 15, 4, 5, 0, time.UTC)
	s := &results.Scan{JobID: 1, VM: "web-01", SigName: "main", SigVersion: 7, StartedAt: at, FinishedAt: at.Add(time.Minute),
		Disks:      []results.Disk{{Datastore: "gold", Path: "web-01.qcow2", Format: "qcow2"}},
		Incomplete: map[string]int64{"too_large": 1},
		Findings:   []results.Finding{{Datastore: "gold", Disk: "web-01.qcow2", Volume: "p1", Path: "/tmp/x.sh", Rule: "Dropper"}}}
	s.Status = results.StatusOf(len(s.Findings), s.Incomplete)
	if _, err := st.SaveScan(ctx, s); err != nil {
		fmt.Println(err)
		return
	}
	found, _ := st.Findings(ctx, results.FindingQuery{VM: "web-01"})
	for _, f := range found {
		fmt.Println(f.VM, f.Rule, f.Disk+":"+f.Volume+f.Path, f.SigVersion)
	}
	vm, _ := st.VM(ctx, "web-01")
	fmt.Println(vm.LastJob, vm.LastStatus, vm.LastScanned.Format(time.RFC3339))
	_, err = st.Scan(ctx, 2)
	fmt.Println(err)
	// Output:
	// web-01 Dropper web-01.qcow2:p1/tmp/x.sh 7
	// 1 findings 2024-01-02T15:05:05Z
	// results: not found: job 2 has no stored result
}
