package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"
)

func init() {
	register(command{name: "submit", summary: "ask a running appliance to scan a VM's disks", run: runSubmit})
	register(command{name: "status", summary: "show a scan of a running appliance (or list scans)", run: runStatus})
	register(command{name: "scans", summary: "list the scans of a running appliance", run: runScans})
	register(command{name: "cancel", summary: "cancel queued or running scans of an appliance", run: runCancel})
	register(command{name: "findings", summary: "list findings of a running appliance", run: runFindings})
	register(command{name: "datastores", summary: "list an appliance's datastores: budgets, load, paused", run: runDatastores})
	register(command{name: "pause", summary: "pause scanning on datastores of an appliance", run: runPause(true)})
	register(command{name: "resume", summary: "resume scanning on paused datastores", run: runPause(false)})
	register(command{name: "signatures", summary: "show an appliance's signature set and its central server", run: runSignatures})
}

// clientHelp ends the help of every command that talks to an appliance.
const clientHelp = `
The appliance and its token are found, first to last: the flags, the environment
(SNAPSCAN_URL, SNAPSCAN_TOKEN_FILE, SNAPSCAN_CA; SNAPSCAN_TOKEN holds a token
itself), then the client configuration file (--client-config, or
$SNAPSCAN_CLIENT_CONFIG, or ~/.config/snapscan/client.yaml when it exists):
  url: https://scanner1.example.net:8480
  token_file: ~/.config/snapscan/token
  ca: /etc/snapscan/tls/ca.pem
The default URL is http://127.0.0.1:8480. --json prints the API's JSON
(appliance/openapi.yaml) unchanged.
`

// client talks to an appliance's API.
type client struct {
	base  string
	token string
	hc    *http.Client
}

// clientConfig is the client configuration file: where the appliance is,
// where its token is kept (never the token itself), which CAs to trust.
type clientConfig struct {
	URL       string `yaml:"url"`
	TokenFile string `yaml:"token_file"`
	CA        string `yaml:"ca"`
}

func loadClientConfig(path string, explicit bool) (clientConfig, error) {
	var c clientConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	home, _ := os.UserHomeDir()
	for _, p := range []*string{&c.TokenFile, &c.CA} {
		if strings.HasPrefix(*p, "~/") && home != "" {
			*p = filepath.Join(home, (*p)[2:])
		} else if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	return c, nil
}

func defaultClientConfig() string {
	d, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "snapscan", "client.yaml")
}

