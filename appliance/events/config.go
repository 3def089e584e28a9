package events

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"time"
)

// Format is how a sink renders an event.
type Format string

// The formats. JSON is the appliance's own (Event as encoding/json writes
// it), CEF is ArcSight's Common Event Format (see CEF), OCSF the Open
// Cybersecurity Schema Framework (see OCSF).
const (
	FormatJSON Format = "json"
	FormatCEF  Format = "cef"
	FormatOCSF Format = "ocsf"
)

func (f Format) valid() bool { return f == FormatJSON || f == FormatCEF || f == FormatOCSF }

// Config is what a Dispatcher sends where.
type Config struct {
	// Appliance names this appliance in every event.
	Appliance string
	// Product is the vendor, product and version events carry.
	Product Product
	// Buffer is the default bound of each sink's queue (default 10000).
	Buffer int
	// Log, when set, receives one event per line in LogFormat (default
	// json). The caller opens and closes it.
	Log       io.Writer
	LogFormat Format
	// Webhook, when its URL is set, receives one POST per event.
	Webhook WebhookConfig
	// Syslog lists syslog destinations.
	Syslog []SyslogConfig
	// FlushTimeout is how long the sinks get, once Serve's context ends,
	// to send what they hold (default 5 s); what is left is dropped.
	FlushTimeout time.Duration
	// Logger receives delivery problems; nil discards.
	Logger *slog.Logger
}

// WebhookConfig is an HTTP endpoint that receives each event as a POST,
// with a bearer token when TokenFile names one (events.webhook in the
// appliance's configuration).
type WebhookConfig struct {
	URL       string        `yaml:"url"`
	TokenFile string        `yaml:"token_file"`
	Timeout   time.Duration `yaml:"timeout"` // per attempt, default 10 s
	Retries   int           `yaml:"retries"` // after the first attempt, default 3
	// RetryWait is the wait before the first retry, doubling after
	// each (default 1 s).
	RetryWait time.Duration `yaml:"retry_wait"`
	// Format of the body: json (default, Content-Type application/json),
	// ocsf (application/json) or cef (text/plain).
	Format Format `yaml:"format"`
	// Kinds limits the kinds sent (default: every kind).
	Kinds []Kind `yaml:"kinds"`
}

// SyslogConfig is one syslog destination (an entry of events.syslog in
// the appliance's configuration). Messages are RFC 5424; over TCP and TLS
// they are framed by octet counting (RFC 6587, RFC 5425), over UDP one
// message is one datagram (RFC 5426).
type SyslogConfig struct {
	// Name identifies the sink in metrics and the console (default
	// "NETWORK://ADDRESS").
	Name string `yaml:"name"`
	// Network is tcp (default), tls or udp.
	Network string `yaml:"network"`
	// Address is host:port of the collector (6514 is TLS syslog's port,
	// 514 the traditional one).
	Address string `yaml:"address"`
	// Format of the MSG part: cef (default), ocsf or json.
	Format Format `yaml:"format"`
	// Facility is a facility name (default local0; see Facilities).
	Facility string `yaml:"facility"`
	// AppName is the APP-NAME header field (default snapscan).
	AppName string `yaml:"app_name"`
	// CA is a PEM file of the CAs that sign the collector's certificate
	// (tls; default: the system's roots). Cert and Key, both or neither,
	// are a client certificate for collectors that want one.
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ServerName is the name the collector's certificate must carry
	// (default: the host of Address).
	ServerName string `yaml:"server_name"`
	// Timeout bounds connecting and each write (default 10 s).
	Timeout time.Duration `yaml:"timeout"`
	// MaxMessage: over UDP, longer messages are cut to this many bytes
	// (default 8192, rsyslog's default limit; RFC 5426 asks receivers for
	// at least 2048). Over TCP and TLS messages are never cut.
	MaxMessage int `yaml:"max_message"`
	// Buffer bounds this sink's queue (default: the events buffer).
	Buffer int `yaml:"buffer"`
	// Kinds limits the kinds sent (default: every kind).
	Kinds []Kind `yaml:"kinds"`
}

