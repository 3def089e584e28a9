package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/snapscan/snapscan/appliance/events"
	"github.com/snapscan/snapscan/internal/httpx"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
)

// ErrConfig is wrapped by every error Load and Config.Validate return.
var ErrConfig = errors.New("appliance: bad configuration")

// Config is the appliance's configuration file. Keys are snake_case; unknown
// keys are errors, so a misspelled setting never silently falls back to its
// default. deploy/appliance.yaml documents each one.
type Config struct {
	// Name is this appliance's name: in the fleet's shared database
	// (required with database.driver postgres, and unique in the fleet:
	// two processes under one name would end each other's leases), in
	// reports and events, and to the signature server
	// (signatures.appliance_id defaults to it). Default: the host name.
	Name       string            `yaml:"name"`
	Server     ServerConfig      `yaml:"server"`
	Auth       AuthConfig        `yaml:"auth"`
	Signatures SignaturesConfig  `yaml:"signatures"`
	Datastores []DatastoreConfig `yaml:"datastores"`
	Database   DatabaseConfig    `yaml:"database"`
	Queue      QueueConfig       `yaml:"queue"`
	Scanner    ScannerConfig     `yaml:"scanner"`
	Events     EventsConfig      `yaml:"events"`
	Log        LogConfig         `yaml:"log"`
	// Connectors are the hypervisors whose VMs are found, frozen and
	// scanned by the appliance itself (connectors.go).
	Connectors []ConnectorConfig `yaml:"connectors"`
}

// ServerConfig is the HTTP API's listener.
type ServerConfig struct {
	// Listen is host:port (default 127.0.0.1:8480: this machine only).
	Listen string `yaml:"listen"`
	// TLS, when Cert and Key are set, makes the API speak HTTPS.
	TLS TLSConfig `yaml:"tls"`
	// AllowPlainHTTP lets the API speak plain HTTP on a listener other
	// machines can reach (behind a TLS-terminating proxy, on a network
	// that is private by other means). Without it, plain HTTP is for
	// loopback only: tokens and findings would cross the network in clear.
	AllowPlainHTTP bool `yaml:"allow_plain_http"`
	// ReadTimeout bounds reading a request, headers and body (default 30 s);
	// WriteTimeout bounds writing the answer (default 60 s); IdleTimeout
	// keep-alive connections (default 120 s).
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	IdleTimeout  time.Duration `yaml:"idle_timeout"`
	// ShutdownGrace is how long running scans may go on after SIGTERM
	// before they are interrupted and put back in the queue (default 60 s).
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
}

// TLSConfig names PEM files.
type TLSConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ClientCA, when set, lets clients authenticate with a certificate
	// signed by one of these CAs (mutual TLS) instead of a token.
	ClientCA string `yaml:"client_ca"`
}

// AuthConfig lists the bearer tokens the API accepts. Tokens in files
// (one per line, # comments) keep secrets out of the config file.
type AuthConfig struct {
	Tokens     []string `yaml:"tokens"`
	TokenFiles []string `yaml:"token_files"`
}

// SignaturesConfig is how the appliance gets and trusts rule sets.
type SignaturesConfig struct {
	// StateDir keeps the active bundle across restarts
	// (default /var/lib/snapscan/signatures).
	StateDir string `yaml:"state_dir"`
	// TrustedKeys are public key files or folders of .pub files; required.
	TrustedKeys []string `yaml:"trusted_keys"`
	// Name, when set, is the only signature set accepted.
	Name string `yaml:"name"`
	// ServerURL is the central signature server; empty: push only.
	ServerURL       string        `yaml:"server_url"`
	ServerTokenFile string        `yaml:"server_token_file"`
	ServerCA        string        `yaml:"server_ca"`
	PullInterval    time.Duration `yaml:"pull_interval"`
	// ApplianceID names this appliance to the server (default: host name).
	ApplianceID string `yaml:"appliance_id"`
	// ReceiverURL is where the server can push to this appliance (this
	// API's /v1/signatures); with it the appliance registers itself.
	// Pushes must bear one of the API tokens or ReceiverTokenFile's.
	ReceiverURL       string `yaml:"receiver_url"`
	ReceiverTokenFile string `yaml:"receiver_token_file"`
	// RescanSpread spreads the rescans a new signature version causes
	// over this long (default 6 h); 0 in the file means the default,
	// "off" is not offered: a new set must reach every VM.
	RescanSpread time.Duration `yaml:"rescan_spread"`
}

