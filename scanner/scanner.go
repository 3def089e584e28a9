package scanner

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hillu/go-yara/v4"
	"golang.org/x/sync/errgroup"
	"lukechampine.com/blake3"

	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Defaults of Options.
const (
	// DefaultSpoolAbove is the memory window: files up to this size are
	// read whole into memory and scanned there; larger ones are copied to
	// a spool file and scanned from it (see the package doc). It holds the
	// largest shared libraries and statically linked programs of common
	// guests (50-200 MiB) in memory.
	DefaultSpoolAbove = 256 << 20
	// DefaultTimeout is YARA's per-file timeout.
	DefaultTimeout = 60 * time.Second
)

// scanFlagNoTryCatch is libyara 4.2's SCAN_FLAGS_NO_TRYCATCH (go-yara
// names it only from 4.3). Without it libyara installs process-wide
// SIGSEGV/SIGBUS handlers around every scan, to survive a memory-mapped
// file that shrinks; snapscan only scans its own memory and its own spool
// files (unlinked at once, never truncated), where no such fault can
// happen, and the handlers would race the Go runtime's own (installed
// without SA_ONSTACK, swapped in and out by concurrent scans).
const scanFlagNoTryCatch = 4

// Options tune a Scanner. The zero value is usable.
type Options struct {
	// Workers is the number of files scanned at once (default GOMAXPROCS),
	// shared by all volumes of a target.
	Workers int
	// MaxFileSize, when positive, is the size above which files are not
	// scanned at all: they are counted as too_large, and the scan is
	// incomplete. By default (0) every file is scanned whatever its size,
	// up to the spool budget (BudgetOptions.Spool), beyond which files are
	// too_large as well.
	MaxFileSize int64
	// SpoolAbove is the memory window: larger files are spooled (default
	// DefaultSpoolAbove; at most the budget's memory).
	SpoolAbove int64
	// Budget bounds scan memory and spool space, shared with every other
	// Scanner given the same Budget (see Budget for who makes it). When
	// nil, New makes one from MemoryBudget, SpoolDir and SpoolBudget,
	// which are otherwise ignored.
	Budget *Budget
	// MemoryBudget, SpoolDir and SpoolBudget size the Scanner's own
	// Budget when Budget is nil (see BudgetOptions).
	MemoryBudget int64
	SpoolDir     string
	SpoolBudget  int64
	// Exclude lists globs (gitignore-like, see Glob) matched against each
	// path inside its volume: matching files are counted as excluded,
	// matching folders as excluded_dir (their content is not listed).
	// Report.Excludes counts what each pattern matched.
	Exclude []Glob
	// Tags, when not empty, reports only the rules that have at least one
	// of these tags; SkipTags never reports a rule that has any of them
	// (it wins over Tags). Tags are case-sensitive, as in YARA. A file
	// whose matching rules are all filtered out is no finding; the
	// verdict cache keeps every match, so filters can differ between
	// Scanners sharing a cache.
	Tags, SkipTags []string
	// Timeout is YARA's timeout for one file or member, in whole seconds
	// (default DefaultTimeout). A context deadline that comes sooner
	// lowers it, never below one second (YARA's granularity).
	Timeout time.Duration
	// Archives bounds what archive expansion may cost.
	Archives ArchiveLimits
	// NoArchives disables looking inside archives.
	NoArchives bool
	// Cache, when set, keeps verdicts across files and scans. When nil, a
	// Scan keeps its own for its duration, so that identical files in one
	// scan are scanned once; only files whose size another listed file
	// shares are hashed for it. NoCache turns both off: every file is
	// scanned.
	Cache   Cache
	NoCache bool
	// OnFinding is called for each finding as it is made; OnProgress after
	// each listed file is done (the cost per call is a mutex and a struct
	// copy). Calls of both are serialized, made from the scan's
	// goroutines while it waits: they must return quickly.
	OnFinding  func(Finding)
	OnProgress func(Progress)
	// NoPrefilter runs every rule over every file. By default a file is
	// scanned only by the rules whose conditions its size and header
	// tests do not already make false (see package gate): the verdicts
	// are the same, the time less.
	NoPrefilter bool
	// Logger receives debug messages about unreadable files; nil discards.
	Logger *slog.Logger
}

