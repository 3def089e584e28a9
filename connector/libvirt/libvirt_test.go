package libvirt_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/connectortest"
	"github.com/snapscan/snapscan/connector/libvirt"
	"github.com/snapscan/snapscan/connector/libvirt/libvirttest"
	"github.com/snapscan/snapscan/snapshot"
)

// One libvirtd and one booted guest serve every test of the package: a
// boot under TCG costs seconds, and CI runs on two cores.
var (
	envOnce sync.Once
	env     *testEnv
)

type testEnv struct {
	d   *libvirttest.Daemon
	l   *golibvirt.Libvirt
	im  libvirttest.Images
	g   *libvirttest.Guest // running
	off *libvirttest.Guest // defined, never started
	mu  sync.Mutex         // tests that freeze the running guest take turns
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	code := m.Run()
	if env != nil {
		env.d.Close()
	}
	os.Exit(code)
}

func setup(t testing.TB) *testEnv {
	t.Helper()
	envOnce.Do(func() {
		d := libvirttest.Start(t)
		e := &testEnv{d: d}
		ok := false
		defer func() {
			if !ok {
				d.Close()
			}
		}()
		e.im = libvirttest.BuildImages(t)
		e.l = d.Connect(t)
		e.g = d.DefineGuest(t, e.l, e.im, "guest1")
		e.off = d.DefineGuest(t, e.l, e.im, "off1")
		e.g.Boot(t, e.l)
		ok = true
		env = e
	})
	if env == nil {
		t.Fatal("the test libvirtd or guest did not start (see the first test's failure)")
	}
	return env
}

func dial(t testing.TB, e *testEnv) *libvirt.Connector {
	t.Helper()
	c, err := libvirt.Dial(context.Background(), libvirt.Config{Socket: e.d.Socket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func vmByName(t testing.TB, c connector.Connector, name string) connector.VM {
	t.Helper()
	vms, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm
		}
	}
	t.Fatalf("VM %s not listed in %v", name, vms)
	return connector.VM{}
}

func TestList(t *testing.T) {
	e := setup(t)
	c := dial(t, e)
	vm := vmByName(t, c, "guest1")
	if vm.Power != connector.PoweredOn || vm.GuestOS != "http://debian.org/debian/12" || len(vm.ID) != 36 {
		t.Errorf("guest1 = %+v", vm)
	}
	if len(vm.Disks) != 1 {
		t.Fatalf("disks = %+v", vm.Disks)
	}
	disk := vm.Disks[0]
	want := connector.Disk{Key: "vda", Datastore: e.g.Dir, Layers: []connector.Layer{{Path: e.g.Disk, Format: "qcow2"}}, Size: 64 << 20, ChangeTracking: true}
	if fmt.Sprint(disk) != fmt.Sprint(want) {
		t.Errorf("disk = %+v, want %+v", disk, want)
	}
	if off := vmByName(t, c, "off1"); off.Power != connector.PoweredOff || len(off.Disks) != 1 || off.Disks[0].Top().Path != e.off.Disk {
		t.Errorf("off1 = %+v", off)
	}
}

// readPlanted opens a frozen disk with the snapshot package, as the
// appliance will, and checks the planted files and the guest's writes up
// to upTo. It returns the number of /w files seen.
func readPlanted(t *testing.T, e *testEnv, fd connector.FrozenDisk, upTo int) int {
	t.Helper()
	top := fd.Top()
	if top.Format != "qcow2" {
		t.Fatalf("frozen top %+v: want qcow2", top)
	}
	// Opened as the appliance does: the declared format and chain only.
	disk, err := snapshot.Open(top.Path, &snapshot.Options{Format: top.Format, Layers: fd.Paths()})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	if disk.Format != top.Format {
		t.Errorf("snapshot reads %s as %s, libvirt declares %s", top.Path, disk.Format, top.Format)
	}
	v, err := disk.Volume("disk")
	if err != nil {
		t.Fatal(err)
	}
	if v.Err != nil {
		t.Fatal(v.Err)
	}
	for path, sum := range e.im.Planted {
		b, err := fs.ReadFile(v.FS, path)
		if err != nil {
			t.Fatalf("planted %s: %v", path, err)
		}
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
			t.Errorf("planted %s: content differs", path)
		}
	}
	ents, err := fs.ReadDir(v.FS, "w")
	if upTo < 0 && errors.Is(err, fs.ErrNotExist) {
		return 0 // a guest that never ran
	}
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, ent := range ents {
		have[ent.Name()] = true
	}
	for n := 0; n <= upTo; n++ {
		name := fmt.Sprintf("w/%06d", n)
		b, err := fs.ReadFile(v.FS, name)
		if err != nil {
			t.Fatalf("write %d reported by the guest before the freeze: %v", n, err)
		}
		if !bytes.Equal(b, libvirttest.WriteContent(n)) {
			t.Fatalf("write %d: content differs", n)
		}
	}
	return len(ents)
}

