package appliance

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/queue"
)

// spoofRules find the guest's own planted file (EICAR) and the other
// disk's content.
const spoofRules = `
rule EICAR_Test_File {
	strings:
		$e = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
	condition:
		$e at 0
}
rule Other_Disk {
	strings:
		$o = "OTHER-DISK-OF-THE-DATASTORE"
	condition:
		$o
}
`

// submitDisks submits a scan and returns the status code, the scan and the
// error message.
func (ta *testApp) submitDisks(vm string, disks ...map[string]any) (int, ScanView, string) {
	ta.t.Helper()
	var s ScanView
	code, err := ta.call("POST", "/v1/scans", testToken, map[string]any{"vm": vm, "disks": disks}, &s)
	if err != nil {
		ta.t.Fatal(err)
	}
	return code, s, ta.lastError
}

// TestFormatSpoofing is issue 10.1 through the appliance: a guest owning a
// raw disk wrote a qcow2 header into it naming another disk of the same
// datastore as its backing file. Declared raw, the guest's own planted
// file is found; probed, the image's backing file is one the submitter did
// not name, and the scan is refused — never "done with 0 findings". Named
// as a layer, the chain is the submitter's and is read.
func TestFormatSpoofing(t *testing.T) {
	testenv.NeedTools(t, "mkfs.ext4", "qemu-img")
	spoof := testenv.Fixture(t, "spoofed-disk.sh")
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-spoof", Path: spoof})
	}})
	rules := filepath.Join(app.dir, "spoof.yar")
	if err := os.WriteFile(rules, []byte(spoofRules), 0o644); err != nil {
		t.Fatal(err)
	}
	app.installRules(1, rules)

	tests := []struct {
		name       string
		disk       map[string]any
		wantState  queue.State
		wantRules  []string // findings, by rule
		wantErrors []string // in the job's error
	}{
		{"declared raw", map[string]any{"datastore": "ds-spoof", "path": "guest.raw", "format": "raw"}, queue.Done, []string{"EICAR_Test_File"}, nil},
		{"probed", map[string]any{"datastore": "ds-spoof", "path": "guest.raw"}, queue.Failed, nil,
			[]string{"ds-spoof: guest.raw", `"victim.raw"`, "not named"}},
		{"probed, the backing file named", map[string]any{"datastore": "ds-spoof", "path": "guest.raw", "layers": []string{"victim.raw"}}, queue.Done, []string{"Other_Disk"}, nil},
		{"declared qcow2 but raw", map[string]any{"datastore": "ds-spoof", "path": "victim.raw", "format": "qcow2"}, queue.Failed, nil,
			[]string{"ds-spoof: victim.raw", "declared qcow2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := strings.ReplaceAll(tt.name, " ", "-")
			code, s, msg := app.submitDisks(vm, tt.disk)
			if code != http.StatusAccepted {
				t.Fatalf("submit: %d %s", code, msg)
			}
			j := app.waitJobs(s.ID)[0]
			if j.State != tt.wantState {
				t.Fatalf("job %s (error %q), want %s", j.State, j.Error, tt.wantState)
			}
			for _, w := range tt.wantErrors {
				if !strings.Contains(j.Error, w) {
					t.Errorf("job error %q does not say %q", j.Error, w)
				}
			}
			t.Logf("job %s: %q", j.State, j.Error)
			noHostPath(t, "job error", j.Error, spoof, app.dir, app.fx)
			if j.State == queue.Failed {
				if j.Attempts != 1 {
					t.Errorf("failed after %d attempts, want at once", j.Attempts)
				}
				if _, err := app.a.results.Scan(context.Background(), j.ID); err == nil {
					t.Errorf("a refused scan stored a result")
				}
				return
			}
			r, err := app.a.results.Scan(context.Background(), j.ID)
			if err != nil {
				t.Fatal(err)
			}
			f, err := app.a.results.Findings(context.Background(), results.FindingQuery{JobID: j.ID})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, x := range f {
				got = append(got, x.Rule)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantRules, ",") || r.Status != results.StatusFindings {
				t.Errorf("status %s, findings %v; want findings %v", r.Status, got, tt.wantRules)
			}
			if r.Disks[0].Format != stringOf(tt.disk["format"]) {
				t.Errorf("stored disk %+v, want the declared format", r.Disks[0])
			}
		})
	}
	// The inventory keeps how the disk was declared.
	v, err := app.a.results.VM(context.Background(), "declared-raw")
	if err != nil || len(v.Disks) != 1 || v.Disks[0].Format != "raw" {
		t.Errorf("inventory: %+v, %v", v, err)
	}
}

func stringOf(v any) string {
	s, _ := v.(string)
	return s
}

// noHostPath fails when msg names any of the host folders (API clients
// see it).
func noHostPath(t *testing.T, what, msg string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if d != "" && strings.Contains(msg, d) {
			t.Errorf("%s %q names the host folder %s", what, msg, d)
		}
	}
	if strings.Contains(msg, os.TempDir()) {
		t.Errorf("%s %q names a host path", what, msg)
	}
}

