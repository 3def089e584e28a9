package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/queue"
)

// onPostgres puts a test appliance on the PostgreSQL database dsn, under
// name, as the YAML would: driver postgres and a private DSN file.
func onPostgres(t *testing.T, name, dsn string) func(*Config) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "db.dsn")
	if err := os.WriteFile(p, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *Config) {
		c.Name, c.Signatures.ApplianceID = name, name
		c.Database.Driver, c.Database.Path, c.Database.DSNFile = DriverPostgres, "", p
	}
}

func join(edits ...func(*Config)) func(*Config) {
	return func(c *Config) {
		for _, e := range edits {
			if e != nil {
				e(c)
			}
		}
	}
}

// TestFence: a result is stored only under the fence of the job's current
// run, checked against the queue's tables in the save's transaction: a
// stale epoch, another holder, and the run's own holder once its lease was
// ended by the fleet are refused and store nothing; the job is then taken
// over, run again and done once, with the new run's result.
func TestFence(t *testing.T) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			var db func(*Config)
			endLease := `UPDATE queue_holders SET ended = 1 WHERE name = ?`
			if driver == DriverPostgres {
				db = onPostgres(t, "app-1", pgtest.Start(t).NewDatabase(t))
				endLease = `UPDATE queue_holders SET ended = true WHERE name = $1`
			}
			app := startApp(t, appOpts{edit: join(db, slowDatastores, func(c *Config) {
				c.Queue.BackoffBase, c.Queue.BackoffMax = 100*time.Millisecond, 200*time.Millisecond
			})})
			app.install(1)
			id := app.submit("vm05")["vm05"]
			app.waitRunning(id)
			ctx := context.Background()
			j, err := app.a.q.Job(ctx, id)
			if err != nil || j.State != queue.Running || j.Holder == "" || j.Epoch != 1 {
				t.Fatalf("job %d: %+v (%v); want running under a holder, epoch 1", id, j, err)
			}
			late := func(run queue.Job) error {
				res := &results.Scan{JobID: id, VM: "vm05", Status: results.StatusFindings, Incomplete: map[string]int64{},
					SigName: "test", SigVersion: 1, Findings: []results.Finding{{Path: "/late", Rule: "Late"}}}
				res.Fence = app.a.dbs.fence(run)
				_, err := app.a.saveScan(ctx, res, app.a.log)
				return err
			}
			stale, other := j, j
			stale.Epoch--
			other.Holder = "app-2/0123456789ab"
			for name, run := range map[string]queue.Job{"stale epoch": stale, "other holder": other} {
				if err := late(run); !errors.Is(err, results.ErrFenced) {
					t.Errorf("%s: save returned %v, want ErrFenced", name, err)
				}
			}
			// The fleet ends the lease (as a reap does when the
			// appliance looks dead): the run's own result is late now.
			if _, err := app.a.db.ExecContext(ctx, endLease, j.Holder); err != nil {
				t.Fatal(err)
			}
			if err := late(j); !errors.Is(err, results.ErrFenced) {
				t.Errorf("after the lease ended: save returned %v, want ErrFenced", err)
			}
			if _, err := app.a.results.Scan(ctx, id); !errors.Is(err, results.ErrNotFound) {
				t.Fatalf("a refused result was stored (Scan: %v)", err)
			}
			// The queue finds its lease lost, stops the run; the job goes
			// back to the queue as lost and runs again, fast now.
			if err := app.a.q.SetBudget(ctx, "ds-a", queue.Budget{MaxScans: 1}); err != nil {
				t.Fatal(err)
			}
			done := app.waitJobs(id)[0]
			if done.State != queue.Done || done.Crashes != 1 || done.Epoch < 2 {
				t.Errorf("job after the takeover: %s, %d crashes, epoch %d; want done by a later run, the first lost", done.State, done.Crashes, done.Epoch)
			}
			res, err := app.a.results.Scan(ctx, id)
			if err != nil {
				t.Fatalf("no result after the takeover: %v", err)
			}
			fs, _ := app.a.results.Findings(ctx, results.FindingQuery{JobID: id})
			for _, f := range fs {
				if f.Path == "/late" {
					t.Errorf("a refused finding is stored: %+v", f)
				}
			}
			// 3, or 4 when the stopped run itself got as far as saving.
			if n := app.metric("snapscan_results_fenced_total"); n < 3 || n > 4 {
				t.Errorf("snapscan_results_fenced_total = %v, want 3 or 4", n)
			}
			t.Logf("after the takeover: %s, %d findings, epoch %d", res.Status, len(fs), done.Epoch)
		})
	}
}

