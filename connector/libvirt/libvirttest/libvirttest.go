// Package libvirttest starts what the libvirt connector's tests (and the
// appliance's) run against: a real libvirtd, private to the test, and a
// tiny real guest under QEMU/TCG.
//
// The daemon runs as root in its own mount namespace (unshare -m), where
// its configuration, state, run and log folders are bind-mounted from a
// temporary folder, and its sockets live in that folder: it never touches
// a libvirtd of the machine, nor the machine's /etc/libvirt. QEMU runs as
// root with no security driver and no cgroups, which is what works in a
// container without /dev/kvm.
//
// The guest (testdata/guest.sh, built once through testenv.Fixture) boots
// Debian's cloud kernel with a busybox initramfs in a few seconds under
// TCG; it mounts the ext4 of its qcow2 disk, writes a numbered file every
// 100 ms and reports on its serial console the latency of every write and
// the largest gap of a 1 ms timer loop for every 250 ms (the stun a freeze
// causes, as the guest sees it).
package libvirttest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/snapscan/snapscan/internal/testenv"
)

// Daemon is a libvirtd started for tests.
type Daemon struct {
	Dir      string // its temporary folder
	Socket   string // read-write socket
	ROSocket string // read-only socket
	cmd      *exec.Cmd
}

// Start starts a private libvirtd. Close stops it and every QEMU it ran.
func Start(t testing.TB) *Daemon {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "libvirtd", "qemu-system-x86_64", "unshare", "qemu-img")
	// Short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "lvd")
	if err != nil {
		t.Fatal(err)
	}
	killOrphans()
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "sock", "libvirt-sock"), ROSocket: filepath.Join(dir, "sock", "libvirt-sock-ro")}
	for _, sub := range []string{"etc", "run", "lib", "log", "cache", "sock"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/libvirtd.conf", fmt.Sprintf(`unix_sock_dir = %q
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:%s/libvirtd.log"
`, filepath.Join(dir, "sock"), dir))
	write("etc/qemu.conf", `security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
stdio_handler = "file"
`)
	// libvirtd (built for Debian) refuses to start unless the user
	// libvirt-qemu exists, even when qemu.conf names root: give it one in
	// its namespace only.
	binds := [][2]string{}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		for _, f := range []struct{ name, line string }{
			{"passwd", "libvirt-qemu:x:64055:64055:libvirt-qemu:/nonexistent:/usr/sbin/nologin\n"},
			{"group", "libvirt-qemu:x:64055:\n"},
		} {
			b, err := os.ReadFile("/etc/" + f.name)
			if err != nil {
				t.Fatal(err)
			}
			write(f.name, string(b)+f.line)
			binds = append(binds, [2]string{filepath.Join(dir, f.name), "/etc/" + f.name})
		}
	}
	for _, b := range [][2]string{{"etc", "/etc/libvirt"}, {"run", "/run/libvirt"}, {"lib", "/var/lib/libvirt"}, {"log", "/var/log/libvirt"}, {"cache", "/var/cache/libvirt"}} {
		// The mount points must exist; an empty folder is all that is
		// made outside the namespace.
		if err := os.MkdirAll(b[1], 0o755); err != nil {
			t.Fatal(err)
		}
		binds = append(binds, [2]string{filepath.Join(dir, b[0]), b[1]})
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, b := range binds {
		fmt.Fprintf(&script, "mount --bind %q %q\n", b[0], b[1])
	}
	// Its own pid file too: the default, /run/libvirtd.pid, is the
	// machine's (and another test's daemon would hold it).
	fmt.Fprintf(&script, "exec libvirtd --config %q --pid-file %q\n", filepath.Join(dir, "etc", "libvirtd.conf"), filepath.Join(dir, "libvirtd.pid"))
	d.cmd = exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script.String())
	out, err := os.Create(filepath.Join(dir, "libvirtd.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	d.cmd.Stdout, d.cmd.Stderr = out, out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", d.Socket); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "libvirtd.out"))
			l, _ := os.ReadFile(filepath.Join(dir, "libvirtd.log"))
			t.Fatalf("libvirtd exited: %v\n%s\n%s", err, b, l)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.cmd.Process.Kill()
			t.Fatal("libvirtd did not open its socket in 30 s")
		}
	}
	go func() { <-exited }()
	return d
}

// Connect opens a go-libvirt connection to the daemon.
func (d *Daemon) Connect(t testing.TB) *golibvirt.Libvirt {
	t.Helper()
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.Socket)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatal(err)
	}
	return l
}

// Close destroys every domain, stops libvirtd and removes its folder.
func (d *Daemon) Close() {
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.Socket), dialers.WithLocalTimeout(5*time.Second)))
	if l.ConnectToURI(golibvirt.QEMUSystem) == nil {
		if doms, _, err := l.ConnectListAllDomains(1, 0); err == nil {
			for _, dom := range doms {
				l.DomainDestroy(dom)
			}
		}
		l.Disconnect()
	}
	// QEMU processes outlive libvirtd: kill any it left, by their pid files.
	pids, _ := filepath.Glob(filepath.Join(d.Dir, "run", "qemu", "*.pid"))
	for _, p := range pids {
		if b, err := os.ReadFile(p); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if d.cmd != nil && d.cmd.Process != nil {
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		time.Sleep(200 * time.Millisecond)
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	}
	os.RemoveAll(d.Dir)
}

// Images is the built guest: kernel, initramfs and a pristine disk.
type Images struct {
	Kernel, Initrd, Disk string
	// Planted maps the planted files' paths on the guest's ext4 to their
	// SHA-256 (hex).
	Planted map[string]string
}

// BuildImages builds (once per machine) the guest of testdata/guest.sh
// with the newest Debian kernel under /boot.
func BuildImages(t testing.TB) Images {
	t.Helper()
	testenv.NeedTools(t, "gcc", "cpio", "mkfs.ext4", "qemu-img")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	var usable []string
	for _, k := range kernels {
		if _, err := os.Stat("/lib/modules/" + strings.TrimPrefix(filepath.Base(k), "vmlinuz-")); err == nil {
			usable = append(usable, k)
		}
	}
	if len(usable) == 0 {
		testenv.Skip(t, "needs a Debian kernel with its modules under /boot (linux-image-cloud-amd64; scripts/install-deps.sh)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Skip(t, "needs /bin/busybox (busybox-static; scripts/install-deps.sh)")
	}
	sort.Strings(usable)
	out := testenv.Fixture(t, "guest.sh", usable[len(usable)-1])
	im := Images{Kernel: filepath.Join(out, "vmlinuz"), Initrd: filepath.Join(out, "initrd.gz"), Disk: filepath.Join(out, "disk.qcow2"), Planted: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(out, "planted.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			im.Planted[f[1]] = f[0]
		}
	}
	return im
}

// Guest is a test VM defined in a Daemon.
type Guest struct {
	Name    string
	Dir     string // its own folder: disk, console, control socket
	Disk    string // its qcow2 disk
	Console string // the serial console file
	Ctl     string // the control socket (second serial port)
	d       *Daemon
}

// DefineGuest copies the pristine disk into a folder of its own under the
// daemon's and defines a persistent VM named name that boots the tiny
// guest from it, with a virtio-scsi controller that takes disks plugged
// in while it runs (the guest's kernel has no PCI hotplug). It does not
// start it.
func (d *Daemon) DefineGuest(t testing.TB, l *golibvirt.Libvirt, im Images, name string) *Guest {
	t.Helper()
	g := &Guest{Name: name, Dir: filepath.Join(d.Dir, "vm-"+name), d: d}
	if err := os.MkdirAll(g.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g.Disk = filepath.Join(g.Dir, "disk.qcow2")
	g.Console = filepath.Join(g.Dir, "console.log")
	g.Ctl = filepath.Join(g.Dir, "ctl.sock")
	if out, err := exec.Command("cp", "--sparse=always", im.Disk, g.Disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v\n%s", err, out)
	}
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <title>snapscan test guest</title>
  <metadata><libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="http://debian.org/debian/12"/></libosinfo:libosinfo></metadata>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='scsi' model='virtio-scsi'/>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='%s'/><target port='1'/></serial>
  </devices>
</domain>`, name, im.Kernel, im.Initrd, g.Disk, g.Console, g.Ctl)
	if _, err := l.DomainDefineXML(xml); err != nil {
		t.Fatal(err)
	}
	return g
}