// Scanner scans targets with one rule set. It is safe for concurrent use;
// concurrent Scans share its budget.
type Scanner struct {
	rules  *Rules
	opts   Options
	budget *Budget
	keep   int64 // what a worker's arena may keep resident between files
}

// New returns a Scanner. Options are completed with their defaults.
func New(rules *Rules, opts Options) *Scanner {
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Budget == nil {
		opts.Budget = NewBudget(BudgetOptions{Memory: opts.MemoryBudget, SpoolDir: opts.SpoolDir, Spool: opts.SpoolBudget})
	}
	b := opts.Budget.Options()
	opts.MemoryBudget, opts.SpoolDir, opts.SpoolBudget = b.Memory, b.SpoolDir, b.Spool
	if opts.MaxFileSize < 0 {
		opts.MaxFileSize = 0
	}
	if opts.SpoolAbove <= 0 {
		opts.SpoolAbove = DefaultSpoolAbove
	}
	opts.SpoolAbove = min(opts.SpoolAbove, b.Memory)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	opts.Archives = opts.Archives.withDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// Half the budget at most goes to kept pages, so that large files
	// still find room; whole pages only.
	keep := min(maxKeep, b.Memory/int64(2*opts.Workers)) &^ (1<<12 - 1)
	return &Scanner{rules: rules, opts: opts, budget: opts.Budget, keep: keep}
}

// ReuseKey is what outcomes recorded for Target.Reuse depend on besides
// a file's bytes and externals: the rules (Rules.ID) and whether archives
// are expanded. A Reuse whose Rules differs is not used.
func (s *Scanner) ReuseKey() string {
	if s.opts.NoArchives {
		return s.rules.id + "+no-archives"
	}
	return s.rules.id
}

// maxSize is the largest file that can be scanned at all.
func (s *Scanner) maxSize() int64 {
	if s.opts.MaxFileSize > 0 {
		return min(s.opts.MaxFileSize, max(s.opts.SpoolBudget, s.opts.SpoolAbove))
	}
	return max(s.opts.SpoolBudget, s.opts.SpoolAbove)
}

// Options returns the options in effect (with defaults filled in).
func (s *Scanner) Options() Options { return s.opts }

// job is one listed file for a worker.
type job struct {
	vol   int
	name  string // fs.FS name ("etc/hosts")
	size  int64
	owner string
}

// run is the state of one Scan.
type run struct {
	s      *Scanner
	target Target
	rep    *Report
	owners owners // the guest's user names, by uid
	reuse  Reuse  // t.Reuse when recorded under these rules, else nil

	mu       sync.Mutex // guards rep, progress and the hooks
	progress Progress

	excludeHits []int64 // per Options.Exclude pattern; the lister's own

	// cache is Options.Cache, or when that is nil the scan's own (local),
	// nil under Options.NoCache:
	// then only a file whose size another listed file shares can hit it,
	// and the others are not hashed. sizes counts the listed files by size
	// (guarded by mu) up to maxSizes distinct sizes; past that every file
	// is hashed.
	cache Cache
	local bool
	sizes map[int64]int32
}

// maxSizes bounds run.sizes (about 40 bytes an entry).
const maxSizes = 1 << 20

// localCacheEntries bounds a scan's own verdict cache.
const localCacheEntries = 1 << 16