// clientFlags adds --url, --token-file, --token, --ca and --client-config
// to f; the function it returns, called after parsing, resolves them
// (flags, then environment, then the configuration file) into a client.
func clientFlags(f *flag.FlagSet) func() (*client, error) {
	u := f.String("url", "", "appliance `URL` (env SNAPSCAN_URL; default http://127.0.0.1:8480)")
	tokFile := f.String("token-file", "", "`FILE` holding the API token (env SNAPSCAN_TOKEN_FILE)")
	tok := f.String("token", "", "API bearer `TOKEN` (env SNAPSCAN_TOKEN; prefer --token-file: a flag shows in ps)")
	ca := f.String("ca", "", "PEM `FILE` of CAs to trust for the appliance's HTTPS (env SNAPSCAN_CA)")
	cfgPath := f.String("client-config", "", "client configuration `FILE` (env SNAPSCAN_CLIENT_CONFIG; default\n~/.config/snapscan/client.yaml)")
	return func() (*client, error) {
		path, explicit := *cfgPath, true
		if path == "" {
			path = os.Getenv("SNAPSCAN_CLIENT_CONFIG")
		}
		if path == "" {
			path, explicit = defaultClientConfig(), false
		}
		var cfg clientConfig
		if path != "" {
			var err error
			if cfg, err = loadClientConfig(path, explicit); err != nil {
				return nil, usageError("client configuration: %v", err)
			}
		}
		first := func(vals ...string) string {
			for _, v := range vals {
				if v != "" {
					return v
				}
			}
			return ""
		}
		base := first(*u, os.Getenv("SNAPSCAN_URL"), cfg.URL, "http://127.0.0.1:8480")
		if pu, err := url.Parse(base); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, usageError("appliance URL %q: want http(s)://HOST:PORT", base)
		}
		c := &client{base: strings.TrimRight(base, "/"), token: *tok}
		tf := first(*tokFile, os.Getenv("SNAPSCAN_TOKEN_FILE"))
		if c.token == "" && tf == "" {
			c.token = os.Getenv("SNAPSCAN_TOKEN")
		}
		if c.token == "" && tf == "" {
			tf = cfg.TokenFile
		}
		if c.token == "" && tf != "" {
			b, err := os.ReadFile(tf)
			if err != nil {
				return nil, usageError("token file: %v", err)
			}
			c.token = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
			if c.token == "" {
				return nil, usageError("token file %s is empty", tf)
			}
		}
		if c.token == "" {
			return nil, usageError("no token: pass --token-file, set SNAPSCAN_TOKEN_FILE, or name token_file in %s", dash(path))
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if caFile := first(*ca, os.Getenv("SNAPSCAN_CA"), cfg.CA); caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, usageError("--ca: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, usageError("--ca: %s: no PEM certificates", caFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		c.hc = &http.Client{Transport: tr, Timeout: time.Minute}
		return c, nil
	}
}

// do sends a request and decodes a 2xx JSON answer into out; other
// answers become errors carrying the server's reason.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s (%s)", method, path, e.Error, resp.Status)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return json.Unmarshal(data, out)
}