// Boot starts the guest and waits until its writer runs.
func (g *Guest) Boot(t testing.TB, l *golibvirt.Libvirt) {
	t.Helper()
	os.Remove(g.Console)
	dom, err := l.DomainLookupByName(g.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	g.WaitConsole(t, "READY", 90*time.Second)
	// The writer has written something before the tests start.
	deadline := time.Now().Add(30 * time.Second)
	for len(g.Log(t).Writes) < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitConsole waits until a line of the console is line.
func (g *Guest) WaitConsole(t testing.TB, line string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(g.Console)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(l) == line {
				return
			}
			if strings.HasPrefix(l, "GUEST-ERROR") {
				t.Fatalf("guest %s: %s", g.Name, l)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(g.Console)
	t.Fatalf("guest %s did not print %q in %v; console:\n%s", g.Name, line, timeout, tail(b, 3000))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Stop asks the guest to stop writing, unmount its disk cleanly and power
// off, and waits until the VM is shut off.
func (g *Guest) Stop(t testing.TB, l *golibvirt.Libvirt) {
	t.Helper()
	c, err := net.Dial("unix", g.Ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("stop\n")); err != nil {
		t.Fatal(err)
	}
	g.WaitConsole(t, "STOPPED", 60*time.Second)
	dom, err := l.DomainLookupByName(g.Name)
	if err != nil {
		t.Fatal(err)
	}
	// The disk is unmounted once STOPPED is printed: should the power-off
	// not come, pulling the plug loses nothing.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, _, err := l.DomainGetState(dom, 0)
		if err == nil && golibvirt.DomainState(st) == golibvirt.DomainShutoff {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.DomainDestroy(dom); err != nil {
		t.Fatalf("guest %s did not power off, and destroy: %v", g.Name, err)
	}
}

// Run runs a shell command line in the guest (busybox sh, as root; its
// disk's ext4 is mounted at /mnt), then syncs the guest's file systems,
// and waits until it is done.
func (g *Guest) Run(t testing.TB, cmd string) {
	t.Helper()
	if strings.ContainsAny(cmd, "\n\r") {
		t.Fatalf("guest command %q: one line only", cmd)
	}
	c, err := net.Dial("unix", g.Ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := c.Write([]byte("run " + id + " " + cmd + "\n")); err != nil {
		t.Fatal(err)
	}
	g.WaitConsole(t, "RAN "+id, 60*time.Second)
}

// Log is what the guest reported on its console.
type Log struct {
	// Gaps is the largest timer gap of each 250 ms window, in order.
	Gaps []time.Duration
	// Writes is the latency of each write+fsync, by sequence number.
	Writes []time.Duration
	// Size is the console file's length when read: Since(Size) reads
	// what came after.
	Size int64
}

// Log parses the console.
func (g *Guest) Log(t testing.TB) Log { return g.Since(t, 0) }

// Since parses the console from byte offset off (a Log.Size).
func (g *Guest) Since(t testing.TB, off int64) Log {
	t.Helper()
	b, err := os.ReadFile(g.Console)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	lg := Log{Size: int64(len(b))}
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	sc := bufio.NewScanner(bytes.NewReader(b[off:]))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		v, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "G":
			lg.Gaps = append(lg.Gaps, time.Duration(v)*time.Microsecond)
		case "W":
			lg.Writes = append(lg.Writes, time.Duration(v)*time.Microsecond)
		}
	}
	return lg
}

// LastWrite returns the sequence number of the last write the guest
// reported (-1 for none).
func (g *Guest) LastWrite(t testing.TB) int {
	t.Helper()
	b, _ := os.ReadFile(g.Console)
	last := -1
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "W" {
			if n, err := strconv.Atoi(f[1]); err == nil && n > last {
				last = n
			}
		}
	}
	return last
}

// WriteContent is what the guest's writer puts into file n of /w.
func WriteContent(n int) []byte {
	b := make([]byte, 4096)
	head := fmt.Sprintf("snapscan guest write %06d\n", n)
	copy(b, head)
	for i := len(head); i < len(b); i++ {
		b[i] = byte('a' + (n+i)%26)
	}
	return b
}

// Max returns the largest of ds (0 for none).
func Max(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// Percentile returns the p-th percentile (0..100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// killOrphans kills QEMU processes that a test run killed before its
// cleanup (a test timeout) left running: those whose command line names a
// folder of a Daemon that no longer exists.
func killOrphans() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	prefix := filepath.Join(os.TempDir(), "lvd")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			s := string(arg)
			i := strings.Index(s, prefix)
			if i < 0 {
				continue
			}
			dir := s[i:]
			if j := strings.IndexAny(dir[len(prefix):], "/,'\"}"); j >= 0 {
				dir = dir[:len(prefix)+j]
			}
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			break
		}
	}
}
