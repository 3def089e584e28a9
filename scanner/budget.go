package scanner

import (
	"context"
	"os"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Budget bounds what scans hold at once, for every Scanner that shares it:
// scan memory (the file being scanned, the archive members expanded from
// it, the pages workers keep between files) and spool space (the files
// larger than the memory window, copied to private temp files, see
// Options.SpoolAbove).
//
// Ownership: a process makes one Budget when it starts and passes it to
// every Scanner it makes, through Options.Budget. The appliance makes a
// Scanner per rule set; with one Budget, the scans still running on the
// old rule set and those started on the new one share one bound instead
// of doubling it. A Scanner made without a Budget makes its own, sized by
// its Options. A Budget needs no closing and is safe for concurrent use;
// its figures (Usage) are for metrics.
type Budget struct {
	mem, spool       *semaphore.Weighted
	memSize          int64
	spoolSize        int64
	spoolDir         string
	memUse, memPeak  atomic.Int64
	spUse, spoolPeak atomic.Int64
}

// BudgetOptions size a Budget. The zero value of a field means its default.
type BudgetOptions struct {
	// Memory bounds scan memory (default DefaultMemoryBudget). Peak RSS
	// is about Memory plus the compiled rules and the Go heap.
	Memory int64
	// SpoolDir is the folder of spool files (default os.TempDir()). It
	// should be on a disk, not a tmpfs, which would turn spool space into
	// memory. Spool files are created there with mode 0600 and unlinked
	// at once: nothing is left behind, even by a crash.
	SpoolDir string
	// Spool bounds the bytes of all spool files at once (default
	// DefaultSpoolBudget). A file larger than Spool is not scanned: it is
	// counted as too_large and the scan is incomplete.
	Spool int64
}

// Budget defaults.
const (
	// DefaultMemoryBudget bounds the scan memory of all workers together
	// (pages kept resident between files included). Peak RSS is about
	// the budget plus libyara's compiled rules and the Go heap (about
	// 90 MiB with signature-base), plus the mapped pages of a spooled
	// file being scanned (page cache, given back under pressure).
	DefaultMemoryBudget = 320 << 20
	// DefaultSpoolBudget bounds the spool files of all workers together:
	// large enough for DVD images, installers and databases, small next
	// to the disks a scanner host has.
	DefaultSpoolBudget = 16 << 30
)

// NewBudget returns a Budget of the given sizes.
func NewBudget(o BudgetOptions) *Budget {
	if o.Memory <= 0 {
		o.Memory = DefaultMemoryBudget
	}
	if o.Spool <= 0 {
		o.Spool = DefaultSpoolBudget
	}
	if o.SpoolDir == "" {
		o.SpoolDir = os.TempDir()
	}
	return &Budget{
		mem: semaphore.NewWeighted(o.Memory), memSize: o.Memory,
		spool: semaphore.NewWeighted(o.Spool), spoolSize: o.Spool, spoolDir: o.SpoolDir,
	}
}

// Options returns the sizes in effect.
func (b *Budget) Options() BudgetOptions {
	return BudgetOptions{Memory: b.memSize, SpoolDir: b.spoolDir, Spool: b.spoolSize}
}

// BudgetUsage is what a Budget has lent out: now, and at most since it was
// made.
type BudgetUsage struct {
	Memory, MemoryPeak int64
	Spool, SpoolPeak   int64
}

// Usage returns the bytes held now and the peaks.
func (b *Budget) Usage() BudgetUsage {
	return BudgetUsage{Memory: b.memUse.Load(), MemoryPeak: b.memPeak.Load(),
		Spool: b.spUse.Load(), SpoolPeak: b.spoolPeak.Load()}
}

// held counts bytes taken from a semaphore: use is raised after the
// acquisition and lowered before the release, so it never exceeds what
// the semaphore lent.
func held(use, peak *atomic.Int64, n int64) {
	v := use.Add(n)
	for {
		p := peak.Load()
		if v <= p || peak.CompareAndSwap(p, v) {
			return
		}
	}
}

func (b *Budget) acquireMem(ctx context.Context, n int64) error {
	if err := b.mem.Acquire(ctx, n); err != nil {
		return err
	}
	held(&b.memUse, &b.memPeak, n)
	return nil
}

func (b *Budget) tryMem(n int64) bool {
	if !b.mem.TryAcquire(n) {
		return false
	}
	held(&b.memUse, &b.memPeak, n)
	return true
}

func (b *Budget) releaseMem(n int64) {
	b.memUse.Add(-n)
	b.mem.Release(n)
}

func (b *Budget) acquireSpool(ctx context.Context, n int64) error {
	if err := b.spool.Acquire(ctx, n); err != nil {
		return err
	}
	held(&b.spUse, &b.spoolPeak, n)
	return nil
}

func (b *Budget) releaseSpool(n int64) {
	b.spUse.Add(-n)
	b.spool.Release(n)
}