// scanView is the part of the API's scan object the client prints.
type scanView struct {
	ID       int64  `json:"id"`
	VM       string `json:"vm"`
	State    string `json:"state"`
	Priority string `json:"priority"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
	Progress *struct {
		Files      int64 `json:"files"`
		Bytes      int64 `json:"bytes"`
		TotalFiles int64 `json:"total_files"`
		TotalBytes int64 `json:"total_bytes"`
	} `json:"progress"`
	Result *struct {
		Status     string           `json:"status"`
		Incomplete map[string]int64 `json:"incomplete"`
		SigVersion uint64           `json:"sig_version"`
		Files      int64            `json:"files"`
		Bytes      int64            `json:"bytes"`
		Cached     int64            `json:"cached"`
		Findings   int64            `json:"findings"`
		BytesRead  int64            `json:"bytes_read"`
	} `json:"result"`
	Findings []findingView `json:"findings"`
}

type findingView struct {
	ID     int64  `json:"id"`
	Scan   int64  `json:"job_id"`
	VM     string `json:"vm"`
	Disk   string `json:"disk"`
	Volume string `json:"volume"`
	Path   string `json:"path"`
	Rule   string `json:"rule"`
	SHA256 string `json:"sha256"`
	Found  string `json:"found_at"`
}

func printJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// submitDisk is one disk of a submit, as the API takes it.
type submitDisk struct {
	Datastore string   `json:"datastore"`
	Path      string   `json:"path"`
	Format    string   `json:"format,omitempty"`
	Layers    []string `json:"layers,omitempty"`
}

// submitDisks are --disk, and --format and --layer, which describe the
// --disk before them.
type submitDisks struct{ disks []submitDisk }

func (d *submitDisks) last(flag string) (*submitDisk, error) {
	if len(d.disks) == 0 {
		return nil, fmt.Errorf("--%s describes the --disk before it: give --disk first", flag)
	}
	return &d.disks[len(d.disks)-1], nil
}

func (d *submitDisks) register(f *flag.FlagSet) {
	f.Func("disk", "`DATASTORE:PATH` of a disk image (repeatable)", func(v string) error {
		ds, p, ok := strings.Cut(v, ":")
		if !ok || ds == "" || p == "" {
			return fmt.Errorf("want DATASTORE:PATH")
		}
		d.disks = append(d.disks, submitDisk{Datastore: ds, Path: p})
		return nil
	})
	setFormat := func(v string) error {
		last, err := d.last("disk-format")
		if err == nil {
			last.Format = v
		}
		return err
	}
	f.Func("disk-format", "image `FORMAT` of the --disk before it, as the hypervisor knows it (raw, qcow2,\n"+
		"vmdk, vhd, vhdx); without it the format is probed and no unlisted backing file is opened", setFormat)
	f.Func("format", "the same as --disk-format (`FORMAT`; kept for scripts written before it)", setFormat)
	f.Func("layer", "`PATH` on the same datastore of a file in the chain (extent, backing file) of\n"+
		"the --disk before it (repeatable, in chain order)", func(v string) error {
		last, err := d.last("layer")
		if err == nil {
			last.Layers = append(last.Layers, v)
		}
		return err
	})
}

func runSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("submit", "submit --vm NAME --disk DATASTORE:PATH [--disk-format F] [--layer PATH...] [--disk ...] [--priority P] [--wait] [--json]",
		"Submits a scan of a VM's disks (paths relative to their datastore's folder) and prints\n"+
			"the scan id. With --wait, waits for the end and exits as scan does: 0 clean,\n"+
			"1 findings, 2 failed or cancelled, 3 incomplete.\n"+clientHelp+`
Examples:
  snapscan submit --vm web1 --disk san1:web1/disk0.qcow2 --wait
  snapscan submit --vm db2 --disk nfs:db2/db2.vmdk --disk-format vmdk --layer db2/db2-flat.vmdk --priority scheduled
`, stderr)
	newClient := clientFlags(f)
	vm := f.String("vm", "", "VM `NAME`; alone, without --disk, a VM a connector lists: its disks come from the hypervisor")
	var disks submitDisks
	disks.register(f)
	prio := f.String("priority", "on_demand", "`CLASS`: on_demand, scheduled or rescan")
	reason := f.String("reason", "", "free-text `REASON` kept with the scan")
	wait := f.Bool("wait", false, "wait until the scan ends")
	asJSON := f.Bool("json", false, "print the API's JSON")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *vm == "" || len(pos) != 0 {
		return usageError("want --vm, and --disk DATASTORE:PATH unless a connector lists the VM")
	}
	body := struct {
		VM       string       `json:"vm"`
		Disks    []submitDisk `json:"disks,omitempty"`
		Priority string       `json:"priority"`
		Reason   string       `json:"reason,omitempty"`
	}{VM: *vm, Disks: disks.disks, Priority: *prio, Reason: *reason}
	c, err := newClient()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodPost, "/v1/scans", body, &raw); err != nil {
		return err
	}
	var sv scanView
	if err := json.Unmarshal(raw, &sv); err != nil {
		return err
	}
	if !*wait {
		if *asJSON {
			return printJSON(stdout, raw)
		}
		fmt.Fprintf(stdout, "scan %d %s (vm %s)\n", sv.ID, sv.State, sv.VM)
		return nil
	}
	if !*asJSON {
		fmt.Fprintf(stderr, "scan %d %s, waiting\n", sv.ID, sv.State)
	}
	return waitScan(ctx, c, sv.ID, *asJSON, stdout)
}

func waitScan(ctx context.Context, c *client, id int64, asJSON bool, stdout io.Writer) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var raw json.RawMessage
		if err := c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/scans/%d", id), nil, &raw); err != nil {
			return err
		}
		var sv scanView
		if err := json.Unmarshal(raw, &sv); err != nil {
			return err
		}
		switch sv.State {
		case "done", "failed", "cancelled":
			return showScan(stdout, raw, sv, asJSON)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// showScan prints a scan and returns the exit status it calls for.
func showScan(w io.Writer, raw json.RawMessage, sv scanView, asJSON bool) error {
	if asJSON {
		if err := printJSON(w, raw); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "scan %d  vm %s  %s  priority %s  attempts %d\n", sv.ID, sv.VM, sv.State, sv.Priority, sv.Attempts)
		if sv.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", sv.Error)
		}
		if p := sv.Progress; p != nil {
			fmt.Fprintf(w, "  progress: %d/%d files, %d/%d bytes\n", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
		}
		if r := sv.Result; r != nil {
			fmt.Fprintf(w, "  %s: signatures v%d: %d files (%d cached), %d bytes, %d findings; %d bytes read\n",
				r.Status, r.SigVersion, r.Files, r.Cached, r.Bytes, r.Findings, r.BytesRead)
			if len(r.Incomplete) > 0 {
				reasons := make([]string, 0, len(r.Incomplete))
				for k, n := range r.Incomplete {
					reasons = append(reasons, fmt.Sprintf("%s %d", k, n))
				}
				slices.Sort(reasons)
				fmt.Fprintf(w, "  not scanned: %s\n", strings.Join(reasons, ", "))
			}
		}
		for _, f := range sv.Findings {
			fmt.Fprintf(w, "  %s  %s:%s%s\n", f.Rule, f.Disk, f.Volume, f.Path)
		}
	}
	switch {
	case sv.State == "failed" || sv.State == "cancelled":
		return &exitError{code: exitFailed}
	case sv.State != "done":
		return nil
	case sv.Result == nil:
		return errors.New("the appliance answered a done scan without its result")
	case sv.Result.Status == "findings":
		return &exitError{code: exitFindings}
	case sv.Result.Status == "clean":
		return nil
	}
	// incomplete, or a status this client does not know: never clean.
	return &exitError{code: exitIncomplete}
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("status", "status [--state STATE] [--vm VM] [--json] [ID]",
		"With ID, shows one scan and exits as scan does: 0 queued, running or clean,\n"+
			"1 findings, 2 failed or cancelled, 3 incomplete. Without, lists recent scans\n"+
			"as 'snapscan scans' does.\n"+clientHelp+`
Examples:
  snapscan status 42
  snapscan status --json 42 | jq .result
  snapscan status --state running
`, stderr)
	newClient := clientFlags(f)
	state := f.String("state", "", "list only scans in `STATE` (queued, running, done, failed, cancelled)")
	vm := f.String("vm", "", "list only the scans of `VM`")
	limit := f.Int("limit", 100, "list at most `N` scans")
	asJSON := f.Bool("json", false, "print the API's JSON")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError("at most one scan ID")
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if len(pos) == 1 {
		if err := c.do(ctx, http.MethodGet, "/v1/scans/"+url.PathEscape(pos[0]), nil, &raw); err != nil {
			return err
		}
		var sv scanView
		if err := json.Unmarshal(raw, &sv); err != nil {
			return err
		}
		return showScan(stdout, raw, sv, *asJSON)
	}
	return listScans(ctx, c, *state, *vm, *limit, *asJSON, stdout)
}

func listScans(ctx context.Context, c *client, state, vm string, limit int, asJSON bool, stdout io.Writer) error {
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if state != "" {
		q.Set("state", state)
	}
	if vm != "" {
		q.Set("vm", vm)
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/scans?"+q.Encode(), nil, &raw); err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, raw)
	}
	var list struct {
		Scans []scanView `json:"scans"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVM\tSTATE\tRESULT\tPRIORITY\tATTEMPTS\tERROR")
	for _, s := range list.Scans {
		res := "-"
		if s.Result != nil {
			res = s.Result.Status
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.VM, s.State, res, s.Priority, s.Attempts, s.Error)
	}
	return tw.Flush()
}

