// Package incrementaltest is the conformance suite of incremental.Store:
// MemoryStore, DirStore and the appliance's results stores (SQLite,
// PostgreSQL) run it, so that a Plan can rely on the contract whatever
// keeps its records (restic's internal/backend/test is the model).
//
//	func TestStore(t *testing.T) {
//		incrementaltest.Suite{New: func(t *testing.T, keep int) incremental.Store { ... }}.Run(t)
//	}
package incrementaltest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
)

// Suite runs the conformance tests against stores New makes.
type Suite struct {
	// New returns a new, empty store that keeps at most keep records of
	// one rule set (the oldest written dropped first).
	New func(t *testing.T, keep int) incremental.Store
	// Reopen, when set, returns a store over what s keeps, as another
	// process (a restarted appliance, another appliance of the fleet)
	// sees it: what the suite reads after Reopen was read from where the
	// records are kept, not from a cache in front of it.
	Reopen func(t *testing.T, s incremental.Store) incremental.Store
	// Garble, when set, replaces the kept bytes of the one record s holds
	// with mangle's result. A store that keeps records decoded in memory
	// cannot be garbled, and leaves it nil.
	Garble func(t *testing.T, s incremental.Store, mangle func([]byte) []byte)
}

// Run runs every test of the suite as a subtest of t.
func (s Suite) Run(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"GetPut", s.testGetPut},
		{"Overwrite", s.testOverwrite},
		{"Recorded", s.testRecorded},
		{"Tracked", s.testTracked},
		{"Trim", s.testTrim},
		{"Large", s.testLarge},
		{"Concurrent", s.testConcurrent},
		{"Garbled", s.testGarbled},
	} {
		t.Run(tc.name, tc.f)
	}
}

func (s Suite) reopen(t *testing.T, st incremental.Store) incremental.Store {
	if s.Reopen == nil {
		return st
	}
	return s.Reopen(t, st)
}

var at = time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)

// digest is a distinct, reproducible 32-byte value.
func digest(parts ...any) [32]byte { return sha256.Sum256([]byte(fmt.Sprintln(parts...))) }

// Sample is a record of identity under rules with files files on its
// first volume: clean files and files with matches (tags, meta of each
// kind, strings), contexts shared and not, an empty second volume.
func Sample(identity, rules string, files int) *incremental.Record {
	shared := digest("context")
	v := &incremental.VolumeRecord{ID: "p1", FileSystem: "ext4", Offset: 1 << 20, Size: 48 << 20, Layout: "ext4 bs=4096 inline_data",
		Files: map[incremental.FileKey]incremental.File{}}
	for i := range files {
		c := shared
		if i%7 == 3 { // a path-sensitive rule's context
			c = digest("path", i)
		}
		f := incremental.File{Outcome: scanner.Outcome{Size: int64(i) * 4099, Content: digest(identity, "content", i), Context: c},
			Meta: digest("meta", i)}
		if i%50 == 1 {
			f.SHA256 = digest("sha", i)
			f.Matches = []scanner.Match{{Rule: "evil_" + fmt.Sprint(i), Namespace: "default", Tags: []string{"t1", "tag two"},
				Meta:           []scanner.MetaEntry{{Key: "score", Value: int64(-75)}, {Key: "author", Value: "ünï\x00code"}, {Key: "enabled", Value: true}},
				Strings:        []scanner.StringMatch{{Identifier: "$a", Offset: 1 << 40, Data: `SNAPSCAN\x00`, Truncated: true}, {Identifier: "$b", Offset: 0}},
				StringsDropped: 3}, {Rule: "bare"}}
		}
		v.Files[incremental.FileKey{Where: digest("where", i), Context: c}] = f
	}
	return &incremental.Record{Identity: identity, Rules: rules, Path: "/datastores/ds1/golden.qcow2", Time: at,
		Volumes: []*incremental.VolumeRecord{v, {ID: "p2", FileSystem: "vfat", Offset: 50 << 20, Size: 8 << 20, Files: map[incremental.FileKey]incremental.File{}}}}
}