// chainOf returns the running domain's chain of vda.
func chainOf(t *testing.T, e *testEnv, name string) []string {
	t.Helper()
	dom, err := e.l.DomainLookupByName(name)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := e.l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range x.Devices.Disks {
		if d.Target.Dev != "vda" {
			continue
		}
		out = append(out, d.Source.File.File)
		for b := d.BackingStore; b != nil && b.Source != nil && b.Source.File != nil; b = b.BackingStore {
			out = append(out, b.Source.File.File)
		}
	}
	return out
}

// leftovers lists files and snapshots a freeze may have left.
func leftovers(t *testing.T, e *testEnv, g *libvirttest.Guest) []string {
	t.Helper()
	var out []string
	files, _ := filepath.Glob(filepath.Join(g.Dir, "*snapscan-*"))
	out = append(out, files...)
	dom, err := e.l.DomainLookupByName(g.Name)
	if err != nil {
		t.Fatal(err)
	}
	snaps, _, err := e.l.DomainListAllSnapshots(dom, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		out = append(out, "snapshot "+s.Name)
	}
	return out
}

func TestFreezeScanRelease(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(t, e)
	ctx := context.Background()
	vm := vmByName(t, c, "guest1")
	chainBefore := chainOf(t, e, "guest1")

	upTo := e.g.LastWrite(t)
	mark := e.g.Log(t).Size
	f, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true, Quiesce: connector.QuiesceIfAvailable})
	if err != nil {
		t.Fatal(err)
	}
	frozenAt := time.Now()
	released := false
	defer func() {
		if !released {
			c.Release(ctx, f)
		}
	}()
	if f.InPlace || f.ID == "" || f.Quiesced || len(f.Disks) != 1 {
		t.Fatalf("freeze = %+v (the test guest has no agent: not quiesced)", f)
	}
	fd := f.Disks[0]
	if fmt.Sprint(fd.Layers) != fmt.Sprint(vm.Disks[0].Layers) || fd.Checkpoint != f.ID {
		t.Fatalf("frozen disk = %+v, want the chain %v and checkpoint %s", fd, vm.Disks[0].Layers, f.ID)
	}
	if ch := chainOf(t, e, "guest1"); len(ch) != 2 || ch[1] != e.g.Disk || !strings.Contains(ch[0], f.ID) {
		t.Fatalf("chain while frozen = %v", ch)
	}
	// The guest goes on writing into the overlay while the frozen file
	// is read: it must not change under the reader.
	sum := func() string {
		b, err := os.ReadFile(e.g.Disk)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	s0 := sum()
	seen := readPlanted(t, e, fd, upTo)
	for e.g.LastWrite(t) < upTo+seen/4+5 && time.Since(frozenAt) < 20*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	if s1 := sum(); s1 != s0 {
		t.Fatal("the frozen image changed while frozen")
	}
	if again := readPlanted(t, e, fd, upTo); again != seen {
		t.Fatalf("the frozen view has %d files of /w, then %d", seen, again)
	}
	scanned := time.Since(frozenAt)

	stun := e.g.Since(t, mark)
	r, err := c.Release(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	released = true
	time.Sleep(600 * time.Millisecond) // two gap windows after the pivot
	after := e.g.Since(t, mark)
	t.Logf("freeze: API stun %v, release: API %v (total %v); freeze to released %v (scan %v); guest-visible largest gap: around freeze %v, whole freeze+release %v",
		f.Stun, r.Stun, r.Duration, time.Since(frozenAt)+f.Stun, scanned, libvirttest.Max(stun.Gaps[:min(len(stun.Gaps), 4)]), libvirttest.Max(after.Gaps))

	if ch := chainOf(t, e, "guest1"); fmt.Sprint(ch) != fmt.Sprint(chainBefore) {
		t.Fatalf("chain after release = %v, before %v", ch, chainBefore)
	}
	if left := leftovers(t, e, e.g); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if n := e.g.LastWrite(t); n <= upTo+seen/4 {
		t.Fatalf("the guest stopped writing: last write %d", n)
	}
	// Releasing twice is no error.
	if _, err := c.Release(ctx, f); err != nil {
		t.Fatalf("second release: %v", err)
	}

	// Stop the guest (clean unmount) and read its disk: the planted files
	// and every write it reported, before, during and after the freeze.
	e.g.Stop(t, e.l)
	last := e.g.LastWrite(t)
	off := connector.FrozenDisk{Layers: []connector.Layer{{Path: e.g.Disk, Format: "qcow2"}}}
	// One more file may exist: the write the stop interrupted before the
	// guest reported it.
	if n := readPlanted(t, e, off, last); n != last+1 && n != last+2 {
		t.Errorf("the disk holds %d writes, the guest reported %d", n, last+1)
	}
	info, err := exec.Command("qemu-img", "info", "--output=json", e.g.Disk).CombinedOutput()
	if err != nil || strings.Contains(string(info), "backing-filename") {
		t.Errorf("qemu-img info after release: %v\n%s", err, info)
	}
	t.Logf("the disk holds all %d writes the guest reported", last+1)
	e.g.Boot(t, e.l)
}

// TestChanges checks changed-block tracking: every 64 KiB cluster that
// differs between two frozen views lies in the areas Changes reports.
func TestChanges(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(t, e)
	ctx := context.Background()
	vm := vmByName(t, c, "guest1")
	dir := t.TempDir()
	copyFrozen := func(f *connector.Freeze, name string) []byte {
		out := filepath.Join(dir, name)
		if b, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", f.Disks[0].Top().Path, out).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f1, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	a := copyFrozen(f1, "a.raw")
	if _, err := c.Release(ctx, f1); err != nil {
		t.Fatal(err)
	}
	n := e.g.LastWrite(t)
	for e.g.LastWrite(t) < n+10 {
		time.Sleep(100 * time.Millisecond)
	}
	f2, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	ext, err := c.Changes(ctx, f2, "vda", f1.Disks[0].Checkpoint)
	if err != nil {
		c.Release(ctx, f2)
		t.Fatal(err)
	}
	b := copyFrozen(f2, "b.raw")
	if _, err := c.Release(ctx, f2); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, x := range ext {
		total += x.Length
	}
	const cl = 64 << 10
	var differ int
	for off := 0; off < len(a); off += cl {
		if bytes.Equal(a[off:off+cl], b[off:off+cl]) {
			continue
		}
		differ++
		in := false
		for _, x := range ext {
			if int64(off) >= x.Offset && int64(off+cl) <= x.Offset+x.Length {
				in = true
			}
		}
		if !in {
			t.Errorf("cluster at %d changed between the freezes but is not in the reported areas %v", off, ext)
		}
	}
	if differ == 0 || total == 0 || total > int64(len(a))/4 {
		t.Fatalf("%d clusters differ; %d bytes reported changed of %d", differ, total, len(a))
	}
	t.Logf("%d clusters (64 KiB) differ between the freezes; Changes reported %d areas, %d KiB", differ, len(ext), total>>10)
	// Release pruned the older checkpoint: there is nothing to compare with.
	if _, err := c.Changes(ctx, f2, "vda", f1.Disks[0].Checkpoint); !errors.Is(err, connector.ErrNoTracking) {
		t.Fatalf("changes since a pruned checkpoint: %v", err)
	}
}

func TestShutOffInPlace(t *testing.T) {
	e := setup(t)
	c := dial(t, e)
	vm := vmByName(t, c, "off1")
	f, err := c.Freeze(context.Background(), vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	if !f.InPlace || f.ID != "" || len(f.Disks) != 1 || f.Disks[0].Top() != (connector.Layer{Path: e.off.Disk, Format: "qcow2"}) {
		t.Fatalf("freeze of a shut-off VM = %+v", f)
	}
	readPlanted(t, e, f.Disks[0], -1)
	if _, err := c.Release(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, e, e.off); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestFaults(t *testing.T) {
	e := setup(t)
	ctx := context.Background()

	t.Run("unreachable", func(t *testing.T) {
		_, err := libvirt.Dial(ctx, libvirt.Config{Socket: filepath.Join(e.d.Dir, "no-such-socket"), Timeout: time.Second})
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.Kind != connector.Unreachable || connector.IsPermanent(err) {
			t.Fatalf("err = %v, want a transient unreachable error", err)
		}
	})
	t.Run("read-only socket", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		c, err := libvirt.Dial(ctx, libvirt.Config{Socket: e.d.ROSocket})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		vm := vmByName(t, c, "guest1") // listing works read-only
		_, err = c.Freeze(ctx, vm.ID, connector.Options{})
		if !errors.Is(err, connector.ErrAuth) || !connector.IsPermanent(err) || !strings.Contains(err.Error(), `"guest1"`) {
			t.Fatalf("err = %v, want a permanent authorization error naming the VM", err)
		}
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	c := dial(t, e)
	t.Run("no such VM", func(t *testing.T) {
		_, err := c.Freeze(ctx, "no-such-vm", connector.Options{})
		if !errors.Is(err, connector.ErrNotFound) || !connector.IsPermanent(err) || !strings.Contains(err.Error(), "no-such-vm") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("frozen twice", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		vm := vmByName(t, c, "guest1")
		f, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release(ctx, f)
		_, err = c.Freeze(ctx, vm.ID, connector.Options{})
		if !errors.Is(err, connector.ErrRefused) || connector.IsPermanent(err) {
			t.Fatalf("second freeze: %v, want a transient refusal", err)
		}
	})
	t.Run("shareable disk", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		raw := attachDisk(t, e, "sdb", "raw", "<shareable/>")
		defer detachDisk(t, e, raw)
		vm := vmByName(t, c, "guest1")
		_, err := c.Freeze(ctx, vm.ID, connector.Options{})
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.Kind != connector.Refused || ce.Disk != "sdb" || !ce.Permanent() || !strings.Contains(ce.Reason, "shareable") {
			t.Fatalf("err = %v, want a permanent refusal naming disk sdb", err)
		}
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	t.Run("raw disk tracks no changes", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		raw := attachDisk(t, e, "sdc", "raw", "")
		defer detachDisk(t, e, raw)
		vm := vmByName(t, c, "guest1")
		f, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := c.Release(ctx, f); err != nil {
				t.Fatal(err)
			}
		}()
		var rawDisk connector.FrozenDisk
		for _, fd := range f.Disks {
			if fd.Disk.Key == "sdc" {
				rawDisk = fd
			}
		}
		if rawDisk.Top() != (connector.Layer{Path: raw, Format: "raw"}) || rawDisk.Checkpoint != "" || rawDisk.Disk.ChangeTracking {
			t.Fatalf("raw disk frozen as %+v", rawDisk)
		}
		if _, err := c.Changes(ctx, f, "sdc", f.ID); !errors.Is(err, connector.ErrNoTracking) || !strings.Contains(err.Error(), "sdc") {
			t.Fatalf("changes of a raw disk: %v", err)
		}
	})
	t.Run("snapshot removed behind our back", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		vm := vmByName(t, c, "guest1")
		f, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		dom, _ := e.l.DomainLookupByName("guest1")
		snap, err := e.l.DomainSnapshotLookupByName(dom, f.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.l.DomainSnapshotDelete(snap, 0); err != nil { // an administrator's virsh snapshot-delete
			t.Fatal(err)
		}
		if _, err := c.Release(ctx, f); err != nil {
			t.Fatalf("release of a freeze someone else released: %v", err)
		}
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	t.Run("snapshot metadata removed behind our back", func(t *testing.T) {
		e.mu.Lock()
		defer e.mu.Unlock()
		vm := vmByName(t, c, "guest1")
		f, err := c.Freeze(ctx, vm.ID, connector.Options{})
		if err != nil {
			t.Fatal(err)
		}
		dom, _ := e.l.DomainLookupByName("guest1")
		snap, err := e.l.DomainSnapshotLookupByName(dom, f.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.l.DomainSnapshotDelete(snap, golibvirt.DomainSnapshotDeleteMetadataOnly); err != nil {
			t.Fatal(err)
		}
		_, err = c.Release(ctx, f)
		var ce *connector.Error
		if !errors.As(err, &ce) || ce.Kind != connector.Refused || ce.Disk != "vda" || !strings.Contains(ce.Reason, "blockcommit") {
			t.Fatalf("release with the metadata gone: %v, want a refusal that says what to do", err)
		}
		stale, err := c.Stale(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(stale) != 1 || stale[0].ID != f.ID || !stale[0].Taken.IsZero() {
			t.Fatalf("stale = %+v, want the orphan overlay of %s", stale, f.ID)
		}
		// Do by hand what the error says.
		commitByHand(t, e, "guest1", "vda")
		for _, p := range leftovers(t, e, e.g) {
			os.Remove(p)
		}
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
}

func attachDisk(t *testing.T, e *testEnv, dev, format, extra string) string {
	t.Helper()
	path := filepath.Join(e.g.Dir, dev+".img")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", format, path, "8M").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	dom, _ := e.l.DomainLookupByName("guest1")
	xml := fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='%s' bus='scsi'/>%s</disk>`, format, path, dev, extra)
	if err := e.l.DomainAttachDeviceFlags(dom, xml, uint32(golibvirt.DomainAffectLive)); err != nil {
		t.Fatal(err)
	}
	return path
}

func detachDisk(t *testing.T, e *testEnv, path string) {
	t.Helper()
	dom, _ := e.l.DomainLookupByName("guest1")
	doc, _ := e.l.DomainGetXMLDesc(dom, 0)
	var x libvirtxml.Domain
	x.Unmarshal(doc)
	for _, d := range x.Devices.Disks {
		if d.Source != nil && d.Source.File != nil && d.Source.File.File == path {
			b, _ := d.Marshal()
			if err := e.l.DomainDetachDeviceFlags(dom, b, uint32(golibvirt.DomainAffectLive)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// virtio hot-unplug needs the guest's cooperation; wait until it is gone.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		doc, _ := e.l.DomainGetXMLDesc(dom, 0)
		if !strings.Contains(doc, path) {
			os.Remove(path)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("disk %s not detached", path)
}

// commitByHand does what virsh blockcommit --active --pivot --shallow does.
func commitByHand(t *testing.T, e *testEnv, name, disk string) {
	t.Helper()
	dom, _ := e.l.DomainLookupByName(name)
	if err := e.l.DomainBlockCommit(dom, disk, nil, nil, 0, golibvirt.DomainBlockCommitActive|golibvirt.DomainBlockCommitShallow); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		found, _, _, cur, end, err := e.l.DomainGetBlockJobInfo(dom, disk, 0)
		if err != nil {
			t.Fatal(err)
		}
		if found == 1 && cur == end && end > 0 {
			if err := e.l.DomainBlockJobAbort(dom, disk, golibvirt.DomainBlockJobAbortPivot); err == nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("block commit did not finish")
}

func TestConformance(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	guests := map[string]*libvirttest.Guest{"guest1": e.g, "off1": e.off}
	connectortest.Suite{
		Connector: dial(t, e),
		Running:   "guest1",
		Off:       "off1",
		Formats:   []string{"qcow2", "raw"},
		Leftovers: func(t *testing.T, vm string) []string { return leftovers(t, e, guests[vm]) },
	}.Run(t)
}

// TestScanReleases: connector.Scan releases the freeze when the scan
// fails, when its context is cancelled mid-scan, and when it panics.
func TestScanReleases(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(t, e)
	vm := vmByName(t, c, "guest1")
	chain := fmt.Sprint(chainOf(t, e, "guest1"))
	check := func(what string) {
		t.Helper()
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("%s: left behind %v", what, left)
		}
		if ch := fmt.Sprint(chainOf(t, e, "guest1")); ch != chain {
			t.Fatalf("%s: chain %s, before %s", what, ch, chain)
		}
	}
	boom := errors.New("scanner failed")
	rep, err := connector.Scan(context.Background(), c, vm.ID, connector.Options{}, nil, func(ctx context.Context, f *connector.Freeze) error {
		return boom
	})
	if !errors.Is(err, boom) || rep.Freeze == nil || rep.Released.Duration == 0 {
		t.Fatalf("failed scan: %v %+v", err, rep)
	}
	check("failed scan")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = connector.Scan(ctx, c, vm.ID, connector.Options{}, nil, func(ctx context.Context, f *connector.Freeze) error {
		<-ctx.Done() // a scan that runs past its deadline
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timed-out scan: %v", err)
	}
	check("timed-out scan")
	func() {
		defer func() {
			if p := recover(); p != "reader panicked" {
				t.Fatalf("recovered %v", p)
			}
		}()
		connector.Scan(context.Background(), c, vm.ID, connector.Options{}, nil, func(ctx context.Context, f *connector.Freeze) error {
			panic("reader panicked")
		})
	}()
	check("panicking scan")
}