// Scan scans every volume of t and returns its report. Unreadable files,
// timeouts and archive limits are recorded in the report; the scan goes
// on. Scan returns an error only when ctx ends (with the partial report)
// or when YARA cannot start. A file being scanned when ctx is canceled
// finishes first (its timeout bounds the wait).
func (s *Scanner) Scan(ctx context.Context, t Target) (*Report, error) {
	rep := &Report{Target: t.Name, Kind: t.Kind, RulesID: s.rules.ID(), Started: time.Now(), Findings: []Finding{}}
	for _, v := range t.Volumes {
		vr := VolumeReport{ID: v.ID, FileSystem: v.FileSystem, Skipped: map[string]int64{}, Errors: []FileError{}}
		switch {
		case v.Err != nil:
			vr.Err = v.Err.Error()
			if !errors.Is(v.Err, snapshot.ErrNoFiles) {
				vr.Skipped[SkipVolume] = 1
			}
		case v.FS == nil:
			vr.Err = "no file system"
			vr.Skipped[SkipVolume] = 1
		}
		rep.Volumes = append(rep.Volumes, vr)
	}
	r := &run{s: s, target: t, rep: rep, progress: Progress{Target: t.Name}, owners: readOwners(t),
		excludeHits: make([]int64, len(s.opts.Exclude))}
	if t.Reuse != nil && t.Reuse.Rules() == s.ReuseKey() {
		r.reuse = t.Reuse
	}
	if !s.opts.NoCache {
		if r.cache = s.opts.Cache; r.cache == nil {
			r.cache, r.local, r.sizes = NewMemoryCache(localCacheEntries), true, map[int64]int32{}
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	jobs := newJobQueue()
	stop := context.AfterFunc(gctx, jobs.abort)
	defer stop()
	g.Go(func() error {
		defer jobs.close()
		for i, v := range t.Volumes {
			if v.Err != nil || v.FS == nil {
				continue
			}
			if err := r.list(gctx, i, v.FS, jobs); err != nil {
				// What was not listed is unknown: say so for every
				// volume left, so that the report is incomplete.
				for k := i; k < len(t.Volumes); k++ {
					if t.Volumes[k].Err == nil && t.Volumes[k].FS != nil {
						r.skip(k, "/", SkipCanceled, fmt.Errorf("listing stopped: %w", err), false)
					}
				}
				return err
			}
		}
		r.mu.Lock()
		r.progress.Listed = true
		r.mu.Unlock()
		return nil
	})
	for range s.opts.Workers {
		g.Go(func() error {
			w, err := r.newWorker()
			if err != nil {
				return err
			}
			defer w.close()
			for {
				j, ok := jobs.pop()
				if !ok {
					return nil
				}
				if gctx.Err() != nil {
					r.skip(j.vol, "/"+j.name, SkipCanceled, nil, false)
					continue
				}
				w.scanFile(gctx, j)
				jobs.done(j)
			}
		})
	}
	err := g.Wait()
	if err == nil {
		err = ctx.Err()
	}
	rep.Duration = time.Since(rep.Started)
	r.mu.Lock()
	defer r.mu.Unlock()
	slices.SortFunc(rep.Findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(r.volIndex(a.Volume), r.volIndex(b.Volume)), strings.Compare(a.Path, b.Path))
	})
	for i := range rep.Volumes {
		slices.SortStableFunc(rep.Volumes[i].Errors, func(a, b FileError) int { return strings.Compare(a.Path, b.Path) })
		if f := t.Volumes[i].BytesRead; f != nil {
			rep.Volumes[i].ReadBytes = f()
		}
	}
	rep.Excludes = make([]ExcludeCount, len(s.opts.Exclude))
	for i, g := range s.opts.Exclude {
		rep.Excludes[i] = ExcludeCount{Pattern: g.String(), Matched: r.excludeHits[i]}
	}
	rep.computeResult()
	return rep, err
}

func (r *run) volIndex(id string) int {
	return slices.IndexFunc(r.target.Volumes, func(v Volume) bool { return v.ID == id })
}