// same reports how got differs from want, "" when it does not: times are
// compared as instants, everything else exactly.
func same(got, want *incremental.Record) string {
	if got == nil {
		return "no record"
	}
	if !got.Time.Equal(want.Time) {
		return fmt.Sprintf("time %v, want %v", got.Time, want.Time)
	}
	g, w := *got, *want
	g.Time, w.Time = time.Time{}, time.Time{}
	if !reflect.DeepEqual(g.Volumes, w.Volumes) {
		for i := range min(len(g.Volumes), len(w.Volumes)) {
			for k, f := range w.Volumes[i].Files {
				if gf, ok := g.Volumes[i].Files[k]; !reflect.DeepEqual(gf, f) {
					return fmt.Sprintf("volume %s: file %x: got %+v (present %v), want %+v", w.Volumes[i].ID, k.Where[:4], gf, ok, f)
				}
			}
		}
		return fmt.Sprintf("volumes differ: %d files, want %d", got.Files(), want.Files())
	}
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("got %+v, want %+v", g, w)
	}
	return ""
}

func mustGet(t *testing.T, st incremental.Store, identity, rules string) *incremental.Record {
	t.Helper()
	r, err := st.Get(context.Background(), identity, rules)
	if err != nil {
		t.Fatalf("get %s/%s: %v", identity, rules, err)
	}
	return r
}

func mustPut(t *testing.T, st incremental.Store, r *incremental.Record) {
	t.Helper()
	if err := st.Put(context.Background(), r); err != nil {
		t.Fatalf("put %s/%s: %v", r.Identity, r.Rules, err)
	}
}

// A record comes back as put (from where it is kept), only under its
// identity and rules.
func (s Suite) testGetPut(t *testing.T) {
	st := s.New(t, 10)
	if r := mustGet(t, st, "id-a", "rules-1"); r != nil {
		t.Fatalf("empty store: %+v", r)
	}
	want := Sample("id-a", "rules-1", 200)
	mustPut(t, st, Sample("id-a", "rules-1", 200))
	st = s.reopen(t, st)
	if d := same(mustGet(t, st, "id-a", "rules-1"), want); d != "" {
		t.Fatal(d)
	}
	for _, k := range [][2]string{{"id-a", "rules-2"}, {"id-b", "rules-1"}, {"id-", "arules-1"}, {"", ""}} {
		if r := mustGet(t, st, k[0], k[1]); r != nil {
			t.Errorf("record found under identity %q rules %q", k[0], k[1])
		}
	}
}

// A second Put of the same identity and rules replaces the first.
func (s Suite) testOverwrite(t *testing.T) {
	st := s.New(t, 10)
	mustPut(t, st, Sample("id-a", "rules-1", 30))
	mustPut(t, st, Sample("id-a", "rules-2", 5))
	second := Sample("id-a", "rules-1", 12)
	second.Time = at.Add(time.Hour)
	mustPut(t, st, second)
	st = s.reopen(t, st)
	if d := same(mustGet(t, st, "id-a", "rules-1"), second); d != "" {
		t.Fatalf("after an overwrite: %s", d)
	}
	if d := same(mustGet(t, st, "id-a", "rules-2"), Sample("id-a", "rules-2", 5)); d != "" {
		t.Fatalf("the record under other rules: %s", d)
	}
}