// TestDatastoreLinks is issue 10.7's symbolic-link half: a datastore entry
// that resolves outside its datastore (here, to the appliance's own
// signing key) is refused at submit, and again when the scan starts if the
// link changed since; links within the datastore are followed. Neither the
// refusal nor the job's error says where the link points.
func TestDatastoreLinks(t *testing.T) {
	ds := t.TempDir()
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-c", Path: ds, MaxScans: 1})
	}})
	app.install(1)
	key := filepath.Join(app.dir, "signer.pub")
	img := filepath.Join(app.fx, "ds-a", "vm05.img")
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(ds, "vm.img"), data, 0o644))
	must(os.Mkdir(filepath.Join(ds, "links"), 0o755))
	must(os.Symlink("../vm.img", filepath.Join(ds, "links", "inside.img")))
	must(os.Symlink(key, filepath.Join(ds, "escape.img")))
	must(os.Symlink(filepath.Dir(key), filepath.Join(ds, "outdir")))
	must(os.Symlink(filepath.Join(ds, "nothing"), filepath.Join(ds, "dangling.img")))

	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"links/inside.img", http.StatusAccepted, ""},
		{"escape.img", http.StatusBadRequest, `disks[0].path: "escape.img" resolves outside the datastore ds-c`},
		{"outdir/signer.pub", http.StatusBadRequest, "resolves outside the datastore"},
		{"dangling.img", http.StatusBadRequest, `"dangling.img" is not a file on the datastore ds-c`},
		{"links", http.StatusBadRequest, "is not a file on the datastore"},
		{"../ds-a/vm01.qcow2", http.StatusBadRequest, "must be a clean path"},
	} {
		code, s, msg := app.submitDisks("vm-"+strings.ReplaceAll(tc.path, "/", "-"), map[string]any{"datastore": "ds-c", "path": tc.path})
		if code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, code, msg, tc.code, tc.want)
		}
		noHostPath(t, "refusal", msg, app.dir, ds)
		if code == http.StatusAccepted {
			if j := app.waitJobs(s.ID)[0]; j.State != queue.Done {
				t.Errorf("%s: %s (%s), want done", tc.path, j.State, j.Error)
			}
		}
	}
	// A link swapped after the submit, before the scan: refused then.
	if _, err := app.call("POST", "/v1/datastores/ds-c/pause", testToken, nil, nil); err != nil {
		t.Fatal(err)
	}
	code, s, msg := app.submitDisks("vm-swapped", map[string]any{"datastore": "ds-c", "path": "links/inside.img"})
	if code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, msg)
	}
	must(os.Remove(filepath.Join(ds, "links", "inside.img")))
	must(os.Symlink(key, filepath.Join(ds, "links", "inside.img")))
	if _, err := app.call("POST", "/v1/datastores/ds-c/resume", testToken, nil, nil); err != nil {
		t.Fatal(err)
	}
	j := app.waitJobs(s.ID)[0]
	if j.State != queue.Failed || !strings.Contains(j.Error, `"links/inside.img" resolves outside the datastore ds-c`) || j.Attempts != 1 {
		t.Errorf("swapped link: %s after %d attempts (%q), want failed at once, resolving outside", j.State, j.Attempts, j.Error)
	}
	noHostPath(t, "job error", j.Error, app.dir, ds)
	var view ScanView
	if code, _ := app.call("GET", "/v1/scans/"+itoa(s.ID), testToken, nil, &view); code != 200 || view.Error != j.Error {
		t.Errorf("API shows error %q (%d), want the job's", view.Error, code)
	}
}

// TestStrictRequests is issue 10.7's request half: a JSON name given
// twice, and a query parameter an endpoint does not take or given twice,
// are refused with 400 naming it — never ignored, which would widen the
// answer (/v1/findings?job=1 OR 1=1 listed every finding).
func TestStrictRequests(t *testing.T) {
	app := startApp(t, appOpts{})
	app.install(1)
	id := app.submit("vm03")["vm03"]
	app.waitJobs(id)
	for _, tc := range []struct {
		method, path, body string
		want               string
	}{
		{"POST", "/v1/scans", `{"vm": "a", "vm": "b", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2"}]}`, `vm: name given twice`},
		{"POST", "/v1/scans", `{"vm": "a", "VM": "b", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2"}]}`, `VM`},
		{"POST", "/v1/scans", `{"vm": "a", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2", "path": "vm03.qcow2"}]}`, `disks[0].path`},
		{"POST", "/v1/scans", `{"vm": "a", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2", "fromat": "raw"}]}`, `fromat`},
		{"GET", "/v1/findings?job=1%20OR%201=1", "", `"job"`},
		{"GET", "/v1/findings?vm=vm03&vm=vm06", "", `"vm" given 2 times`},
		{"GET", "/v1/scans?stat=running", "", `"stat"`},
		{"GET", "/v1/scans/" + itoa(id) + "?verbose=1", "", `"verbose"`},
		{"POST", "/v1/scans?priority=rescan", `{"vm": "a", "disks": [{"datastore": "ds-a", "path": "vm01.qcow2"}]}`, `"priority"`},
		{"GET", "/v1/datastores?name=ds-a", "", `"name"`},
		{"GET", "/healthz?deep=1", "", `"deep"`},
	} {
		req, err := http.NewRequest(tc.method, app.base+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := app.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || err != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s %s: %d %q, want 400 naming %s", tc.method, tc.path, tc.body, resp.StatusCode, e.Error, tc.want)
		}
	}
	// What the filters are for still works.
	var page struct{ Findings []results.Finding }
	if code, err := app.call("GET", "/v1/findings?vm=vm03&datastore=ds-a&tag=&limit=10", testToken, nil, &page); code != 200 || len(page.Findings) != 1 {
		t.Errorf("findings of vm03: %d %v, %d findings; want 200 and 1", code, err, len(page.Findings))
	}
	if code, _ := app.call("GET", "/v1/findings?vm=vm03&datastore=ds-b", testToken, nil, &page); code != 200 || len(page.Findings) != 0 {
		t.Errorf("findings of vm03 on ds-b: %d, %d findings; want none", code, len(page.Findings))
	}
}