// TestFleetShared: two appliances on one PostgreSQL share results, the
// inventory and the verdict cache: the second appliance answers for the
// first one's job, and a VM with the same files scanned by the second
// after the first stopped takes its verdicts from the first one's scans.
// GET /v1/appliances shows both, with their signature versions.
func TestFleetShared(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	app1 := startApp(t, appOpts{edit: onPostgres(t, "app-1", dsn)})
	app1.install(1)
	id1 := app1.submit("vm01")["vm01"]
	if j := app1.waitJobs(id1)[0]; j.State != queue.Done {
		t.Fatalf("app-1's job: %s (%s)", j.State, j.Error)
	}
	app2 := startApp(t, appOpts{edit: onPostgres(t, "app-2", dsn)})
	var list struct {
		Appliances []ApplianceView `json:"appliances"`
	}
	if code, err := app2.call("GET", "/v1/appliances", testToken, nil, &list); code != http.StatusOK {
		t.Fatalf("GET /v1/appliances: %d %v", code, err)
	}
	if len(list.Appliances) != 2 || list.Appliances[0].Name != "app-1" || list.Appliances[0].SigVersion != 1 ||
		!list.Appliances[0].Live || list.Appliances[0].Self || list.Appliances[1].Name != "app-2" || !list.Appliances[1].Self ||
		list.Appliances[1].SigVersion != 0 {
		t.Errorf("GET /v1/appliances on app-2 before its signatures: %+v", list.Appliances)
	}
	// Any appliance answers for any job.
	var sv ScanView
	if code, _ := app2.call("GET", "/v1/scans/"+itoa(id1), testToken, nil, &sv); code != http.StatusOK || sv.State != queue.Done || sv.Result == nil {
		t.Fatalf("app-2 on app-1's job %d: %d %+v", id1, code, sv)
	}
	app1.stop()
	app2.install(1)
	eventually(t, "app-2's signature version in the register", 30*time.Second, func() bool {
		app1.call("GET", "/v1/appliances", testToken, nil, nil) // (stopped: no answer)
		app2.call("GET", "/v1/appliances", testToken, nil, &list)
		return len(list.Appliances) == 2 && list.Appliances[1].SigVersion == 1
	})
	id2 := app2.submit("vm11")["vm11"]
	if j := app2.waitJobs(id2)[0]; j.State != queue.Done || !strings.HasPrefix(j.Holder, "app-2/") {
		t.Fatalf("app-2's job: %s under %s (%s)", j.State, j.Holder, j.Error)
	}
	r1, err := app2.a.results.Scan(context.Background(), id1)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := app2.a.results.Scan(context.Background(), id2)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Cached == 0 || r2.Files != r1.Files {
		t.Errorf("app-2 scanned vm11 with %d of %d files from the verdict cache (vm01: %d files); want hits from app-1's verdicts", r2.Cached, r2.Files, r1.Files)
	}
	t.Logf("vm11 on app-2: %d files, %d verdicts from app-1's scan of vm01", r2.Files, r2.Cached)
}

// TestNameInUse: a second appliance under a name another one announced
// recently is refused at start, naming the key; the name's own appliance
// restarting is not.
func TestNameInUse(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	app1 := startApp(t, appOpts{edit: onPostgres(t, "app-1", dsn)})
	cfg := *app1.cfg
	cfg.Signatures.StateDir = filepath.Join(t.TempDir(), "sig") // another appliance
	if _, err := New(context.Background(), &cfg, Options{Logger: testLogger(t)}); err == nil || !errors.Is(err, ErrConfig) ||
		!strings.Contains(err.Error(), `name: "app-1" is in use by another appliance`) {
		t.Fatalf("a second appliance named app-1: %v, want ErrConfig naming the name", err)
	}
	app1.stop()
	app1.reopen() // the same appliance again
}