// Recorded tells the identity a path was last recorded under, per rule
// set, whatever identity is asked for later (a base that changed).
func (s Suite) testRecorded(t *testing.T) {
	st := s.New(t, 10)
	ctx := context.Background()
	path := "/datastores/ds1/golden.qcow2"
	if id, when, err := st.Recorded(ctx, path, "rules-1"); id != "" || !when.IsZero() || err != nil {
		t.Fatalf("empty store: %q %v %v", id, when, err)
	}
	mustPut(t, st, Sample("id-old", "rules-1", 3))
	newer := Sample("id-new", "rules-1", 3)
	newer.Time = at.Add(24 * time.Hour)
	mustPut(t, st, newer)
	other := Sample("id-other", "rules-2", 3)
	mustPut(t, st, other)
	unnamed := Sample("id-unnamed", "rules-1", 3)
	unnamed.Path = ""
	mustPut(t, st, unnamed)
	st = s.reopen(t, st)
	if id, when, err := st.Recorded(ctx, path, "rules-1"); id != "id-new" || !when.Equal(newer.Time) || err != nil {
		t.Errorf("recorded under rules-1: %q %v %v, want id-new at %v", id, when, err, newer.Time)
	}
	if id, _, err := st.Recorded(ctx, path, "rules-2"); id != "id-other" || err != nil {
		t.Errorf("recorded under rules-2: %q %v, want id-other", id, err)
	}
	if id, _, err := st.Recorded(ctx, path+".other", "rules-1"); id != "" || err != nil {
		t.Errorf("another path: %q %v", id, err)
	}
	// The old identity's record is still there (a snapshot chain's older
	// top is someone's base).
	if r := mustGet(t, st, "id-old", "rules-1"); r == nil {
		t.Error("the record of the path's previous identity is gone")
	}
}

// The records of a VM disk scanned through changed-block tracking
// (Session.PlanChanged) keep their checkpoint and disk size, and the last
// one is found by the VM disk's TrackedPath: Session.Checkpoint says
// which checkpoint the next scan counts changes from.
func (s Suite) testTracked(t *testing.T) {
	st := s.New(t, 10)
	ctx := context.Background()
	disk := "lab/4f1c9a/vda"
	var recs []*incremental.Record
	for i, cp := range []string{"snapscan-20261201T100000Z-1", "52 de c0 d9 98 a8 5b 2c-4a 8a 8a 7f 0a 8b 2e 3a/12"} {
		r := Sample(fmt.Sprintf("cbt-%d", i), "rules-1", 20)
		r.Path, r.Checkpoint, r.DiskSize, r.Time = incremental.TrackedPath(disk), cp, 64<<30+int64(i), at.Add(time.Duration(i)*time.Hour)
		mustPut(t, st, r)
		recs = append(recs, r)
	}
	st = s.reopen(t, st)
	for _, want := range recs {
		if d := same(mustGet(t, st, want.Identity, "rules-1"), want); d != "" {
			t.Errorf("tracked record %s: %s", want.Identity, d)
		}
	}
	if id, _, err := st.Recorded(ctx, incremental.TrackedPath(disk), "rules-1"); id != "cbt-1" || err != nil {
		t.Errorf("recorded for the VM disk: %q %v, want cbt-1", id, err)
	}
	cp, err := incremental.NewSession(st, "rules-1", nil).Checkpoint(ctx, disk)
	if err != nil || cp != recs[1].Checkpoint {
		t.Errorf("Session.Checkpoint = %q, %v; want %q", cp, err, recs[1].Checkpoint)
	}
	if cp, err := incremental.NewSession(st, "rules-1", nil).Checkpoint(ctx, "lab/4f1c9a/vdb"); cp != "" || err != nil {
		t.Errorf("another disk's checkpoint: %q %v", cp, err)
	}
}

// At most keep records of a rule set are kept, the oldest written going
// first; another rule set's records do not push them out before their
// time, nor do they count against its bound.
func (s Suite) testTrim(t *testing.T) {
	const keep = 3
	st := s.New(t, keep)
	mustPut(t, st, Sample("other-rules", "rules-2", 2))
	for i := range 5 {
		time.Sleep(15 * time.Millisecond) // distinct write times, even for a file's modification time
		mustPut(t, st, Sample(fmt.Sprintf("id-%d", i), "rules-1", 2))
	}
	st = s.reopen(t, st)
	for i := range 5 {
		r := mustGet(t, st, fmt.Sprintf("id-%d", i), "rules-1")
		if kept := i >= 5-keep; kept != (r != nil) {
			t.Errorf("record %d of 5 (keep %d): kept %v", i, keep, r != nil)
		}
	}
}

