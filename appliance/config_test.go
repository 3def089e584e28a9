package appliance

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	ds := filepath.Join(dir, "ds")
	os.Mkdir(ds, 0o755)
	base := "auth: {tokens: [abcdefghijklmnop0123]}\nsignatures: {trusted_keys: [k.pub]}\ndatastores: [{name: a, path: ds, bytes_per_sec: 1.5MiB}]\n"
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"minimal", base, ""},
		{"unknown key", base + "server: {listn: x}\n", "server.listn: unknown key (line 4)"},
		{"unknown nested", strings.Replace(base, "bytes_per_sec", "byte_per_sec", 1), "datastores[0].byte_per_sec: unknown key"},
		{"bad size", strings.Replace(base, "1.5MiB", "fast", 1), "not a size"},
		{"no datastores", "auth: {tokens: [abcdefghijklmnop0123]}\nsignatures: {trusted_keys: [k.pub]}\n", "datastores: at least one"},
		{"no auth", "signatures: {trusted_keys: [k.pub]}\ndatastores: [{name: a, path: ds}]\n", "auth: no credentials"},
		{"short token", strings.Replace(base, "abcdefghijklmnop0123", "short", 1), "auth.tokens[0]: too short"},
		{"no keys", "auth: {tokens: [abcdefghijklmnop0123]}\ndatastores: [{name: a, path: ds}]\n", "signatures.trusted_keys: required"},
		{"missing folder", strings.Replace(base, "path: ds", "path: nope", 1), "datastores[0].path"},
		{"bad listen", base + "server: {listen: nowhere}\n", "server.listen"},
		{"bad level", base + "log: {level: loud}\n", "log.level"},
		{"bad glob", base + "scanner: {exclude: ['[']}\n", "scanner.exclude[0]"},
		{"receiver without server", strings.Replace(base, "trusted_keys: [k.pub]", "trusted_keys: [k.pub], receiver_url: 'http://x/'", 1), "signatures.receiver_url"},
		{"bad webhook", base + "events: {webhook: {url: 'ftp://x'}}\n", "events.webhook.url"},
		{"negative job timeout", base + "queue: {job_timeout: -1s}\n", "queue.job_timeout: must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o644)
			c, err := Load(p)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Server.Listen != DefaultListen || c.Database.Path != DefaultDatabase || c.Events.Log != "stdout" {
					t.Errorf("defaults not applied: %+v", c.Server)
				}
				if c.Datastores[0].Path != ds || c.Signatures.TrustedKeys[0] != filepath.Join(dir, "k.pub") {
					t.Errorf("relative paths not resolved against the file: %q %q", c.Datastores[0].Path, c.Signatures.TrustedKeys[0])
				}
				if c.Datastores[0].BytesPerSec != 1.5*(1<<20) {
					t.Errorf("bytes_per_sec = %d", c.Datastores[0].BytesPerSec)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrConfig naming %q", err, tc.wantErr)
			}
		})
	}
}