// list walks one volume and queues its regular files.
func (r *run) list(ctx context.Context, vol int, fsys fs.FS, jobs *jobQueue) error {
	opts := &r.s.opts
	// vfs.WalkDir is linear in the entries whatever the tree's shape,
	// stops at a depth bound and never enters a directory cycle.
	return vfs.WalkDir(fsys, ".", 0, func(name string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		vpath := "/" + name
		if name == "." {
			vpath = "/"
		}
		if err != nil {
			// An unreadable folder (or root): its content is unknown. A
			// folder past the depth bound is a limit hit; a cycle (an
			// entry naming an ancestor), like damage, a read error.
			reason := SkipReadError
			if errors.Is(err, vfs.ErrDepth) {
				reason = SkipLimitHit
			}
			r.skip(vol, vpath, reason, err, false)
			return nil
		}
		excluded := false
		if name != "." {
			for i, g := range opts.Exclude {
				if g.Match(vpath, d.IsDir()) {
					r.excludeHits[i]++
					excluded = true
				}
			}
		}
		if d.IsDir() {
			if excluded {
				r.skip(vol, vpath, SkipExcludedDir, nil, false)
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case excluded:
			r.skip(vol, vpath, SkipExcluded, nil, true)
			return nil
		case !d.Type().IsRegular():
			r.skip(vol, vpath, SkipNotRegular, nil, true)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			r.skip(vol, vpath, SkipReadError, err, true)
			return nil
		}
		if !info.Mode().IsRegular() { // changed since listed
			r.skip(vol, vpath, SkipNotRegular, nil, true)
			return nil
		}
		if lim := r.s.maxSize(); info.Size() > lim {
			r.skip(vol, vpath, SkipTooLarge, fmt.Errorf("%d bytes: over the %d-byte limit (max file size or spool budget)", info.Size(), lim), true)
			return nil
		}
		owner := r.owners.of(info)
		r.mu.Lock()
		r.progress.TotalFiles++
		r.progress.TotalBytes += info.Size()
		if n, ok := r.sizes[info.Size()]; r.sizes != nil && (ok || len(r.sizes) < maxSizes) {
			r.sizes[info.Size()] = n + 1
		}
		r.mu.Unlock()
		return jobs.push(ctx, job{vol: vol, name: name, size: info.Size(), owner: owner})
	})
}

// skip counts a file (or member, or folder) not scanned, with its error.
// listed is true when the lister skips a whole file, which then counts
// toward progress (the workers count the files they were given).
func (r *run) skip(vol int, p, reason string, err error, listed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vr := &r.rep.Volumes[vol]
	vr.Skipped[reason]++
	if err != nil {
		if len(vr.Errors) < MaxErrors {
			vr.Errors = append(vr.Errors, FileError{Path: p, Reason: reason, Err: err})
		} else {
			vr.ErrorsDropped++
		}
		r.s.opts.Logger.Debug("not scanned", "target", r.target.Name, "volume", vr.ID, "path", p, "reason", reason, "err", err)
	}
	if listed {
		r.progress.TotalFiles++
		r.progress.Files++
		r.report()
	}
}

// report calls OnProgress; r.mu is held.
func (r *run) report() {
	if r.s.opts.OnProgress != nil {
		r.s.opts.OnProgress(r.progress)
	}
}

// worker scans files one at a time with its own YARA scanner and arena.
type worker struct {
	r  *run
	ys *yara.Scanner
	// more holds the scanners of the other sets the worker has used
	// (Rules.paths, pruned sets), made on first use.
	more  map[*yara.Rules]*yara.Scanner
	arena *arena
	hdr   [SniffLen]byte
	cb    collector
	h     *blake3.Hasher // content digests, made on first use
	tmo   time.Duration  // timeout currently set on ys and pys
	keep  int64          // budget held for the arena's resident pages
}

func (r *run) newWorker() (*worker, error) {
	ys, err := yara.NewScanner(r.s.rules.y)
	if err != nil {
		return nil, fmt.Errorf("scanner: yara scanner: %w", err)
	}
	ys.SetFlags(scanFlagNoTryCatch)
	size := r.s.opts.SpoolAbove
	if !r.s.opts.NoArchives {
		size += r.s.opts.Archives.MaxTotalBytes
	}
	a, err := newArena(int(min(size, r.s.opts.MemoryBudget)))
	if err != nil {
		ys.Destroy()
		return nil, fmt.Errorf("scanner: scan buffer: %w", err)
	}
	w := &worker{r: r, ys: ys, arena: a}
	ys.SetCallback(&w.cb)
	w.takeKeep()
	return w, nil
}

func (w *worker) close() {
	w.ys.Destroy()
	for _, ys := range w.more {
		ys.Destroy()
	}
	w.arena.free()
	w.dropKeep()
}

// takeKeep reserves, if it is free, the part of the budget that the
// worker's arena keeps resident between files.
func (w *worker) takeKeep() {
	s := w.r.s
	if w.keep == 0 && s.keep > 0 && s.budget.tryMem(s.keep) {
		w.keep = s.keep
	}
}

// dropKeep returns the kept pages to the system and to the budget.
func (w *worker) dropKeep() {
	if w.keep > 0 {
		if w.arena.buf != nil {
			w.arena.trim(0)
		}
		w.r.s.budget.releaseMem(w.keep)
		w.keep = 0
	}
}

// takeMem holds weight bytes of the budget for one file, counting the
// worker's kept pages, and returns what it took beyond them, for giveMem.
func (w *worker) takeMem(ctx context.Context, weight int64) (int64, error) {
	b := w.r.s.budget
	// The worker's kept pages are already paid for; if the rest is not
	// free now, give them up before waiting, so that waiting workers hold
	// nothing and cannot block those that hold memory.
	extra := max(weight-w.keep, 0)
	if extra > 0 && !b.tryMem(extra) {
		w.dropKeep()
		extra = max(weight, 1)
		if err := b.acquireMem(ctx, extra); err != nil {
			return 0, err
		}
	}
	return extra, nil
}

// giveMem empties the arena and returns what takeMem took.
func (w *worker) giveMem(extra int64) {
	w.arena.reset(0)
	w.arena.trim(int(w.keep))
	w.r.s.budget.releaseMem(extra)
	w.takeKeep()
}

// scanFile reads a listed file whole and scans it, and its members: in
// memory up to the memory window, from a spool file above it.
func (w *worker) scanFile(ctx context.Context, j job) {
	r, opts := w.r, &w.r.s.opts
	vpath := "/" + j.name
	defer w.fileDone(j.size)
	if r.reuse != nil && w.reused(j, vpath) {
		return
	}
	f, err := w.r.target.Volumes[j.vol].FS.Open(j.name)
	if err != nil {
		r.skip(j.vol, vpath, SkipReadError, err, false)
		return
	}
	defer f.Close()
	n, err := io.ReadFull(f, w.hdr[:min(j.size, SniffLen)])
	if err != nil && err != io.ErrUnexpectedEOF {
		r.skip(j.vol, vpath, SkipReadError, err, false)
		return
	}
	typ := Filetype(w.hdr[:n])
	spool := j.size > opts.SpoolAbove

	// Take the memory before reading: the file (or the spool copy
	// buffer), and for an archive room for what it may expand to.
	weight := j.size
	if spool {
		weight = spoolChunk
	}
	var exp *expansion
	if !opts.NoArchives && isArchive(typ) {
		exp = newExpansion(opts.Archives, w.arena, j.size)
		exp.ctx = ctx
		exp.remaining = min(exp.remaining, opts.MemoryBudget-weight, int64(len(w.arena.buf))-weight)
		weight += exp.remaining
	}
	extra, err := w.takeMem(ctx, weight)
	if err != nil {
		r.skip(j.vol, vpath, SkipCanceled, nil, false)
		return
	}
	defer w.giveMem(extra)

	var data []byte
	if spool {
		sp, reason, err := w.spool(ctx, f, w.hdr[:n], j.size)
		if err != nil {
			r.skip(j.vol, vpath, reason, err, false)
			return
		}
		defer sp.close()
		data = sp.data
	} else {
		buf, err := w.arena.alloc(j.size)
		if err != nil {
			r.skip(j.vol, vpath, SkipTooLarge, err, false)
			return
		}
		copy(buf, w.hdr[:n])
		m, err := io.ReadFull(f, buf[n:])
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			r.skip(j.vol, vpath, SkipReadError, err, false)
			return
		}
		// A file that shrank since it was listed is scanned as it is now.
		data = buf[:n+m]
	}
	w.scanContent(ctx, j, vpath, path.Base(vpath), data, typ, 0, exp)
}