// A record of a large disk (20,000 files) comes back whole.
func (s Suite) testLarge(t *testing.T) {
	st := s.New(t, 2)
	want := Sample("id-large", "rules-1", 20000)
	mustPut(t, st, want)
	st = s.reopen(t, st)
	if d := same(mustGet(t, st, "id-large", "rules-1"), want); d != "" {
		t.Fatal(d)
	}
}

// Puts and Gets from many goroutines: every record put is found whole,
// and concurrent overwrites of one record leave one of them whole.
func (s Suite) testConcurrent(t *testing.T) {
	st := s.New(t, 100)
	const workers, each = 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*3)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				r := Sample(fmt.Sprintf("id-%d-%d", w, i), "rules-1", 40)
				if err := st.Put(context.Background(), r); err != nil {
					errs <- err
					return
				}
				shared := Sample("id-shared", "rules-1", 20+w)
				if err := st.Put(context.Background(), shared); err != nil {
					errs <- err
					return
				}
				got, err := st.Get(context.Background(), r.Identity, r.Rules)
				if err == nil {
					if d := same(got, r); d != "" {
						err = fmt.Errorf("%s: %s", r.Identity, d)
					}
				}
				if err != nil {
					errs <- err
					return
				}
				if _, err := st.Get(context.Background(), "id-shared", "rules-1"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st = s.reopen(t, st)
	for w := range workers {
		for i := range each {
			if r := mustGet(t, st, fmt.Sprintf("id-%d-%d", w, i), "rules-1"); r == nil || r.Files() != 40 {
				t.Errorf("record %d-%d lost: %v", w, i, r != nil)
			}
		}
	}
	r := mustGet(t, st, "id-shared", "rules-1")
	if r == nil || r.Files() < 20 || r.Files() >= 20+workers || same(r, Sample("id-shared", "rules-1", r.Files())) != "" {
		t.Errorf("the record every worker overwrote is not one of theirs: %v", r)
	}
}

// A damaged record is an error that names it and wraps
// incremental.ErrCorrupt, never a panic, a hang, or a record.
func (s Suite) testGarbled(t *testing.T) {
	if s.Garble == nil {
		t.Log("the store keeps records decoded: nothing to garble")
		return
	}
	for _, m := range []struct {
		name   string
		mangle func([]byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"header only", func(b []byte) []byte { return b[:16] }},
		{"empty", func([]byte) []byte { return []byte{} }},
		{"flipped", func(b []byte) []byte { b[len(b)*2/3] ^= 0x55; return b }},
		{"foreign", func([]byte) []byte { return []byte("\x0f\xff\x81\x03\x01\x01\x06Record\x01\xff\x82\x00\x01\x05") }}, // a gob stream
		{"huge count", func(b []byte) []byte { return append(b[:16], 0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff) }},
	} {
		t.Run(m.name, func(t *testing.T) {
			st := s.New(t, 10)
			mustPut(t, st, Sample("id-garbled", "rules-1", 50))
			s.Garble(t, st, m.mangle)
			st = s.reopen(t, st)
			r, err := st.Get(context.Background(), "id-garbled", "rules-1")
			if err == nil {
				t.Fatalf("a %s record read back without an error: %v", m.name, r)
			}
			if !errors.Is(err, incremental.ErrCorrupt) || !strings.Contains(err.Error(), "id-garbled") {
				t.Errorf("error %q: want one that wraps incremental.ErrCorrupt and names the record's identity", err)
			}
			if r != nil {
				t.Errorf("a record came with the error: %v", r)
			}
			t.Log(err)
		})
	}
}
