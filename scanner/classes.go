package scanner

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/hillu/go-yara/v4"

	"github.com/snapscan/snapscan/scanner/gate"
)

// Limits of the pruned sets one rule set keeps (see classes): each costs
// its compilation once and its compiled rules in memory (signature-base:
// under a second and about 17 MB, against 34 MB for the whole set).
const (
	maxClasses = 64 // classes told apart; files of others get the whole set
	maxSubsets = 12 // distinct pruned sets compiled
	// minCut is the share of rules, as a divisor, a pruned set must cut
	// to be worth its memory: 1/8.
	minCut = 8
)

// classes runs each file under the rules that can match it: a rule set's
// sources pruned, by package gate, of the rules whose conditions are
// false for the file's class (its size bucket and its header tests).
// libyara searches a file for every string of every rule and evaluates
// every condition whatever the file, so a 100 MB ELF library is scanned
// by signature-base in twice the time its 2,000 rules that can match such
// a file take. Verdicts are the whole set's: a pruned set only lacks
// rules that cannot match, which compile checks.
//
// Pruned sets are compiled on first use, one per distinct set of cut
// rules (classes that cut the same rules share it), kept in the compiled
// rules cache when there is one.
type classes struct {
	set   *gate.Set
	names []string // the sources' namespaces
	whole *yara.Rules
	dir   string

	mu      sync.Mutex
	byClass map[gate.Class]*subset
	byCut   map[[32]byte]*subset
}

type subset struct {
	once sync.Once
	p    gate.Pruned
	y    *yara.Rules // nil: the whole set serves
}

// newClasses returns the classes of the set y compiled from srcs, or nil
// when pruning cannot help: too few rules can be cut, or a source uses
// include (its pruned text would be compiled without its folder).
func newClasses(y *yara.Rules, dir string, srcs []Source) *classes {
	if slices.ContainsFunc(srcs, func(s Source) bool { return includeRef.Match(s.Data) }) {
		return nil
	}
	data := make([][]byte, len(srcs))
	names := make([]string, len(srcs))
	for i, s := range srcs {
		data[i], names[i] = s.Data, s.Name
	}
	set := gate.Parse(data)
	if set.Rules() < minCut {
		return nil
	}
	return &classes{set: set, names: names, whole: y, dir: dir,
		byClass: map[gate.Class]*subset{}, byCut: map[[32]byte]*subset{}}
}

// forFile returns the rules to scan data with; log hears of a pruned set
// that could not be used (a defect of package gate: the whole set serves
// its files, which costs time only).
func (c *classes) forFile(data []byte, log *slog.Logger) *yara.Rules {
	class := c.set.Classify(int64(len(data)), data[:min(len(data), c.set.HeadLen())])
	c.mu.Lock()
	s := c.byClass[class]
	if s == nil {
		s = c.add(class)
	}
	c.mu.Unlock()
	if s == nil {
		return c.whole
	}
	s.once.Do(func() {
		if err := c.compile(s); err != nil {
			log.Warn("scanner: a pruned rule set is not used; the whole set scans its files", "err", err)
		}
	})
	if s.y == nil {
		return c.whole
	}
	return s.y
}

// add makes class's entry; c.mu is held. nil: the whole set serves.
func (c *classes) add(class gate.Class) *subset {
	if len(c.byClass) >= maxClasses {
		return nil
	}
	p := c.set.Prune(class)
	var s *subset
	if p.N >= c.set.Rules()/minCut {
		h := sha256.New()
		for i, cut := range p.Cut {
			fmt.Fprintf(h, "%d\x00%d\x00", i, len(cut))
			for _, name := range cut {
				fmt.Fprintf(h, "%s\x00", name)
			}
		}
		key := [32]byte(h.Sum(nil))
		if s = c.byCut[key]; s == nil && len(c.byCut) < maxSubsets {
			s = &subset{p: p}
			c.byCut[key] = s
		}
	}
	if s == nil {
		s = &subset{} // the whole set, remembered
		s.once.Do(func() {})
	}
	c.byClass[class] = s
	return s
}

// compile compiles s's pruned sources, and keeps them only if the rules
// compiled are exactly the whole set's less the cut ones, in order.
func (c *classes) compile(s *subset) error {
	p := s.p
	s.p = gate.Pruned{}
	srcs := make([]Source, len(p.Sources))
	cut := map[string]bool{}
	for i, data := range p.Sources {
		srcs[i] = Source{Name: c.names[i], Data: data}
		for _, name := range p.Cut[i] {
			cut[c.names[i]+"\x00"+name] = true
		}
	}
	r, err := compileSet(c.dir, srcs, nil)
	if err == nil {
		err = sameRules(c.whole, r.y, cut)
	}
	if err != nil {
		return err
	}
	s.y = r.y
	return nil
}

// sameRules checks that pruned holds whole's rules but the cut ones, in
// whole's order.
func sameRules(whole, pruned *yara.Rules, cut map[string]bool) error {
	var want []string
	for _, r := range whole.GetRules() {
		if id := r.Namespace() + "\x00" + r.Identifier(); !cut[id] {
			want = append(want, id)
		}
	}
	got := pruned.GetRules()
	if len(got) != len(want) {
		return fmt.Errorf("pruned rules: %d compiled, want %d", len(got), len(want))
	}
	for i, r := range got {
		if id := r.Namespace() + "\x00" + r.Identifier(); id != want[i] {
			return fmt.Errorf("pruned rules: rule %d is %q, want %q", i, id, want[i])
		}
	}
	return nil
}
