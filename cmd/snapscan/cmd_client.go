package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes of submit --wait and status ID, for scripts.
const (
	exitScanFailed     = 3 // the scan failed or was cancelled
	exitScanFindings   = 4 // the scan completed and found something
	exitScanIncomplete = 5 // nothing found, but not everything was scanned
)

func init() {
	register(command{name: "submit", summary: "ask a running appliance to scan a VM's disks", run: runSubmit})
	register(command{name: "status", summary: "show a scan, or list scans, of a running appliance", run: runStatus})
	register(command{name: "findings", summary: "list findings of a running appliance", run: runFindings})
}

// client talks to an appliance's API.
type client struct {
	base  string
	token string
	hc    *http.Client
}

func clientFlags(f *flag.FlagSet) func() (*client, error) {
	u := f.String("url", envOr("SNAPSCAN_URL", "http://127.0.0.1:8480"), "appliance `URL` (env SNAPSCAN_URL)")
	tok := f.String("token", "", "API bearer `TOKEN` (default env SNAPSCAN_TOKEN; prefer --token-file)")
	tokFile := f.String("token-file", "", "`FILE` holding the API token")
	ca := f.String("ca", "", "PEM `FILE` of CAs to trust for the appliance's HTTPS")
	return func() (*client, error) {
		c := &client{base: strings.TrimRight(*u, "/"), token: *tok}
		if c.token == "" && *tokFile != "" {
			b, err := os.ReadFile(*tokFile)
			if err != nil {
				return nil, err
			}
			c.token = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
		}
		if c.token == "" {
			c.token = os.Getenv("SNAPSCAN_TOKEN")
		}
		if c.token == "" {
			return nil, usageError("no token: pass --token-file or set SNAPSCAN_TOKEN")
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if *ca != "" {
			pem, err := os.ReadFile(*ca)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no PEM certificates", *ca)
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
	f.Func("format", "image `FORMAT` of the --disk before it, as the hypervisor knows it (raw, qcow2,\n"+
		"vmdk, vhd, vhdx); without it the format is probed and no unlisted backing file is opened", func(v string) error {
		last, err := d.last("format")
		if err == nil {
			last.Format = v
		}
		return err
	})
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
	f := newFlags("submit", "submit --vm NAME --disk DATASTORE:PATH [--format F] [--layer PATH...] [--disk ...] [--priority P] [--wait] [--json]",
		"Submits a scan of a VM's disks (paths relative to their datastore's folder) and prints\n"+
			"the scan id. With --wait, waits for the end: exit 0 when clean, 4 when it found\n"+
			"something, 5 when it found nothing but could not scan everything (incomplete),\n"+
			"3 when it failed or was cancelled.", stderr)
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
		return &exitError{code: exitScanFailed}
	case sv.State != "done":
		return nil
	case sv.Result == nil:
		return errors.New("the appliance answered a done scan without its result")
	case sv.Result.Status == "findings":
		return &exitError{code: exitScanFindings}
	case sv.Result.Status == "clean":
		return nil
	}
	// incomplete, or a status this client does not know: never clean.
	return &exitError{code: exitScanIncomplete}
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("status", "status [--state STATE] [--vm VM] [--json] [ID]",
		"With ID, shows one scan: exit 0 when queued, running or clean, 4 when it found\n"+
			"something, 5 when incomplete, 3 when it failed or was cancelled. Without, lists\n"+
			"recent scans.", stderr)
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
	q := url.Values{"limit": {fmt.Sprint(*limit)}}
	if *state != "" {
		q.Set("state", *state)
	}
	if *vm != "" {
		q.Set("vm", *vm)
	}
	if err := c.do(ctx, http.MethodGet, "/v1/scans?"+q.Encode(), nil, &raw); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, raw)
	}
	var list struct {
		Scans []scanView `json:"scans"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVM\tSTATE\tPRIORITY\tATTEMPTS\tERROR")
	for _, s := range list.Scans {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.VM, s.State, s.Priority, s.Attempts, s.Error)
	}
	return tw.Flush()
}

func runFindings(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("findings", "findings [--vm NAME] [--datastore DS] [--rule RULE] [--tag TAG] [--scan ID] [--since TIME] [--until TIME] [--json]",
		"Lists findings, oldest first, filtered by VM, datastore, rule, tag, scan and time (RFC 3339).", stderr)
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
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("no arguments expected")
	}
	c, err := newClient()
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
		return printJSON(stdout, b)
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
	return tw.Flush()
}
