package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector/libvirt/libvirttest"
	"github.com/snapscan/snapscan/connector/vsphere/vspheretest"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
)

// TestServeConnectors runs "snapscan serve" with a libvirt connector over
// a real libvirtd and its running TCG guest, and a vSphere connector over
// vcsim (extended with real delta disks): the appliance finds both VMs,
// freezes them, scans the frozen disks (the planted file is found in
// each), and releases the freezes (no snapshot, overlay or delta disk
// left), then stops on its context.
func TestServeConnectors(t *testing.T) {
	d := libvirttest.Start(t)
	t.Cleanup(d.Close)
	im := libvirttest.BuildImages(t)
	l := d.Connect(t)
	g := d.DefineGuest(t, l, im, "kvm1")
	g.Boot(t, l)
	sim := vspheretest.New(t)

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub, priv, err := signatures.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pb, err := signatures.MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	const token, pushToken = "api-token-0123456789abcdef", "push-token-0123456789abcdef"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := write("appliance.yaml", fmt.Sprintf(`
server: {listen: %q}
auth: {tokens: [%s]}
signatures:
  state_dir: %q
  trusted_keys: [%q]
  name: test
  receiver_token_file: %q
datastores:
  - {name: kvm, path: %q}
  - {name: %s, path: %q}
database: {path: %q}
connectors:
  - name: kvm
    type: libvirt
    socket: %q
    select: {names: [kvm1]}
    refresh: 1s
    schedule: {new_vms: true}
  - name: vc
    type: vsphere
    url: %q
    username_file: %q
    password_file: %q
    ca_file: %q
    mounts: {%s: %q}
    select: {names: [DC0_C0_RP0_VM0]}
    refresh: 1s
    schedule: {new_vms: true}
`, addr, token, filepath.Join(dir, "sig"), write("signer.pub", string(pb)), write("push.token", pushToken+"\n"),
		g.Dir, sim.DS, sim.Dir, filepath.Join(dir, "db", "snapscan.db"), d.Socket,
		sim.URL.String(), write("vc.user", vspheretest.User+"\n"), write("vc.pass", vspheretest.Password+"\n"), sim.CAFile(t), sim.DS, sim.Dir))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, &stdout, &stderr) }()
	client := &http.Client{Timeout: 10 * time.Second}
	call := func(method, path, tok string, body []byte, out any) int {
		req, _ := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	deadline := time.Now().Add(30 * time.Second)
	for call("GET", "/healthz", "", nil, nil) != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	rule := []byte(`rule planted { strings: $a = "snapscan planted file" condition: $a }` + "\n")
	files := []signatures.File{{Path: "planted.yar", Data: rule}}
	bundle, _, err := signatures.Build(signatures.BuildOptions{Name: "test", Version: 1,
		Externals: signatures.ReferencedExternals(files, scanner.Externals)}, files, priv)
	if err != nil {
		t.Fatal(err)
	}
	if code := call("POST", "/v1/signatures", pushToken, bundle, nil); code/100 != 2 {
		t.Fatalf("push signatures: %d\n%s", code, stderr.String())
	}
	type vmEntry struct {
		ID, Name, Source string
		LastStatus       string `json:"last_status"`
		LastFindings     int64  `json:"last_findings"`
	}
	var vms []vmEntry
	deadline = time.Now().Add(3 * time.Minute)
	for {
		var page struct {
			VMs []vmEntry `json:"vms"`
		}
		call("GET", "/v1/vms", token, nil, &page)
		vms = page.VMs
		found := 0
		for _, v := range vms {
			if v.LastStatus == "findings" && v.LastFindings > 0 {
				found++
			}
		}
		if found == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VMs %+v\n%s", vms, tail(stderr.String(), 4000))
		}
		time.Sleep(300 * time.Millisecond)
	}
	// Released: no snapshot or overlay of snapscan's on either.
	deadline = time.Now().Add(30 * time.Second)
	for {
		dom, err := l.DomainLookupByName("kvm1")
		if err != nil {
			t.Fatal(err)
		}
		snaps, _, err := l.DomainListAllSnapshots(dom, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		overlays, _ := filepath.Glob(filepath.Join(g.Dir, "*snapscan-*"))
		vc := sim.Snapshots(t, "DC0_C0_RP0_VM0")
		if len(snaps)+len(overlays)+len(vc) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: libvirt snapshots %v, overlays %v, vSphere snapshots %v", snaps, overlays, vc)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// "snapscan submit --vm NAME" alone: the connector's disks, frozen,
	// scanned (exit 1: findings, as scan's exit codes say) and released.
	tokFile := write("client.token", token+"\n")
	for _, name := range []string{"kvm1", "DC0_C0_RP0_VM0"} {
		var out, errOut bytes.Buffer
		rc := run(ctx, []string{"submit", "--url", "http://" + addr, "--token-file", tokFile, "--vm", name, "--wait"}, &out, &errOut)
		if rc == 0 || !strings.Contains(out.String()+errOut.String(), "findings") {
			t.Errorf("submit --vm %s: exit %d\n%s%s", name, rc, out.String(), errOut.String())
		}
	}
	var freezes struct {
		Freezes []struct {
			ReleaseStun int64 `json:"release_stun_ns"`
			Held        int64 `json:"held_ns"`
		} `json:"freezes"`
	}
	for _, v := range vms {
		if call("GET", "/v1/vms/"+url.PathEscape(v.ID)+"/freezes", token, nil, &freezes) != 200 || len(freezes.Freezes) < 2 || freezes.Freezes[0].Held <= 0 {
			t.Errorf("freezes of %s: %+v", v.ID, freezes)
		}
	}
	for _, want := range []string{`"appliance: VM released"`, `"connector":"kvm"`, `"connector":"vc"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the log lacks %s", want)
		}
	}
	cancel()
	select {
	case rc := <-done:
		if rc != 0 {
			t.Fatalf("serve exited %d\n%s", rc, tail(stderr.String(), 3000))
		}
	case <-time.After(90 * time.Second):
		t.Fatal("serve did not stop")
	}
	t.Logf("VMs scanned: %+v", vms)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