// Defaults.
const (
	DefaultBuffer       = 10000
	DefaultTimeout      = 10 * time.Second
	DefaultRetries      = 3
	DefaultMaxMessage   = 8192
	DefaultFlushTimeout = 5 * time.Second
)

func (c *SyslogConfig) network() string {
	if c.Network == "" {
		return "tcp"
	}
	return c.Network
}

func (c *SyslogConfig) format() Format {
	if c.Format == "" {
		return FormatCEF
	}
	return c.Format
}

// SinkName is the name a syslog sink goes by in metrics and the console.
func (c *SyslogConfig) SinkName() string {
	if c.Name != "" {
		return c.Name
	}
	return c.network() + "://" + c.Address
}

// ResolvePaths makes the relative file names in c relative to dir (the
// configuration file's folder).
func (c *SyslogConfig) ResolvePaths(dir string) {
	for _, p := range []*string{&c.CA, &c.Cert, &c.Key} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// Validate checks a syslog destination; errors name the key that is
// wrong, relative to the entry ("address: ...").
func (c *SyslogConfig) Validate() error {
	switch c.network() {
	case "tcp", "tls", "udp":
	default:
		return fmt.Errorf("network: %q: want tcp, tls or udp", c.Network)
	}
	if _, port, err := net.SplitHostPort(c.Address); err != nil || port == "" {
		return fmt.Errorf("address: %q is not host:port", c.Address)
	}
	if !c.format().valid() {
		return fmt.Errorf("format: %q: want cef, ocsf or json", c.Format)
	}
	if _, ok := Facilities[c.facilityName()]; !ok {
		return fmt.Errorf("facility: %q is not a syslog facility (local0-local7, auth, daemon, ...)", c.Facility)
	}
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("cert, key: set both or neither")
	}
	if c.network() != "tls" && (c.CA != "" || c.Cert != "" || c.ServerName != "") {
		return fmt.Errorf("ca, cert, key, server_name: only for network tls")
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout: must not be negative")
	}
	if c.MaxMessage != 0 && (c.MaxMessage < 480 || c.MaxMessage > 65507) {
		return fmt.Errorf("max_message: must be 480-65507 (a UDP datagram)")
	}
	if c.Buffer < 0 || c.Buffer > 1<<20 {
		return fmt.Errorf("buffer: must be 0-1048576")
	}
	return validKinds(c.Kinds)
}

func (c *SyslogConfig) facilityName() string {
	if c.Facility == "" {
		return "local0"
	}
	return c.Facility
}

// Validate checks a webhook; errors name the key that is wrong.
func (c *WebhookConfig) Validate() error {
	if c.URL == "" {
		return nil
	}
	pu, err := url.Parse(c.URL)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return fmt.Errorf("url: not an http(s) URL") // the URL may hold a secret: not repeated
	}
	if c.Format != "" && !c.Format.valid() {
		return fmt.Errorf("format: %q: want json, ocsf or cef", c.Format)
	}
	if c.Timeout < 0 || c.RetryWait < 0 {
		return fmt.Errorf("timeout, retry_wait: must not be negative")
	}
	if c.Retries < 0 || c.Retries > 20 {
		return fmt.Errorf("retries: must be 0-20")
	}
	return validKinds(c.Kinds)
}

func validKinds(ks []Kind) error {
	for i, k := range ks {
		ok := false
		for _, known := range Kinds {
			ok = ok || k == known
		}
		if !ok {
			return fmt.Errorf("kinds[%d]: %q is not an event kind (%v)", i, k, Kinds)
		}
	}
	return nil
}

func kindSet(ks []Kind) map[Kind]bool {
	if len(ks) == 0 {
		return nil
	}
	m := map[Kind]bool{}
	for _, k := range ks {
		m[k] = true
	}
	return m
}