// TestDatabaseFaults: the database goes away while a scan runs — the
// network to PostgreSQL is cut, the server is stopped and started again
// (a restart held long enough for the scan to end meanwhile), or the
// primary stops and its synchronous standby is promoted, the connection
// string naming both hosts with target_session_attrs=read-write. The
// appliance says it is not ready, its metrics show the database down, it
// starts nothing new, and the running scan goes on within its lease; its
// result, which could not be written, is retried until the database is
// back, then stored: the job is done once, on its first attempt, and the
// next job runs.
func TestDatabaseFaults(t *testing.T) {
	shared := pgtest.Start(t) // the cut and the restart; a failover needs a primary of its own
	for _, fault := range []string{"network cut", "server restart", "failover"} {
		t.Run(fault, func(t *testing.T) {
			if raceEnabled && fault != "network cut" {
				t.Skip("under -race, the network cut covers the same code; the suite's time is kept for the rest")
			}
			srv := shared
			if fault == "failover" {
				srv = pgtest.Start(t)
			}
			dsn := srv.NewDatabase(t)
			var down, up func()
			switch fault {
			case "network cut":
				proxy := pgtest.NewProxy(t, srv.Port())
				dsn = proxy.DSN(srv, dsn)
				down, up = proxy.Cut, proxy.Mend
			case "server restart":
				down = func() {
					if err := srv.Stop(); err != nil {
						t.Fatal(err)
					}
				}
				up = func() {
					if err := srv.Start(); err != nil {
						t.Fatal(err)
					}
				}
			case "failover":
				standby := srv.StartStandby(t)
				dsn = strings.Replace(dsn, fmt.Sprintf("127.0.0.1:%d", srv.Port()),
					fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", srv.Port(), standby.Port()), 1) + "&target_session_attrs=read-write"
				down = func() {
					if err := srv.Stop(); err != nil {
						t.Fatal(err)
					}
				}
				up = func() {
					if err := standby.Promote(); err != nil {
						t.Fatal(err)
					}
				}
			}
			testDatabaseFault(t, dsn, down, up)
		})
	}
}

func testDatabaseFault(t *testing.T, dsn string, down, up func()) {
	app := startApp(t, appOpts{edit: join(onPostgres(t, "app-1", dsn), func(c *Config) {
		for i := range c.Datastores {
			c.Datastores[i].MaxScans, c.Datastores[i].BytesPerSec = 1, 1<<20
		}
	})})
	app.install(1)
	ids := app.submit("vm03", "vm13")
	app.waitRunning(ids["vm03"])
	down()
	t.Log("database down")
	downAt := time.Now()
	eventually(t, "readyz to fail naming the database", 10*time.Second, func() bool {
		code, _ := app.call("GET", "/readyz", "", nil, nil)
		return code == http.StatusServiceUnavailable
	})
	var ready struct{ Reasons []string }
	if resp, err := http.Get(app.base + "/readyz"); err == nil {
		json.NewDecoder(resp.Body).Decode(&ready)
		resp.Body.Close()
	}
	if !slices.Contains(ready.Reasons, "database unavailable") {
		t.Errorf("readyz reasons while the database is down: %q", ready.Reasons)
	}
	if up := app.metric("snapscan_database_up"); up != 0 {
		t.Errorf("snapscan_database_up = %v while the database is down", up)
	}
	eventually(t, "the scan to end and its save to be retried", 15*time.Second, func() bool {
		return app.metric("snapscan_result_save_retries_total") > 0
	})
	if time.Since(downAt) > 12*time.Second {
		t.Fatalf("the scan ended %s after the database went down: too late for its lease (15 s); make the disk smaller", time.Since(downAt))
	}
	eventually(t, "the queue to see the database gone", 5*time.Second, func() bool {
		return app.metric("snapscan_queue_store_ok") == 0
	})
	time.Sleep(500 * time.Millisecond)
	if m := app.a.q.Metrics(); m.Started != 1 {
		t.Errorf("while the database is down: %d jobs started, want 1 (nothing new)", m.Started)
	}
	time.Sleep(time.Second)
	up()
	t.Logf("database back after %s", time.Since(downAt).Round(time.Millisecond))
	jobs := app.waitJobs(ids["vm03"], ids["vm13"])
	for _, j := range jobs {
		if j.State != queue.Done || j.Attempts != 1 || j.Crashes != 0 {
			t.Errorf("job %d (%s): %s after %d attempts, %d crashes (%s); want done at once", j.ID, j.VM, j.State, j.Attempts, j.Crashes, j.Error)
		}
		if _, err := app.a.results.Scan(context.Background(), j.ID); err != nil {
			t.Errorf("job %d: no result: %v", j.ID, err)
		}
	}
	eventually(t, "readyz again", 15*time.Second, func() bool {
		code, _ := app.call("GET", "/readyz", "", nil, nil)
		return code == http.StatusOK
	})
	if up := app.metric("snapscan_database_up"); up != 1 {
		t.Errorf("snapscan_database_up = %v after the database came back", up)
	}
	if n := app.metric("snapscan_results_fenced_total"); n != 0 {
		t.Errorf("snapscan_results_fenced_total = %v: a result was refused", n)
	}
}

// TestFleetRescanOnce: a new signature version installed on two appliances
// of one fleet, one after the other and then at once, enqueues the rescan
// of the VMs once: one job per VM, not one per appliance.
func TestFleetRescanOnce(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	fast := func(c *Config) { c.Signatures.RescanSpread = time.Millisecond }
	app1 := startApp(t, appOpts{edit: join(onPostgres(t, "app-1", dsn), fast)})
	app2 := startApp(t, appOpts{edit: join(onPostgres(t, "app-2", dsn), fast)})
	app1.install(1)
	app2.install(1)
	vms := []string{"vm01", "vm02", "vm03", "vm04"}
	var ids []int64
	for _, id := range app1.submit(vms...) {
		ids = append(ids, id)
	}
	app1.waitJobs(ids...)
	ctx := context.Background()
	jobs := func() []queue.Job {
		t.Helper()
		l, err := app1.a.q.List(ctx, queue.ListOptions{Ascending: true})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	waitAll := func(n int, version string) {
		t.Helper()
		var l []queue.Job
		eventually(t, "rescans for version "+version, 30*time.Second, func() bool {
			l = jobs()
			done := 0
			for _, j := range l {
				if j.SigVersion == version && j.State == queue.Done {
					done++
				}
			}
			return done == len(vms)
		})
		// Give a second enqueue the time it would take.
		time.Sleep(1500 * time.Millisecond)
		if l = jobs(); len(l) != n {
			t.Fatalf("%d jobs after the rescans for version %s, want %d (one rescan per VM)", len(l), version, n)
		}
	}
	// Version 2 reaches app-2 while the rescans app-1 enqueued run
	// (slowly): app-2 enqueues nothing, not even for the VMs being
	// rescanned, whose last scan is still under version 1.
	budget := func(b queue.Budget) {
		for _, ds := range []string{"ds-a", "ds-b"} {
			if err := app1.a.q.SetBudget(ctx, ds, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	budget(queue.Budget{MaxScans: 1, BytesPerSec: 32 << 10})
	app1.install(2)
	eventually(t, "a rescan to run", 30*time.Second, func() bool {
		for _, j := range jobs() {
			if j.SigVersion == "2" && j.State == queue.Running {
				return true
			}
		}
		return false
	})
	app2.install(2)
	time.Sleep(1500 * time.Millisecond)
	if l := jobs(); len(l) != 8 {
		t.Fatalf("the second appliance's install of version 2 during the rescans: %d jobs, want 8", len(l))
	}
	budget(queue.Budget{MaxScans: 2})
	waitAll(8, "2")
	installed := make(chan struct{})
	go func() { app2.install(3); close(installed) }()
	app1.install(3)
	<-installed
	waitAll(12, "3")
	var list struct {
		Appliances []ApplianceView `json:"appliances"`
	}
	eventually(t, "both appliances on version 3 in the register", 15*time.Second, func() bool {
		app2.call("GET", "/v1/appliances", testToken, nil, &list)
		return len(list.Appliances) == 2 && list.Appliances[0].SigVersion == 3 && list.Appliances[1].SigVersion == 3
	})
}

// TestStartWhileDatabaseDown: an appliance started while its PostgreSQL
// is down (restarting, failing over) waits for it and starts once it
// answers; one whose connection string names a database that does not
// exist fails at once, naming the database.
func TestStartWhileDatabaseDown(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(2 * time.Second)
		if err := srv.Start(); err != nil {
			t.Error(err)
		}
	}()
	t0 := time.Now()
	app := startApp(t, appOpts{edit: onPostgres(t, "app-1", dsn)})
	if d := time.Since(t0); d < 2*time.Second {
		t.Errorf("the appliance started after %v, before the database did", d)
	}
	app.install(1)
	id := app.submit("vm01")["vm01"]
	if j := app.waitJobs(id)[0]; j.State != queue.Done {
		t.Fatalf("job after a start on a database that came up late: %s (%s)", j.State, j.Error)
	}

	cfg := *app.cfg
	bad := strings.Replace(dsn, "/postgres?", "/nosuchdb?", 1)
	onPostgres(t, "app-2", bad)(&cfg)
	cfg.Signatures.StateDir = filepath.Join(t.TempDir(), "sig")
	t0 = time.Now()
	_, err := New(context.Background(), &cfg, Options{Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "nosuchdb") {
		t.Fatalf("an appliance on a database that does not exist: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("a database that does not exist took %v to be refused", d)
	}
}