func runScans(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("scans", "scans [--state STATE] [--vm VM] [--limit N] [--json]",
		"Lists the appliance's scans, newest first: id, VM, state, result, priority,\nattempts and the last error.\n"+clientHelp+`
Examples:
  snapscan scans
  snapscan scans --state failed --vm web1
`, stderr)
	newClient := clientFlags(f)
	state := f.String("state", "", "only scans in `STATE` (queued, running, done, failed, cancelled)")
	vm := f.String("vm", "", "only the scans of `VM`")
	limit := f.Int("limit", 100, "at most `N` scans")
	asJSON := f.Bool("json", false, "print the API's JSON")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("no arguments expected (a scan's details: snapscan status ID)")
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	return listScans(ctx, c, *state, *vm, *limit, *asJSON, stdout)
}

func runCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("cancel", "cancel [--json] ID...",
		"Cancels scans: a queued one is dropped, a running one is stopped (its partial\n"+
			"result is not kept as a verdict). Exit 2 when one could not be cancelled (no such\n"+
			"scan, already finished); the others are cancelled all the same.\n"+clientHelp+`
Examples:
  snapscan cancel 42
  snapscan cancel $(snapscan scans --state queued --json | jq -r '.scans[].id')
`, stderr)
	newClient := clientFlags(f)
	asJSON := f.Bool("json", false, "print the API's JSON of each cancelled scan, one a line")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usageError("want at least one scan ID")
	}
	for _, id := range pos {
		if _, err := strconv.ParseInt(id, 10, 64); err != nil {
			return usageError("scan ID %q is not a number", id)
		}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	failed := 0
	for _, id := range pos {
		var raw json.RawMessage
		if err := c.do(ctx, http.MethodPost, "/v1/scans/"+id+"/cancel", nil, &raw); err != nil {
			fmt.Fprintf(stderr, "snapscan cancel: %v\n", err)
			failed++
			continue
		}
		if *asJSON {
			stdout.Write(append(compactJSON(raw), '\n'))
			continue
		}
		var sv scanView
		json.Unmarshal(raw, &sv)
		fmt.Fprintf(stdout, "scan %d (vm %s): %s\n", sv.ID, sv.VM, sv.State)
	}
	if failed > 0 {
		return &exitError{code: exitFailed, err: fmt.Errorf("%d of %d scans not cancelled", failed, len(pos))}
	}
	return nil
}