// The shipped example must load (its folders and files aside).
func TestExampleConfigParses(t *testing.T) {
	b, err := os.ReadFile("../deploy/appliance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Datastores) != 2 || c.Datastores[0].BytesPerSec != 200<<20 || c.Scanner.Archives.MaxTotalBytes != 128<<20 {
		t.Errorf("example parsed wrongly: %+v", c.Datastores)
	}
	if len(c.Events.Syslog) != 2 || c.Events.Webhook.Validate() != nil {
		t.Errorf("example: %d syslog sinks, webhook %v", len(c.Events.Syslog), c.Events.Webhook.Validate())
	}
	for i, s := range c.Events.Syslog {
		if err := s.Validate(); err != nil {
			t.Errorf("example: events.syslog[%d]: %v", i, err)
		}
	}
	if c.Queue.JobTimeout != DefaultJobTimeout || c.Database.HistoryRetention != DefaultHistoryRetention {
		t.Errorf("example: job_timeout %s, history_retention %s; want the documented defaults", c.Queue.JobTimeout, c.Database.HistoryRetention)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"4096": 4096, "64k": 64000, "64KiB": 65536, "1.5GB": 1.5e9, "2 MiB": 2 << 20} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("%q = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1XB", "1e99GiB", "MiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestDatabaseConfig: the database section, strictly: the driver, the
// appliance's name, the DSN file's mode and syntax; no error quotes the
// connection string or its password.
func TestDatabaseConfig(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "ds"), 0o755)
	const secret = "s3cret-Passw0rd"
	dsn := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o600)
		os.Chmod(p, mode)
		return p
	}
	good := dsn("good.dsn", "# the fleet's database\npostgres://snapscan:"+secret+"@db1:5432,db2:5432/snapscan?target_session_attrs=read-write\n", 0o600)
	kv := dsn("kv.dsn", "host=db1 user=snapscan password="+secret+" dbname=snapscan\n", 0o400)
	open := dsn("open.dsn", "postgres://snapscan:"+secret+"@db1/snapscan\n", 0o644)
	broken := dsn("broken.dsn", "postgres://snapscan:"+secret+"@db1:notaport/snapscan\n", 0o600)
	two := dsn("two.dsn", "postgres://a@db1/x\npostgres://b@db2/y\n", 0o600)
	base := "auth: {tokens: [abcdefghijklmnop0123]}\nsignatures: {trusted_keys: [k.pub]}\ndatastores: [{name: a, path: ds}]\n"
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"sqlite default", base, ""},
		{"postgres", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + good + "}\n", ""},
		{"postgres key=value", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + kv + "}\n", ""},
		{"unknown driver", base + "database: {driver: mysql}\n", "database.driver: \"mysql\""},
		{"postgres without name", base + "database: {driver: postgres, dsn_file: " + good + "}\n", "name: required with database.driver postgres"},
		{"bad name", base + "name: 'app 1'\ndatabase: {driver: postgres, dsn_file: " + good + "}\n", "name: \"app 1\" is not a valid"},
		{"postgres without dsn", base + "name: app-1\ndatabase: {driver: postgres}\n", "database.dsn_file: required"},
		{"postgres with path", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + good + ", path: x.db}\n", "database.path: only with driver sqlite"},
		{"sqlite with dsn", base + "database: {dsn_file: " + good + "}\n", "database.dsn_file: only with driver postgres"},
		{"missing dsn file", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: nope.dsn}\n", "database.dsn_file: stat"},
		{"readable by others", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + open + "}\n", "mode 0644"},
		{"does not parse", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + broken + "}\n", "database.dsn_file: " + broken + ": the connection string does not parse"},
		{"two strings", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + two + "}\n", "want one connection string, found 2"},
		{"max conns", base + "name: app-1\ndatabase: {driver: postgres, dsn_file: " + good + ", max_conns: -1}\n", "database.max_conns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o644)
			c, err := Load(p)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Name == "" || c.Signatures.ApplianceID != c.Name {
					t.Errorf("name %q, signatures.appliance_id %q: want a name, and the id defaulting to it", c.Name, c.Signatures.ApplianceID)
				}
				if c.Database.Driver == DriverSQLite && c.Database.Path != DefaultDatabase || c.Database.Driver == DriverPostgres && c.Database.Path != "" {
					t.Errorf("driver %s with path %q", c.Database.Driver, c.Database.Path)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrConfig naming %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error quotes the password: %v", err)
			}
		})
	}
}

// TestConnectorDatastoreConfig: a datastore is mounted here (path) or
// read through a vSphere connector (connector), never both, and only
// through a connector that is configured and speaks vSphere.
func TestConnectorDatastoreConfig(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "ds"), 0o755)
	os.WriteFile(filepath.Join(dir, "u"), []byte("user\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "p"), []byte("pass\n"), 0o600)
	base := "auth: {tokens: [abcdefghijklmnop0123]}\nsignatures: {trusted_keys: [k.pub]}\n" +
		"connectors:\n  - {name: vc, type: vsphere, url: 'https://vc.example/sdk', username_file: u, password_file: p, select: {all: true}}\n" +
		"  - {name: kvm, type: libvirt, select: {all: true}}\n"
	for _, tc := range []struct{ name, datastores, wantErr string }{
		{"over HTTP", "[{name: a, path: ds}, {name: nfs1, connector: vc}]", ""},
		{"both", "[{name: nfs1, path: ds, connector: vc}]", "datastores[0].path: not with connector"},
		{"unknown connector", "[{name: nfs1, connector: nope}]", `datastores[0].connector: "nope" is not a configured vsphere connector`},
		{"not vSphere", "[{name: nfs1, connector: kvm}]", `datastores[0].connector: "kvm" is not a configured vsphere connector`},
		{"neither", "[{name: nfs1}]", "datastores[0].path: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.yaml")
			os.WriteFile(p, []byte(base+"datastores: "+tc.datastores+"\n"), 0o644)
			_, err := Load(p)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrConfig naming %q", err, tc.wantErr)
			}
		})
	}
}
