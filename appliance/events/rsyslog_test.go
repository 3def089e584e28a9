package events

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

// rsyslogConf makes rsyslogd a collector on loopback: plain TCP (port 0,
// the port written to tcp.port), TLS through the openssl driver
// (tls.port) and UDP, each message written to raw.log as received
// (%rawmsg%, the RFC 5424 message without its framing) and to parsed.log
// as rsyslog's RFC 5424 parser split it.
const rsyslogConf = `
global(workDirectory="{{dir}}"
       defaultNetstreamDriverCAFile="{{dir}}/ca.pem"
       defaultNetstreamDriverCertFile="{{dir}}/server.pem"
       defaultNetstreamDriverKeyFile="{{dir}}/server.key")
module(load="imtcp")
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\n")
template(name="parsed" type="string" string="%inputname%|%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="collect") {
	action(type="omfile" file="{{dir}}/raw.log" template="raw")
	action(type="omfile" file="{{dir}}/parsed.log" template="parsed")
}
input(type="imtcp" name="tcp" address="127.0.0.1" port="0" listenPortFileName="{{dir}}/tcp.port" ruleset="collect")
input(type="imtcp" name="tls" address="127.0.0.1" port="0" listenPortFileName="{{dir}}/tls.port" ruleset="collect"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imudp" name="udp" address="127.0.0.1" port="{{udp}}" ruleset="collect")
`

// startRsyslog runs rsyslogd in the foreground until the test ends and
// returns its folder and the TCP, TLS and UDP addresses it listens on.
func startRsyslog(t *testing.T) (dir, tcp, tls, udp string) {
	testenv.NeedTools(t, "rsyslogd")
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so"); err != nil {
		testenv.Skip(t, "needs rsyslog-openssl (run scripts/install-deps.sh)")
	}
	dir = t.TempDir()
	testPKI(t, dir, "server")
	// imudp has no port file: take a free port and hand it over.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp = pc.LocalAddr().String()
	pc.Close()
	_, udpPort, _ := net.SplitHostPort(udp)
	conf := strings.NewReplacer("{{dir}}", dir, "{{udp}}", udpPort).Replace(rsyslogConf)
	cf := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("rsyslogd", "-n", "-f", cf, "-i", filepath.Join(dir, "rsyslogd.pid"))
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("rsyslogd output:\n%s", out)
		}
	})
	port := func(name string) string {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				return "127.0.0.1:" + strings.TrimSpace(string(b))
			}
			select {
			case err := <-exited:
				t.Fatalf("rsyslogd exited: %v\n%s", err, out)
			case <-time.After(20 * time.Millisecond):
			}
		}
		t.Fatalf("rsyslogd wrote no %s\n%s", name, out)
		return ""
	}
	return dir, port("tcp.port"), port("tls.port"), udp
}

// TestRsyslogReceives sends the same finding over TCP, TLS and UDP to a
// real rsyslogd and checks what it logged: the exact message as received,
// and the RFC 5424 fields its parser found.
func TestRsyslogReceives(t *testing.T) {
	dir, tcp, tlsAddr, udp := startRsyslog(t)
	d := serve(t, Config{Syslog: []SyslogConfig{
		{Address: tcp},
		{Network: "tls", Address: tlsAddr, CA: filepath.Join(dir, "ca.pem")},
		{Network: "udp", Address: udp},
		{Name: "ocsf", Address: tcp, Format: FormatOCSF, Facility: "security"},
	}})
	ev := sampleFinding()
	d.Emit(ev)
	// Wait for the stream copies: CEF over TCP and TLS, OCSF over TCP.
	var parsed []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		parsed = readLines(filepath.Join(dir, "parsed.log"))
		n := 0
		for _, p := range parsed {
			if strings.HasPrefix(p, "tcp|") || strings.HasPrefix(p, "tls|") {
				n++
			}
		}
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogd logged only %q", parsed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := wantSyslog()
	ocsf := fmt.Sprintf("<109>1 2024-05-06T07:08:09.123456Z appl-1 snapscan %d finding - %s", os.Getpid(), OCSF(&ev, testProduct))
	count := map[string]int{}
	lines := readLines(filepath.Join(dir, "raw.log"))
	for _, l := range lines {
		count[l]++
	}
	if count[want] < 2 || count[ocsf] != 1 {
		t.Errorf("rsyslogd received:\n%s\nwant the CEF message twice (TCP, TLS) and\n%s\n%s", strings.Join(lines, "\n"), want, ocsf)
	}
	inputs := map[string]int{}
	for _, p := range parsed {
		f := strings.SplitN(p, "|", 9)
		if len(f) != 9 {
			t.Fatalf("parsed line %q", p)
		}
		inputs[f[0]]++
		if f[3] != "appl-1" || f[4] != "snapscan" || f[5] != strconv.Itoa(os.Getpid()) || f[6] != "finding" || f[7] != "-" {
			t.Errorf("rsyslog parsed host %q app %q procid %q msgid %q sd %q", f[3], f[4], f[5], f[6], f[7])
		}
		if !strings.HasPrefix(f[2], "2024-05-06T07:08:09.123456") {
			t.Errorf("rsyslog parsed time %q", f[2])
		}
		if f[8] != sampleCEF && f[8] != string(OCSF(&ev, testProduct)) {
			t.Errorf("rsyslog parsed MSG %q", f[8])
		}
	}
	if inputs["tcp"] != 2 || inputs["tls"] != 1 {
		t.Errorf("messages by input: %v", inputs)
	}
	// UDP: send until one datagram got through (rsyslogd binds its UDP
	// socket at start, so the first normally does).
	deadline = time.Now().Add(10 * time.Second)
	for {
		for _, p := range readLines(filepath.Join(dir, "parsed.log")) {
			if strings.HasPrefix(p, "udp|133|") && strings.HasSuffix(p, "|"+sampleCEF) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no UDP message logged: %v", readLines(filepath.Join(dir, "parsed.log")))
		}
		time.Sleep(200 * time.Millisecond)
		d.Emit(ev)
	}
}

func readLines(path string) []string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