// reused gives a listed file the outcome Target.Reuse has for it, if it
// has one, without reading the file.
func (w *worker) reused(j job, vpath string) bool {
	r := w.r
	var ctxKey [32]byte
	if r.s.rules.pathDependent {
		name := path.Base(vpath)
		ctxKey = contextKey(&externals{filename: name, filepath: vpath, extension: strings.ToLower(path.Ext(name)), owner: j.owner})
	}
	o, ok := r.reuse.Lookup(j.vol, j.name, ctxKey)
	if !ok || o.Size != j.size {
		return false
	}
	matches := r.s.filter(o.Matches)
	r.mu.Lock()
	defer r.mu.Unlock()
	vr := &r.rep.Volumes[j.vol]
	vr.Files++
	vr.Bytes += o.Size
	vr.Reused++
	if len(matches) > 0 {
		f := Finding{Target: r.target.Name, Volume: vr.ID, Path: vpath, Size: o.Size,
			SHA256: hex.EncodeToString(o.SHA256[:]), Matches: matches}
		r.rep.Findings = append(r.rep.Findings, f)
		if r.s.opts.OnFinding != nil {
			r.s.opts.OnFinding(f)
		}
	}
	return true
}

// digest returns the cache key of content: its BLAKE3 keyed with
// contentKey.
func (w *worker) digest(data []byte) [32]byte {
	if w.h == nil {
		w.h = blake3.New(32, contentKey[:])
	}
	w.h.Reset()
	w.h.Write(data)
	var d [32]byte
	w.h.Sum(d[:0])
	return d
}