// DatastoreConfig is one datastore: a folder of disk images and what it
// may be asked for. Submitted disk paths are relative to Path.
type DatastoreConfig struct {
	Name string `yaml:"name"`
	Path string `yaml:"path"`
	// Connector, instead of Path, says the datastore is not mounted here
	// and is read through that connector's hypervisor: vSphere's datastore
	// HTTP /folder interface, with range reads. Name is then the
	// hypervisor's name of the datastore. Only a connector's frozen disks
	// are read from it (a submit by path is refused); the budget applies
	// to every read, the chain's parents and extents included.
	Connector string `yaml:"connector"`
	// MaxScans is how many jobs may read it at once (default 1).
	MaxScans int `yaml:"max_scans"`
	// BytesPerSec and OpsPerSec cap reads (0: unlimited). Sizes accept
	// suffixes: 100MiB, 1.5GB, 64k.
	BytesPerSec ByteSize `yaml:"bytes_per_sec"`
	OpsPerSec   float64  `yaml:"ops_per_sec"`
	// AllowUnnamedLayers lets a disk submitted without a format, whose
	// probed image names backing files or extents the submitter did not
	// list, open them (within the datastore). Off by default: a guest that
	// owns a raw disk can write an image header into it naming another
	// disk of the datastore, to have that one scanned instead of its own.
	AllowUnnamedLayers bool `yaml:"allow_unnamed_layers"`
}

// DatabaseConfig is the database that holds the queue, the results, the
// verdict cache, the inventory and the I/O history: an embedded SQLite
// file for one appliance (driver sqlite, the default), or a PostgreSQL
// server shared by a fleet of appliances (driver postgres).
type DatabaseConfig struct {
	// Driver is sqlite (default) or postgres.
	Driver string `yaml:"driver"`
	// Path is the SQLite file (driver sqlite; default
	// /var/lib/snapscan/snapscan.db).
	Path string `yaml:"path"`
	// DSNFile (driver postgres, required) names a file holding the
	// connection string, a URL or key=value pairs, password included: a
	// file no one but the service's user may read (mode 0600 or 0400). A
	// string naming several hosts with target_session_attrs=read-write
	// follows a failover to a promoted standby.
	DSNFile string `yaml:"dsn_file"`
	// MaxConns bounds the appliance's connections to PostgreSQL
	// (default 10).
	MaxConns int `yaml:"max_conns"`
	// HistoryRetention is how long the per-minute record of each
	// datastore's reads is kept (default 720h: 30 days).
	HistoryRetention time.Duration `yaml:"history_retention"`
}

// QueueConfig tunes the queue (zero: its defaults).
type QueueConfig struct {
	// JobTimeout bounds one run of a job, wall clock (default 24h): a scan
	// still running then is stopped, what it found is stored as
	// incomplete, and the job fails with the reason, freeing its slot.
	JobTimeout  time.Duration `yaml:"job_timeout"`
	MaxScans    int           `yaml:"max_scans"`
	MaxAttempts int           `yaml:"max_attempts"`
	AgingStep   time.Duration `yaml:"aging_step"`
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
}