func compactJSON(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// datastoreView is the API's datastore object, as the client prints it.
type datastoreView struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Paused  bool   `json:"paused"`
	Running int    `json:"running"`
	Queued  int    `json:"queued"`
	Budget  struct {
		MaxScans    int     `json:"max_scans"`
		BytesPerSec float64 `json:"bytes_per_sec"`
		OpsPerSec   float64 `json:"ops_per_sec"`
	} `json:"budget"`
	Delivered struct {
		BytesPerSec float64 `json:"bytes_per_sec"`
		OpsPerSec   float64 `json:"ops_per_sec"`
	} `json:"delivered"`
	BytesRead int64 `json:"bytes_read"`
}

// clientNoArgs parses the flags of a client command that takes no
// arguments and makes its client.
func clientNoArgs(f *flag.FlagSet, args []string, newClient func() (*client, error)) (*client, error) {
	pos, err := parse(f, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != 0 {
		return nil, usageError("no arguments expected")
	}
	return newClient()
}

// getDocument GETs one of the API's documents. With asJSON it prints the
// document as it came and returns nil; otherwise it returns it for the
// text form.
func getDocument(ctx context.Context, c *client, path string, asJSON bool, stdout io.Writer) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, path, nil, &raw); err != nil {
		return nil, err
	}
	if asJSON {
		return nil, printJSON(stdout, raw)
	}
	return raw, nil
}

func rate(v float64, unit string) string {
	if v <= 0 {
		return "-"
	}
	if unit == "B" {
		return humanBytes(int64(v)) + "/s"
	}
	return fmt.Sprintf("%.0f/s", v)
}