// contentKey keys the content digests of CacheKey. It is fixed, so that
// digests are the same on every machine and a persistent cache outlives
// the process; keying separates them from any other use of BLAKE3 (and
// from the SHA-256 digests earlier versions stored).
var contentKey = func() (k [32]byte) {
	blake3.DeriveKey(k[:], "snapscan 2026-12 verdict cache: content of a scanned file", []byte("snapscan"))
	return k
}()

// mayRepeat reports whether a listed file of this size may share its
// bytes with another file of the scan: another listed file has its size,
// or the listing has not ended (or stopped counting).
func (r *run) mayRepeat(size int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.sizes[size]
	return !r.progress.Listed || n > 1 || (!ok && len(r.sizes) >= maxSizes)
}

// fileDone advances progress for one listed file.
func (w *worker) fileDone(size int64) {
	r := w.r
	r.mu.Lock()
	r.progress.Files++
	r.progress.Bytes += size
	r.report()
	r.mu.Unlock()
}

// externals are the per-file values of the external variables.
type externals struct {
	filename, filepath, extension, filetype, owner string
}

// scanContent scans one file or member held in data, then its members.
func (w *worker) scanContent(ctx context.Context, j job, vpath, name string, data []byte, typ string, depth int, exp *expansion) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := w.r
	ext := externals{
		filename:  name,
		filepath:  vpath,
		extension: strings.ToLower(path.Ext(name)),
		filetype:  typ,
		owner:     j.owner,
	}
	// The cache key takes a digest of the file (BLAKE3, about twice as
	// fast as SHA-256 here); the SHA-256 that findings report is computed
	// for findings only. A scan's own cache can only be hit by a file whose
	// size another file shares: the others are not hashed.
	var key CacheKey
	var matches []Match
	cached := false
	record := r.reuse != nil && depth == 0 && exp == nil
	c := r.cache
	if c != nil && r.local && depth == 0 && !r.mayRepeat(j.size) {
		c = nil
	}
	if c != nil || record {
		key = CacheKey{Content: w.digest(data), Rules: r.s.rules.id}
		if r.s.rules.pathDependent {
			key.Context = contextKey(&ext)
		}
	}
	// Under rules split by Rules.paths, the content-only part of a verdict
	// made at another path spares all but the path-reading sources.
	split := r.s.rules.paths
	var content []Match
	haveContent := false
	if c != nil {
		if v, ok := c.Get(key); ok {
			matches, cached = v.Matches, true
		} else if split != nil {
			if v, ok := c.Get(CacheKey{Content: key.Content, Rules: split.contentID}); ok {
				content, haveContent = v.Matches, true
			}
		}
	}
	scanned, pruned := cached, false
	if !cached {
		var err error
		if haveContent {
			matches, pruned, err = w.yaraScan(ctx, &ext, data, true)
			if err == nil {
				matches = split.merge(content, matches)
			}
		} else {
			matches, pruned, err = w.yaraScan(ctx, &ext, data, false)
		}
		switch {
		case isTimeout(err):
			r.skip(j.vol, vpath, SkipTimeout, fmt.Errorf("yara: no verdict within %v", w.tmo), false)
		case err != nil:
			r.skip(j.vol, vpath, SkipScanError, fmt.Errorf("yara: %w", err), false)
		default:
			scanned = true
			if c != nil {
				c.Put(key, Verdict{Matches: matches})
				if split != nil && !haveContent {
					c.Put(CacheKey{Content: key.Content, Rules: split.contentID}, Verdict{Matches: split.contentOnly(matches)})
				}
			}
		}
	}
	var sum [32]byte
	if scanned && len(matches) > 0 {
		sum = sha256.Sum256(data)
	}
	if scanned && record {
		r.reuse.Record(j.vol, j.name, Outcome{Size: int64(len(data)), Content: key.Content, Context: key.Context, SHA256: sum, Matches: matches})
	}
	matches = r.s.filter(matches)
	if scanned {
		r.mu.Lock()
		vr := &r.rep.Volumes[j.vol]
		vr.Files++
		vr.Bytes += int64(len(data))
		if cached {
			vr.Cached++
		}
		if haveContent {
			vr.PathScanned++
		}
		if pruned {
			vr.Pruned++
		}
		if len(matches) > 0 {
			f := Finding{
				Target:  r.target.Name,
				Volume:  vr.ID,
				Path:    vpath,
				Size:    int64(len(data)),
				SHA256:  hex.EncodeToString(sum[:]),
				Matches: matches,
			}
			r.rep.Findings = append(r.rep.Findings, f)
			if r.s.opts.OnFinding != nil {
				r.s.opts.OnFinding(f)
			}
		}
		r.mu.Unlock()
	}
	if exp == nil {
		return nil
	}
	return exp.walk(typ, name, data, depth,
		func(m member) error {
			mt := Filetype(m.Data)
			mp := memberPath(vpath, m.Name)
			var sub *expansion
			if isArchive(mt) {
				sub = exp
			}
			return w.scanContent(ctx, j, mp, path.Base(path.Clean("/"+m.Name)), m.Data, mt, m.Depth, sub)
		},
		func(name, reason string, err error) {
			p := vpath
			if name != "" {
				p = memberPath(vpath, name)
			}
			r.skip(j.vol, p, reason, err, false)
		})
}