// ScannerConfig tunes scanning (zero: the scanner's defaults).
type ScannerConfig struct {
	Workers     int      `yaml:"workers"`
	MaxFileSize ByteSize `yaml:"max_file_size"`
	// MemoryBudget bounds the scan memory of the whole process: one
	// budget shared by every scan, on every rule set (scans still running
	// on the previous signature version included).
	MemoryBudget ByteSize `yaml:"memory_budget"`
	// SpoolDir and SpoolBudget: files larger than the memory window are
	// copied to private, unlinked files in SpoolDir (default the system's
	// temp folder; on a disk, not a tmpfs) and scanned whole, within
	// SpoolBudget for all scans together (default 16GiB).
	SpoolDir    string        `yaml:"spool_dir"`
	SpoolBudget ByteSize      `yaml:"spool_budget"`
	Timeout     time.Duration `yaml:"timeout"`
	Exclude     []string      `yaml:"exclude"`
	NoArchives  bool          `yaml:"no_archives"`
	Archives    struct {
		MaxDepth      int      `yaml:"max_depth"`
		MaxMembers    int      `yaml:"max_members"`
		MaxTotalBytes ByteSize `yaml:"max_total_bytes"`
		MaxRatio      int64    `yaml:"max_ratio"`
	} `yaml:"archives"`
	// CacheEntries bounds the verdicts kept in memory in front of the
	// database (default 100000).
	CacheEntries int `yaml:"cache_entries"`
	// NoCache scans every file with YARA and keeps no verdicts: for
	// measuring cold scans; a site wants the cache.
	NoCache bool `yaml:"no_cache"`
	// NoPrefilter runs every rule over every file; by default a file is
	// scanned only by the rules its size and header leave able to match
	// (scanner.Options.NoPrefilter): the same verdicts in less time.
	NoPrefilter bool `yaml:"no_prefilter"`
	// Incremental (default true) makes a disk whose backing chain holds
	// an image this appliance scanned before (a golden image under linked
	// clones, the previous snapshot of a VM) read only what its own layers
	// changed: files the upper layers leave untouched get the base's
	// verdicts without being read (scanner/incremental). false reads
	// every disk in full.
	Incremental *bool `yaml:"incremental"`
	// RecordsDir, when set, keeps what each scan saw (the records of
	// incremental scans) in that folder, for this appliance alone. By
	// default (unset) the records are kept in the results database: on
	// SQLite beside the appliance's results, on PostgreSQL shared by the
	// fleet, so that a golden image one appliance scanned spares every
	// appliance's clones, and the records outlive an appliance's disk.
	// RecordsMax bounds the records kept per rule set (default 1000; the
	// oldest written go first); in the database only the records of the
	// results.MaxRecordRuleSets rule sets written to last are kept.
	RecordsDir string `yaml:"records_dir"`
	RecordsMax int    `yaml:"records_max"`
}

// incremental reports whether incremental scans are on.
func (c *ScannerConfig) incremental() bool { return c.Incremental == nil || *c.Incremental }

// EventsConfig says where events (findings, failed and incomplete scans,
// unreadable VMs, signature updates) go besides the database: package
// events delivers them.
type EventsConfig struct {
	// Log is "stdout" (default), "none", or a file path events are
	// appended to, one per line, in LogFormat: json (default), ocsf or cef.
	Log       string        `yaml:"log"`
	LogFormat events.Format `yaml:"log_format"`
	Webhook   WebhookConfig `yaml:"webhook"`
	// Syslog lists SIEM collectors: RFC 5424 over tcp, tls or udp,
	// carrying cef (default), ocsf or json.
	Syslog []events.SyslogConfig `yaml:"syslog"`
	// Buffer bounds the events waiting for each sink (default 10000);
	// beyond it events are dropped and counted, never blocking a scan.
	Buffer int `yaml:"buffer"`
}

// WebhookConfig is an optional HTTP endpoint that receives each event as
// a POST (events.WebhookConfig).
type WebhookConfig = events.WebhookConfig

// LogConfig is the service log.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or text
}

// ByteSize is a size in bytes, written in the file as a number or with a
// unit (k, KiB, M, MiB, G, GiB; k and K mean 1000, KiB 1024).
type ByteSize int64