func runDatastores(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("datastores", "datastores [--json]",
		"Lists the appliance's datastores: path, paused or not, scans running and queued,\n"+
			"the budget (scans at once, bytes and read operations per second) and what is\n"+
			"delivered now.\n"+clientHelp+`
Examples:
  snapscan datastores
  snapscan datastores --json | jq '.datastores[] | select(.paused)'
`, stderr)
	newClient := clientFlags(f)
	asJSON := f.Bool("json", false, "print the API's JSON")
	c, err := clientNoArgs(f, args, newClient)
	if err != nil {
		return err
	}
	raw, err := getDocument(ctx, c, "/v1/datastores", *asJSON, stdout)
	if err != nil || raw == nil {
		return err
	}
	var list struct {
		Datastores []datastoreView `json:"datastores"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tRUNNING\tQUEUED\tMAX_SCANS\tBUDGET\tDELIVERED\tREAD\tPATH")
	for _, d := range list.Datastores {
		st := "active"
		if d.Paused {
			st = "paused"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s %s\t%s %s\t%s\t%s\n", d.Name, st, d.Running, d.Queued, d.Budget.MaxScans,
			rate(d.Budget.BytesPerSec, "B"), rate(d.Budget.OpsPerSec, "ops"), rate(d.Delivered.BytesPerSec, "B"), rate(d.Delivered.OpsPerSec, "ops"),
			humanBytes(d.BytesRead), d.Path)
	}
	return tw.Flush()
}

func runPause(pause bool) func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name, verb, what := "pause", "pause", "Pauses scanning on each DATASTORE: no new scan starts there (running ones finish)\nuntil 'snapscan resume'. The pause is kept across restarts of the appliance."
	if !pause {
		name, verb, what = "resume", "resume", "Resumes scanning on each paused DATASTORE."
	}
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		f := newFlags(name, name+" [--json] DATASTORE...", what+"\n"+clientHelp+`
Examples:
  snapscan `+name+` san1
  snapscan `+name+` san1 nfs-backup
`, stderr)
		newClient := clientFlags(f)
		asJSON := f.Bool("json", false, "print the API's JSON of each datastore, one a line")
		pos, err := parse(f, args)
		if err != nil {
			return err
		}
		if len(pos) == 0 {
			return usageError("want at least one DATASTORE")
		}
		c, err := newClient()
		if err != nil {
			return err
		}
		failed := 0
		for _, ds := range pos {
			var raw json.RawMessage
			if err := c.do(ctx, http.MethodPost, "/v1/datastores/"+url.PathEscape(ds)+"/"+verb, nil, &raw); err != nil {
				fmt.Fprintf(stderr, "snapscan %s: %v\n", name, err)
				failed++
				continue
			}
			if *asJSON {
				stdout.Write(append(compactJSON(raw), '\n'))
				continue
			}
			var d datastoreView
			json.Unmarshal(raw, &d)
			st := "active"
			if d.Paused {
				st = "paused"
			}
			fmt.Fprintf(stdout, "datastore %s: %s (%d running, %d queued)\n", d.Name, st, d.Running, d.Queued)
		}
		if failed > 0 {
			return &exitError{code: exitFailed, err: fmt.Errorf("%d of %d datastores not changed", failed, len(pos))}
		}
		return nil
	}
}

func runSignatures(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("signatures", "signatures [--json]",
		"Shows the signature set the appliance scans with (name, version, rules, signing\n"+
			"key, when installed) and what its last pull learned from the central signature\n"+
			"server (the server's newest version, and why it is not the one active here).\n"+clientHelp+`
Examples:
  snapscan signatures
  snapscan signatures --json | jq .active.version
`, stderr)
	newClient := clientFlags(f)
	asJSON := f.Bool("json", false, "print the API's JSON")
	c, err := clientNoArgs(f, args, newClient)
	if err != nil {
		return err
	}
	raw, err := getDocument(ctx, c, "/v1/signatures", *asJSON, stdout)
	if err != nil || raw == nil {
		return err
	}
	var sv struct {
		Active *struct {
			Name      string    `json:"name"`
			Version   uint64    `json:"version"`
			Created   time.Time `json:"created"`
			RuleCount int       `json:"rule_count"`
			Files     int       `json:"files"`
			KeyID     string    `json:"key_id"`
			Installed time.Time `json:"installed"`
		} `json:"active"`
		Server map[string]any `json:"server"`
	}
	if err := json.Unmarshal(raw, &sv); err != nil {
		return err
	}
	if a := sv.Active; a != nil {
		fmt.Fprintf(stdout, "active: %s version %d: %d rules in %d files, key %s, created %s, installed %s\n",
			a.Name, a.Version, a.RuleCount, a.Files, a.KeyID, a.Created.UTC().Format(time.RFC3339), a.Installed.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintln(stdout, "active: none (nothing is scanned until a signature set is installed)")
	}
	if len(sv.Server) > 0 {
		keys := make([]string, 0, len(sv.Server))
		for k := range sv.Server {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			if v := sv.Server[k]; v != nil && v != "" {
				parts = append(parts, fmt.Sprintf("%s=%v", k, v))
			}
		}
		fmt.Fprintf(stdout, "server: %s\n", strings.Join(parts, " "))
	}
	return nil
}

func runFindings(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("findings", "findings [--vm NAME] [--datastore DS] [--rule RULE] [--tag TAG] [--scan ID] [--since TIME] [--until TIME] [--json]",
		"Lists findings, oldest first, filtered by VM, datastore, rule, tag, scan and time\n"+
			"(RFC 3339). Exit 1 when it listed at least one finding, 0 when none, as scan does.\n"+clientHelp+`
Examples:
  snapscan findings --since 2026-11-01T00:00:00Z --tag ransomware
  snapscan findings --vm web1 --json | jq -r '.[].path'
`, stderr)
	newClient := clientFlags(f)
	vm := f.String("vm", "", "only VM `NAME`")
	rule := f.String("rule", "", "only `RULE`")
	datastore := f.String("datastore", "", "only findings on `DATASTORE`")
	tag := f.String("tag", "", "only rules with `TAG`")
	scan := f.String("scan", "", "only scan `ID`")
	since := f.String("since", "", "found at or after `TIME`")
	until := f.String("until", "", "found before `TIME`")
	limit := f.Int("limit", 10000, "at most `N` findings")
	asJSON := f.Bool("json", false, "print JSON (an array of findings)")
	c, err := clientNoArgs(f, args, newClient)
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"vm": *vm, "rule": *rule, "datastore": *datastore, "tag": *tag, "scan": *scan, "since": *since, "until": *until} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var all []json.RawMessage
	after := int64(0)
	for len(all) < *limit {
		q.Set("limit", fmt.Sprint(min(1000, *limit-len(all))))
		q.Set("after", fmt.Sprint(after))
		var page struct {
			Findings  []json.RawMessage `json:"findings"`
			NextAfter int64             `json:"next_after"`
		}
		if err := c.do(ctx, http.MethodGet, "/v1/findings?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		all = append(all, page.Findings...)
		if page.NextAfter == 0 {
			break
		}
		after = page.NextAfter
	}
	if *asJSON {
		if all == nil {
			all = []json.RawMessage{}
		}
		b, err := json.Marshal(all)
		if err != nil {
			return err
		}
		if err := printJSON(stdout, b); err != nil {
			return err
		}
		return findingsExit(len(all))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FOUND\tSCAN\tVM\tRULE\tLOCATION\tSHA256")
	for _, r := range all {
		var fv findingView
		if err := json.Unmarshal(r, &fv); err != nil {
			return errors.New("malformed finding in answer")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s:%s%s\t%s\n", fv.Found, fv.Scan, fv.VM, fv.Rule, fv.Disk, fv.Volume, fv.Path, fv.SHA256)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return findingsExit(len(all))
}

// findingsExit is the exit status of a findings listing: 1 when it
// listed some (as scan), 0 when none.
func findingsExit(n int) error {
	if n > 0 {
		return &exitError{code: exitFindings}
	}
	return nil
}