// yaraScan runs the rules over data with the file's externals: all of
// them, or with paths only the path-reading sources of Rules.paths; in
// either case only those that can match a file of data's class, unless
// Options.NoPrefilter (see classes): then pruned is true.
func (w *worker) yaraScan(ctx context.Context, ext *externals, data []byte, paths bool) (matches []Match, pruned bool, err error) {
	rules := w.r.s.rules
	y, cl := rules.y, rules.classes
	if paths {
		y, cl = rules.paths.y, rules.paths.classes
	}
	base := y
	if cl != nil && !w.r.s.opts.NoPrefilter {
		y = cl.forFile(data, w.r.s.opts.Logger)
	}
	tmo := w.r.s.opts.Timeout
	if dl, ok := ctx.Deadline(); ok {
		tmo = min(tmo, time.Until(dl))
	}
	tmo = max(time.Second, tmo.Round(time.Second))
	if tmo != w.tmo {
		w.ys.SetTimeout(tmo)
		for _, ys := range w.more {
			ys.SetTimeout(tmo)
		}
		w.tmo = tmo
	}
	ys := w.ys
	if y != rules.y {
		if ys = w.more[y]; ys == nil {
			var err error
			if ys, err = yara.NewScanner(y); err != nil {
				return nil, false, fmt.Errorf("yara scanner: %w", err)
			}
			ys.SetFlags(scanFlagNoTryCatch)
			ys.SetCallback(&w.cb)
			ys.SetTimeout(w.tmo)
			if w.more == nil {
				w.more = map[*yara.Rules]*yara.Scanner{}
			}
			w.more[y] = ys
		}
	}
	for _, kv := range [...][2]string{
		{"filename", ext.filename}, {"filepath", ext.filepath}, {"extension", ext.extension},
		{"filetype", ext.filetype}, {"owner", ext.owner},
	} {
		if slices.Contains(rules.defined, kv[0]) {
			if err := ys.DefineVariable(kv[0], kv[1]); err != nil {
				return nil, false, fmt.Errorf("define %s: %w", kv[0], err)
			}
		}
	}
	w.cb.matches = nil
	err = ys.ScanMem(data)
	m := w.cb.matches
	w.cb.matches = nil
	if err != nil {
		return nil, false, err
	}
	return m, y != base, nil
}

