package connector

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// Selection says which VMs of an endpoint are scanned: all of them, or
// those in one of Folders (a folder and everything below it), carrying
// one of Tags, or whose name matches one of Names (path.Match globs);
// never those whose name matches one of Exclude.
type Selection struct {
	All     bool     `yaml:"all" json:"all,omitempty"`
	Folders []string `yaml:"folders" json:"folders,omitempty"`
	Tags    []string `yaml:"tags" json:"tags,omitempty"`
	Names   []string `yaml:"names" json:"names,omitempty"`
	Exclude []string `yaml:"exclude" json:"exclude,omitempty"`
}

// Validate checks the globs.
func (s Selection) Validate() error {
	for _, g := range append(slices.Clone(s.Names), s.Exclude...) {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("connector: bad name pattern %q: %w", g, err)
		}
	}
	if !s.All && len(s.Folders)+len(s.Tags)+len(s.Names) == 0 {
		return errors.New("connector: the selection names no VM (set all: true, or folders, tags or names)")
	}
	return nil
}

// Match reports whether vm is selected.
func (s Selection) Match(vm VM) bool {
	for _, g := range s.Exclude {
		if ok, _ := path.Match(g, vm.Name); ok {
			return false
		}
	}
	if s.All {
		return true
	}
	return matches(vm, s.Folders, s.Tags, s.Names)
}

func matches(vm VM, folders, tags, names []string) bool {
	for _, f := range folders {
		f = strings.TrimSuffix(f, "/")
		if vm.Folder == f || strings.HasPrefix(vm.Folder, f+"/") {
			return true
		}
	}
	for _, t := range tags {
		if slices.Contains(vm.Tags, t) {
			return true
		}
	}
	for _, g := range names {
		if ok, _ := path.Match(g, vm.Name); ok {
			return true
		}
	}
	return false
}

// Group is a set of VMs of which no two may be frozen at the same time:
// the nodes of one HA cluster, whose fencing a stun at the wrong moment
// would trigger. Members are picked like a Selection.
type Group struct {
	Name    string   `yaml:"name" json:"name"`
	Folders []string `yaml:"folders" json:"folders,omitempty"`
	Tags    []string `yaml:"tags" json:"tags,omitempty"`
	Names   []string `yaml:"names" json:"names,omitempty"`
}

// Has reports whether vm is a member.
func (g Group) Has(vm VM) bool { return matches(vm, g.Folders, g.Tags, g.Names) }

// Window is a daily span of local time in which freezes may start,
// written "22:00-06:00" (it may run past midnight).
type Window struct{ From, To time.Duration }

// ParseWindow reads "HH:MM-HH:MM".
func ParseWindow(s string) (Window, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Window{}, fmt.Errorf("connector: window %q: want HH:MM-HH:MM", s)
	}
	from, err1 := clock(a)
	to, err2 := clock(b)
	if err := errors.Join(err1, err2); err != nil {
		return Window{}, fmt.Errorf("connector: window %q: %w", s, err)
	}
	return Window{from, to}, nil
}

func clock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, err
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// Contains reports whether t's time of day lies in the window.
func (w Window) Contains(t time.Time) bool {
	d := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second
	if w.From <= w.To {
		return d >= w.From && d < w.To
	}
	return d >= w.From || d < w.To
}

// Next returns t when t lies in the window, and otherwise the window's
// next start after t (in t's location).
func (w Window) Next(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	y, m, d := t.Date()
	start := time.Date(y, m, d, 0, 0, 0, 0, t.Location()).Add(w.From)
	if !start.After(t) {
		start = time.Date(y, m, d+1, 0, 0, 0, 0, t.Location()).Add(w.From)
	}
	return start
}

// Gate decides when a VM may be frozen: inside one of the windows (any
// time when there are none) and while no other member of any of its
// groups is frozen. It is safe for concurrent use.
type Gate struct {
	groups  []Group
	windows []Window
	now     func() time.Time

	mu     sync.Mutex
	held   map[string]string // group name -> VM ID frozen
	change chan struct{}     // closed and replaced when a hold is released
}

// NewGate makes a gate; now is the clock (time.Now when nil).
func NewGate(groups []Group, windows []Window, now func() time.Time) (*Gate, error) {
	seen := map[string]bool{}
	for _, g := range groups {
		if g.Name == "" || seen[g.Name] {
			return nil, fmt.Errorf("connector: group names must be given and unique (%q)", g.Name)
		}
		seen[g.Name] = true
	}
	if now == nil {
		now = time.Now
	}
	return &Gate{groups: groups, windows: windows, now: now, held: map[string]string{}, change: make(chan struct{})}, nil
}

// Opens returns when a freeze may next start as far as the windows say:
// now when inside one (or when there are none), else the earliest next
// start of a window.
func (g *Gate) Opens() time.Time {
	now := g.now()
	if len(g.windows) == 0 {
		return now
	}
	var first time.Time
	for _, w := range g.windows {
		if n := w.Next(now); first.IsZero() || n.Before(first) {
			first = n
		}
	}
	return first
}

// ErrOutsideWindow is returned by TryAcquire outside every window.
var ErrOutsideWindow = errors.New("connector: outside the freeze windows")

// ErrGroupBusy is wrapped by TryAcquire when another member of a group
// is frozen.
var ErrGroupBusy = errors.New("connector: another member of the VM's group is frozen")

// TryAcquire takes the VM's groups if it may be frozen now; release gives
// them back (once; later calls do nothing).
func (g *Gate) TryAcquire(vm VM) (release func(), err error) {
	if len(g.windows) > 0 && !slices.ContainsFunc(g.windows, func(w Window) bool { return w.Contains(g.now()) }) {
		return nil, ErrOutsideWindow
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var mine []string
	for _, gr := range g.groups {
		if !gr.Has(vm) {
			continue
		}
		if other, ok := g.held[gr.Name]; ok && other != vm.ID {
			return nil, fmt.Errorf("%w: group %s has VM %s frozen", ErrGroupBusy, gr.Name, other)
		}
		mine = append(mine, gr.Name)
	}
	for _, n := range mine {
		g.held[n] = vm.ID
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			for _, n := range mine {
				delete(g.held, n)
			}
			close(g.change)
			g.change = make(chan struct{})
			g.mu.Unlock()
		})
	}, nil
}

// Acquire waits until TryAcquire succeeds or ctx ends, checking again
// when a hold is released and every poll (a window opening).
func (g *Gate) Acquire(ctx context.Context, vm VM, poll time.Duration) (func(), error) {
	if poll <= 0 {
		poll = time.Minute
	}
	for {
		g.mu.Lock()
		change := g.change
		g.mu.Unlock()
		release, err := g.TryAcquire(vm)
		if err == nil {
			return release, nil
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("freeze of VM %q: %w (%v)", vm.Name, ctx.Err(), err)
		case <-change:
		case <-t.C:
		}
		t.Stop()
	}
}