var sizeRE = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$`)

var sizeUnits = map[string]float64{
	"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40,
}

// ParseByteSize parses "100MiB", "1.5G", "4096".
func ParseByteSize(s string) (ByteSize, error) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (want a number with an optional unit: 64MiB, 1.5GB)", s)
	}
	mult, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q", s, m[2])
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil || f*mult > 1<<62 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return ByteSize(f * mult), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size", n.Line)
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*b = v
	return nil
}

// Defaults: one machine, embedded database, nothing else.
const (
	DefaultListen        = "127.0.0.1:8480"
	DefaultDatabase      = "/var/lib/snapscan/snapscan.db"
	DefaultStateDir      = "/var/lib/snapscan/signatures"
	DefaultShutdownGrace = 60 * time.Second
	DefaultRescanSpread  = 6 * time.Hour
	// DefaultJobTimeout is generous: a 2 TB disk at 100 MiB/s reads in
	// under 6 hours. It is there so that no unknown trick holds a scan
	// slot forever, not to hurry scans.
	DefaultJobTimeout       = 24 * time.Hour
	DefaultHistoryRetention = 30 * 24 * time.Hour
	// DefaultMaxConns bounds the PostgreSQL pool: the queue's scheduler
	// and sync, result saves, verdict lookups and API reads.
	DefaultMaxConns = 10
)

// The database drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Load reads and checks a configuration file. Errors name the key path
// ("datastores[1].bytes_per_sec") and wrap ErrConfig.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Relative paths in the file are relative to the file, not to
	// wherever the service happened to start.
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c.resolvePaths(dir)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration strictly and fills in defaults; it does
// not validate (Load does both).
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) { // an empty file: all defaults
			c := &Config{}
			c.setDefaults()
			return c, nil
		}
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if err := checkKeys(&root, reflect.TypeOf(Config{}), ""); err != nil {
		return nil, err
	}
	c := &Config{}
	if err := root.Decode(c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c.setDefaults()
	return c, nil
}

// checkKeys walks the document against the struct's yaml tags, so an
// unknown key is reported with its full path and line.
func checkKeys(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if err := checkKeys(c, t, path); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		if t.Kind() != reflect.Struct {
			return nil // a map type, or a custom unmarshaler: decode checks it
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			f, ok := fieldByTag(t, k)
			p := joinKey(path, k)
			if !ok {
				return fmt.Errorf("%w: %s: unknown key (line %d)", ErrConfig, p, n.Content[i].Line)
			}
			if err := checkKeys(n.Content[i+1], f.Type, p); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice {
			return fmt.Errorf("%w: %s: a list is not allowed here (line %d)", ErrConfig, path, n.Line)
		}
		for i, c := range n.Content {
			if err := checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if tag == ",inline" && f.Type.Kind() == reflect.Struct {
			if g, ok := fieldByTag(f.Type, key); ok {
				return g, true
			}
			continue
		}
		if strings.Split(tag, ",")[0] == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinKey(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func (c *Config) setDefaults() {
	for i := range c.Connectors {
		c.Connectors[i].setDefaults()
	}
	if c.Server.Listen == "" {
		c.Server.Listen = DefaultListen
	}
	if c.Server.ReadTimeout == 0 {
		c.Server.ReadTimeout = 30 * time.Second
	}
	if c.Server.WriteTimeout == 0 {
		c.Server.WriteTimeout = 60 * time.Second
	}
	if c.Server.IdleTimeout == 0 {
		c.Server.IdleTimeout = 120 * time.Second
	}
	if c.Server.ShutdownGrace == 0 {
		c.Server.ShutdownGrace = DefaultShutdownGrace
	}
	if c.Database.Driver == "" {
		c.Database.Driver = DriverSQLite
	}
	if c.Database.Path == "" && c.Database.Driver == DriverSQLite {
		c.Database.Path = DefaultDatabase
	}
	if c.Database.MaxConns == 0 {
		c.Database.MaxConns = DefaultMaxConns
	}
	if c.Name == "" && c.Database.Driver == DriverSQLite {
		// One appliance on its own database: the host name will do.
		if c.Name, _ = os.Hostname(); !nameRE.MatchString(c.Name) {
			c.Name = "local"
		}
	}
	if c.Database.HistoryRetention == 0 {
		c.Database.HistoryRetention = DefaultHistoryRetention
	}
	if c.Queue.JobTimeout == 0 {
		c.Queue.JobTimeout = DefaultJobTimeout
	}
	if c.Signatures.StateDir == "" {
		c.Signatures.StateDir = DefaultStateDir
	}
	if c.Signatures.RescanSpread == 0 {
		c.Signatures.RescanSpread = DefaultRescanSpread
	}
	if c.Signatures.ApplianceID == "" {
		c.Signatures.ApplianceID = c.Name
	}
	if c.Events.Log == "" {
		c.Events.Log = "stdout"
	}
	if c.Events.Buffer == 0 {
		c.Events.Buffer = 10000
	}
	if c.Events.Webhook.Timeout == 0 {
		c.Events.Webhook.Timeout = 10 * time.Second
	}
	if c.Events.Webhook.Retries == 0 {
		c.Events.Webhook.Retries = 3
	}
	if c.Scanner.CacheEntries == 0 {
		c.Scanner.CacheEntries = 100000
	}
	if c.Scanner.RecordsMax == 0 {
		c.Scanner.RecordsMax = 1000
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Server.TLS.Cert)
	abs(&c.Server.TLS.Key)
	abs(&c.Server.TLS.ClientCA)
	for i := range c.Auth.TokenFiles {
		abs(&c.Auth.TokenFiles[i])
	}
	abs(&c.Signatures.StateDir)
	for i := range c.Signatures.TrustedKeys {
		abs(&c.Signatures.TrustedKeys[i])
	}
	abs(&c.Signatures.ServerTokenFile)
	abs(&c.Signatures.ServerCA)
	abs(&c.Signatures.ReceiverTokenFile)
	for i := range c.Datastores {
		abs(&c.Datastores[i].Path)
	}
	abs(&c.Database.Path)
	abs(&c.Database.DSNFile)
	abs(&c.Scanner.SpoolDir)
	abs(&c.Scanner.RecordsDir)
	if c.Events.Log != "stdout" && c.Events.Log != "none" {
		abs(&c.Events.Log)
	}
	abs(&c.Events.Webhook.TokenFile)
	for i := range c.Events.Syslog {
		c.Events.Syslog[i].ResolvePaths(dir)
	}
}

// errPlainHTTP is why a plain-HTTP listener other machines can reach is
// refused.
var errPlainHTTP = errors.New("plain HTTP outside loopback: set server.tls.cert and server.tls.key, or server.allow_plain_http: true behind a TLS proxy")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate checks every setting and names the first wrong one by its
// key path.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Server.Listen); err != nil {
		return bad("server.listen", "%v (want host:port)", err)
	}
	if err := validateConnectors(c.Connectors); err != nil {
		return err
	}
	if (c.Server.TLS.Cert == "") != (c.Server.TLS.Key == "") {
		return bad("server.tls", "set both cert and key, or neither")
	}
	if c.Server.TLS.Cert == "" && !c.Server.AllowPlainHTTP {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		local, err := httpx.LoopbackAddr(ctx, c.Server.Listen)
		cancel()
		if err != nil || !local {
			return bad("server.listen", "%q is reachable from other machines (or its name does not resolve): %v", c.Server.Listen, errPlainHTTP)
		}
	}
	if c.Server.TLS.ClientCA != "" && c.Server.TLS.Cert == "" {
		return bad("server.tls.client_ca", "mutual TLS needs server.tls.cert and server.tls.key")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"server.read_timeout", c.Server.ReadTimeout}, {"server.write_timeout", c.Server.WriteTimeout},
		{"server.idle_timeout", c.Server.IdleTimeout}, {"server.shutdown_grace", c.Server.ShutdownGrace},
		{"signatures.rescan_spread", c.Signatures.RescanSpread}, {"signatures.pull_interval", c.Signatures.PullInterval},
		{"queue.aging_step", c.Queue.AgingStep}, {"queue.backoff_base", c.Queue.BackoffBase},
		{"queue.backoff_max", c.Queue.BackoffMax}, {"scanner.timeout", c.Scanner.Timeout},
		{"events.webhook.timeout", c.Events.Webhook.Timeout},
		{"queue.job_timeout", c.Queue.JobTimeout}, {"database.history_retention", c.Database.HistoryRetention},
	} {
		if d.v < 0 {
			return bad(d.key, "must not be negative")
		}
	}
	if len(c.Auth.Tokens) == 0 && len(c.Auth.TokenFiles) == 0 && c.Server.TLS.ClientCA == "" {
		return bad("auth", "no credentials: set auth.tokens, auth.token_files or server.tls.client_ca (every endpoint but health requires authentication)")
	}
	for i, t := range c.Auth.Tokens {
		if len(t) < 16 {
			return bad(fmt.Sprintf("auth.tokens[%d]", i), "too short (at least 16 characters)")
		}
	}
	if len(c.Signatures.TrustedKeys) == 0 {
		return bad("signatures.trusted_keys", "required: the public keys whose signature bundles this appliance installs")
	}
	if c.Signatures.Name != "" && !nameRE.MatchString(c.Signatures.Name) {
		return bad("signatures.name", "%q is not a valid set name", c.Signatures.Name)
	}
	for _, u := range []struct{ key, v string }{
		{"signatures.server_url", c.Signatures.ServerURL},
		{"signatures.receiver_url", c.Signatures.ReceiverURL},
		{"events.webhook.url", c.Events.Webhook.URL},
	} {
		if u.v == "" {
			continue
		}
		pu, err := url.Parse(u.v)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return bad(u.key, "%q is not an http(s) URL", u.v)
		}
	}
	if c.Signatures.ServerURL != "" && c.Signatures.ServerTokenFile == "" {
		return bad("signatures.server_token_file", "required with signatures.server_url")
	}
	if c.Signatures.ReceiverURL != "" && c.Signatures.ServerURL == "" {
		return bad("signatures.receiver_url", "needs signatures.server_url to register with")
	}
	if err := c.validateDatabase(); err != nil {
		return err
	}
	if len(c.Datastores) == 0 {
		return bad("datastores", "at least one datastore is required")
	}
	seen := map[string]bool{}
	for i, d := range c.Datastores {
		key := fmt.Sprintf("datastores[%d]", i)
		if !nameRE.MatchString(d.Name) {
			return bad(key+".name", "%q is not a valid name (1-64 of A-Z a-z 0-9 . _ -)", d.Name)
		}
		if seen[d.Name] {
			return bad(key+".name", "%q is listed twice", d.Name)
		}
		seen[d.Name] = true
		if d.Connector != "" {
			if d.Path != "" {
				return bad(key+".path", "not with connector: a datastore is mounted here (path) or read through its connector, not both")
			}
			if !slices.ContainsFunc(c.Connectors, func(cc ConnectorConfig) bool { return cc.Name == d.Connector && cc.Type == "vsphere" }) {
				return bad(key+".connector", "%q is not a configured vsphere connector (only vSphere datastores are read over the hypervisor's interface)", d.Connector)
			}
		} else if d.Path == "" {
			return bad(key+".path", "required: the folder holding this datastore's disk images (or connector, for a vSphere datastore read over HTTP)")
		} else if st, err := os.Stat(d.Path); err != nil || !st.IsDir() {
			return bad(key+".path", "%q is not a readable folder", d.Path)
		}
		if d.MaxScans < 0 || d.MaxScans > 1024 {
			return bad(key+".max_scans", "must be 0-1024")
		}
		if d.BytesPerSec < 0 {
			return bad(key+".bytes_per_sec", "must not be negative")
		}
		if d.OpsPerSec < 0 {
			return bad(key+".ops_per_sec", "must not be negative")
		}
	}
	if c.Queue.MaxScans < 0 || c.Queue.MaxAttempts < 0 {
		return bad("queue", "max_scans and max_attempts must not be negative")
	}
	if c.Scanner.Workers < 0 || c.Scanner.MaxFileSize < 0 || c.Scanner.MemoryBudget < 0 || c.Scanner.SpoolBudget < 0 || c.Scanner.CacheEntries < 0 {
		return bad("scanner", "workers, max_file_size, memory_budget, spool_budget and cache_entries must not be negative")
	}
	for i, g := range c.Scanner.Exclude {
		if _, err := scanner.CompileGlob(g); err != nil {
			return bad(fmt.Sprintf("scanner.exclude[%d]", i), "%v", err)
		}
	}
	if c.Events.Buffer < 0 || c.Events.Buffer > 1<<20 {
		return bad("events.buffer", "must be 1-1048576")
	}
	if c.Events.Webhook.Retries < 0 || c.Events.Webhook.Retries > 20 {
		return bad("events.webhook.retries", "must be 0-20")
	}
	if err := c.Events.Webhook.Validate(); err != nil {
		return bad("events.webhook", "%v", err)
	}
	switch c.Events.LogFormat {
	case "", events.FormatJSON, events.FormatOCSF, events.FormatCEF:
	default:
		return bad("events.log_format", "%q: want json, ocsf or cef", c.Events.LogFormat)
	}
	for i := range c.Events.Syslog {
		if err := c.Events.Syslog[i].Validate(); err != nil {
			return bad(fmt.Sprintf("events.syslog[%d]", i), "%v", err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		return bad("log.format", "%q: want json or text", c.Log.Format)
	}
	return nil
}

// datastore returns the configured datastore called name.
func (c *Config) datastore(name string) (*DatastoreConfig, bool) {
	for i := range c.Datastores {
		if c.Datastores[i].Name == name {
			return &c.Datastores[i], true
		}
	}
	return nil, false
}

// budget is the queue's view of a datastore's settings.
func (d *DatastoreConfig) budget() queue.Budget {
	return queue.Budget{MaxScans: d.MaxScans, BytesPerSec: float64(d.BytesPerSec), OpsPerSec: d.OpsPerSec}
}

// budgetOptions sizes the process's one scan budget.
func (c *Config) budgetOptions() scanner.BudgetOptions {
	return scanner.BudgetOptions{Memory: int64(c.Scanner.MemoryBudget), SpoolDir: c.Scanner.SpoolDir, Spool: int64(c.Scanner.SpoolBudget)}
}

// scannerOptions turns the scanner section into scanner.Options, but for
// the budget (budgetOptions), which the appliance makes once.
func (c *Config) scannerOptions() scanner.Options {
	o := scanner.Options{
		Workers:     c.Scanner.Workers,
		MaxFileSize: int64(c.Scanner.MaxFileSize),
		Timeout:     c.Scanner.Timeout,
		NoArchives:  c.Scanner.NoArchives,
		NoPrefilter: c.Scanner.NoPrefilter,
		Archives: scanner.ArchiveLimits{
			MaxDepth:      c.Scanner.Archives.MaxDepth,
			MaxMembers:    c.Scanner.Archives.MaxMembers,
			MaxTotalBytes: int64(c.Scanner.Archives.MaxTotalBytes),
			MaxRatio:      c.Scanner.Archives.MaxRatio,
		},
	}
	for _, g := range c.Scanner.Exclude {
		cg, _ := scanner.CompileGlob(g) // checked by Validate
		o.Exclude = append(o.Exclude, cg)
	}
	return o
}