// filter applies Options.Tags and SkipTags; it allocates only when it
// drops something (matches may be a cached, shared slice).
func (s *Scanner) filter(matches []Match) []Match {
	if len(matches) == 0 || (len(s.opts.Tags) == 0 && len(s.opts.SkipTags) == 0) {
		return matches
	}
	keep := func(m Match) bool {
		if slices.ContainsFunc(m.Tags, func(t string) bool { return slices.Contains(s.opts.SkipTags, t) }) {
			return false
		}
		return len(s.opts.Tags) == 0 || slices.ContainsFunc(m.Tags, func(t string) bool { return slices.Contains(s.opts.Tags, t) })
	}
	var out []Match
	for _, m := range matches {
		if keep(m) {
			out = append(out, m)
		}
	}
	return out
}

// yaraTimeout is libyara's ERROR_SCAN_TIMEOUT.
const yaraTimeout = yara.Error(26)

func isTimeout(err error) bool { return errors.Is(err, yaraTimeout) }

// collector gathers matching rules. It only implements RuleMatching, so
// libyara reports matches only (each report is a cgo call).
type collector struct {
	matches []Match
}

// RuleMatching implements yara.ScanCallback. It must not panic: a panic
// cannot unwind through libyara.
func (c *collector) RuleMatching(sc *yara.ScanContext, r *yara.Rule) (bool, error) {
	m := Match{Rule: r.Identifier(), Namespace: r.Namespace(), Tags: r.Tags(), Meta: []MetaEntry{}, Strings: []StringMatch{}}
	if m.Tags == nil {
		m.Tags = []string{}
	}
	for _, mt := range r.Metas() {
		v := mt.Value
		if i, ok := v.(int); ok {
			v = int64(i) // as JSON decoding restores it
		}
		m.Meta = append(m.Meta, MetaEntry{Key: mt.Identifier, Value: v})
	}
	for _, s := range r.Strings() {
		id := s.Identifier()
		occ := s.Matches(sc)
		for i := range occ {
			if i == MaxStringMatches {
				m.StringsDropped += len(occ) - i
				break
			}
			data := occ[i].Data()
			sm := StringMatch{Identifier: id, Offset: occ[i].Base() + occ[i].Offset()}
			if len(data) > MaxMatchData {
				data, sm.Truncated = data[:MaxMatchData], true
			}
			sm.Data = escapeData(data)
			m.Strings = append(m.Strings, sm)
		}
	}
	c.matches = append(c.matches, m)
	return false, nil
}
