package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

func init() {
	register(command{name: "scan", summary: "scan disk images, block devices, folders or files with YARA rules", run: runScan})
}

const scanHelp = `Scans every file of every volume of each TARGET with YARA rules. A TARGET is a
disk image (raw, qcow2, VMDK, VHD, VHDX: detected by content), a block device,
or a folder. Images are opened read-only; their volumes (partitions, LVM2
logical volumes) are found and each file system is read directly: nothing is
mounted. Archives (zip, tar, gzip, zstd, bzip2, xz, nested) are scanned inside,
members reported as /path/a.zip!dir/inner.exe.

A TARGET may also be a plain file that is not a disk image (a regular file
with no partition table and no known file system): it is scanned as a file.
The report says which way each target was read: image, block_device, folder
or file.

Per file the rules see the external variables filename, filepath (the path
inside its volume, /etc/hosts), extension (.exe), filetype (EXE, ELF, ZIP, ...)
and owner. Files of any size are scanned whole: those larger than the memory
window (256 MiB) are copied to a private spool file (--spool-dir, bounded by
--spool-size) and scanned from it. One bad target never stops the others: it
is reported and the scan goes on. Files that are not scanned are counted by
reason (too_large, excluded, not_regular, read_error, timeout, limit_hit, ...)
in the summary; any of them but excluded and not_regular makes the scan
incomplete, which is never reported as clean.

A progress line is shown when stderr is a terminal (never with --quiet).

The report (--format): text, json (one document), jsonl (one object a line:
each finding as it is made, then each target, then a summary), sarif (SARIF
2.1.0, for code-scanning tools) or csv (a row per rule and file). Every format
carries the matched rules' tags and meta; every JSON document starts with
"schema_version". --output FILE writes the report there, replaced whole when
the scan ends. TARGETs may also come from --targets-from FILE (one a line, '-'
for stdin), exclusion patterns from --exclude-from FILE.

Incremental scans: a disk whose backing chain holds an image already scanned
in this run (a golden image and its linked clones, successive snapshots of a
VM) reads only what its own layers changed. Each file whose bytes and metadata
no upper layer touches gets the base's verdict without being read; the rest
is read and scanned. A base named among the TARGETs is scanned first; one that
is not is recorded from the first of its clones scanned. A base is recognised
by its identity (its files' headers, allocation tables, sizes and modification
times), never its name; one that changed since it was recorded is not trusted
(a warning, and a full scan). Verdicts are those of a full scan. The summary
says per volume how many files came from the base and how many bytes were
read, and per target what was read from each file of the chain.
--no-incremental reads every disk in full.

Examples:
  snapscan scan --rules rules/ vm42.qcow2
  snapscan scan --rules a.yar --rules b.yar --exclude '*.vhdx' --json /dev/sdb /srv/share
  snapscan scan --rules signature-base/ --tags APT --skip-tags test --show-strings ./download.exe
  find /srv/images -name '*.qcow2' | snapscan scan --rules rules/ --targets-from - --format sarif --output scan.sarif
  snapscan scan --rules rules/ --exclude-from excludes.txt --format jsonl --quiet /mnt/share
`

func runScan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runScanIn(ctx, args, os.Stdin, stdout, stderr)
}

func runScanIn(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("scan", "scan --rules PATH [--rules PATH]... [flags] TARGET...", scanHelp, stderr)
	var rules, excludes stringList
	f.Var(&rules, "rules", "YARA rule file, folder of .yar/.yara files, or compiled rules (repeatable, required)")
	f.Var(&excludes, "exclude", "skip files and folders matching `GLOB` inside a volume, as in .gitignore: a pattern\nwithout '/' matches at any depth ('*.vhdx', 'eicar.com'), a leading or inner '/'\nanchors at the volume's root ('/var/lib/pacemaker'), a trailing '/' matches folders\nonly ('cache/'), '**' any number of folders (repeatable; a pattern that matches\nnothing in the whole run is warned about)")
	var tags, skipTags stringList
	f.Var(&tags, "tags", "report only rules with one of these `TAGS` (comma-separated, repeatable)")
	f.Var(&skipTags, "skip-tags", "never report rules with any of these `TAGS` (comma-separated, repeatable; wins over --tags)")
	showStrings := f.Bool("show-strings", false, "print what each rule matched: offset, string identifier and the bytes, escaped\nand at most 128 of them (json, jsonl and sarif always carry them)")
	format := f.String("format", "text", "report `FORMAT`: text, json (one document), jsonl (a line per finding as it is\nmade, per target, then a summary), sarif (SARIF 2.1.0) or csv (a row per rule and file)")
	asJSON := f.Bool("json", false, "the same as --format json")
	output := f.String("output", "", "write the report to `FILE` (replaced whole when the scan ends) instead of stdout")
	quiet := f.Bool("quiet", false, "print only findings and errors: no progress line, no summary, no warnings")
	targetsFrom := f.String("targets-from", "", "read more TARGETs from `FILE`, one per line ('-': standard input; empty lines\nand lines starting with # are skipped)")
	excludeFrom := f.String("exclude-from", "", "read more --exclude patterns from `FILE`, one per line, as in .gitignore (empty\nlines and lines starting with # are skipped)")
	diskOpts := diskFlags(f) // --disk-format, --layer, --allow-unnamed-layers, --allow-dir
	maxSize := f.String("max-file-size", "", "do not scan files larger than `SIZE` (units KB, MB, GB, KiB, MiB, GiB); they make\nthe scan incomplete (default: no limit but --spool-size)")
	spoolDir := f.String("spool-dir", "", "folder for spool copies of files over the memory window (default $TMPDIR or /tmp)")
	spoolSize := f.String("spool-size", "16GiB", "bound on the spool copies held at once: larger files are not scanned (`SIZE`)")
	workers := f.Int("workers", 0, "files scanned at once (default: number of CPUs)")
	timeout := f.Duration("timeout", scanner.DefaultTimeout, "YARA timeout per file (whole seconds)")
	noArchives := f.Bool("no-archives", false, "do not look inside archives")
	noProgress := f.Bool("no-progress", false, "never show the progress line")
	rulesCache := f.String("rules-cache", defaultRulesCache(), "keep compiled rule sets in `DIR`, by the digest of their sources, so that the\nnext start loads instead of compiling (\"off\": compile every time)")
	noIncremental := f.Bool("no-incremental", false, "read every file of every disk, even where a base layer scanned in this run\nalready gave its verdict (see Incremental scans)")
	noPrefilter := f.Bool("no-prefilter", false, "run every rule over every file (by default rules that a file's size and header\nalready rule out, such as PE-only rules on an ELF file, are not run over it:\nthe verdicts are the same)")
	noCache := f.Bool("no-cache", false, "scan every file even if identical content was already scanned in this run\n(saves hashing every file when targets share little content)")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if *asJSON {
		*format = "json"
	}
	if *targetsFrom != "" {
		more, err := readList(*targetsFrom, stdin)
		if err != nil {
			return usageError("--targets-from: %v", err)
		}
		pos = append(pos, more...)
	}
	if *excludeFrom != "" {
		more, err := readList(*excludeFrom, stdin)
		if err != nil {
			return usageError("--exclude-from: %v", err)
		}
		excludes = append(excludes, more...)
	}
	if len(rules) == 0 || len(pos) == 0 {
		f.Usage()
		return usageError("need --rules and at least one TARGET")
	}
	var dst io.Writer = stdout
	var outFile *atomicFile
	if *output != "" {
		if outFile, err = createAtomic(*output); err != nil {
			return usageError("--output: %v", err)
		}
		defer outFile.abort()
		dst = outFile
	}
	rep, err := newReporter(*format, dst, *showStrings, *quiet)
	if err != nil {
		return usageError("--format: %v", err)
	}
	var limit int64
	if *maxSize != "" {
		if limit, err = parseSize(*maxSize); err != nil {
			return usageError("--max-file-size: %v", err)
		}
	}
	spoolLimit, err := parseSize(*spoolSize)
	if err != nil {
		return usageError("--spool-size: %v", err)
	}
	var globs []scanner.Glob
	for _, e := range excludes {
		g, err := scanner.CompileGlob(e)
		if err != nil {
			return usageError("--exclude %q: %v", e, err)
		}
		globs = append(globs, g)
	}
	if *rulesCache == "off" {
		*rulesCache = ""
	}
	rs, err := scanner.CompileCached(*rulesCache, rules...)
	if err != nil {
		return &exitError{code: 2, err: err}
	}

	prog := newProgress(stderr, !*noProgress && !*quiet && isTerminal(stderr))
	opts := scanner.Options{
		Workers: *workers, MaxFileSize: limit, Exclude: globs, Timeout: *timeout,
		NoArchives: *noArchives, OnProgress: prog.update,
		SpoolDir: *spoolDir, SpoolBudget: spoolLimit,
		Tags: splitList(tags), SkipTags: splitList(skipTags),
	}
	// One target alone keeps its verdicts in the scan's own cache, which
	// hashes only files whose size another file shares (a BLAKE3 of every
	// file is 3% of a cold scan's CPU, bench/scan-image.sh).
	opts.NoCache = *noCache
	opts.NoPrefilter = *noPrefilter
	if !*noCache && len(pos) > 1 {
		// One run's verdicts, by content hash: byte-identical files (clones,
		// copies, the same packages in several images) are scanned once.
		opts.Cache = scanner.NewMemoryCache(1 << 20)
	}
	var writeErr error // the first error writing the report
	opts.OnFinding = func(fd scanner.Finding) {
		prog.clear()
		if err := rep.finding(fd); err != nil && writeErr == nil {
			writeErr = err
		}
	}
	sc := scanner.New(rs, opts)
	var sess *incremental.Session
	var shared *image.ReadCache
	order := make([]int, len(pos))
	for i := range order {
		order[i] = i
	}
	// Incremental scans need two targets: one target alone has no base
	// scanned before it and no clone after it to use its record, and
	// recording it (a digest and an extent map of every file) and
	// sharing its reads (128 MiB of cache) would cost the cold scan for
	// nothing.
	if !*noIncremental && len(pos) > 1 {
		// Two records per disk at most: its own and its parent's.
		sess = incremental.NewSession(incremental.NewMemoryStore(2*len(pos)), sc.ReuseKey(), nil)
		order = basesFirst(pos, diskOpts)
		// The small reads of image files (allocation tables, the base's
		// inode tables and directories that every clone walks) are read
		// from the datastore once per run. Measured on bench/fleet-clones.sh:
		// keeping reads up to 64 KiB (qcow2 L2 tables) in 128 MiB gave the
		// clones 1.32-2.06x their overlays in reads, block-sized reads only
		// in 64 MiB 1.47-2.10x.
		shared = image.NewReadCache(128<<20, 64<<10)
	}

	out := scanOutput{SchemaVersion: schemaVersion, SnapscanVersion: readVersion().Version, Targets: []targetReport{}, Findings: []scanner.Finding{}}
	start := time.Now()
	failed := false
	var results []scanner.Result
	var reports []*scanner.Report
	done := make([]*targetReport, len(pos))
	for _, i := range order {
		target := pos[i]
		if ctx.Err() != nil {
			break
		}
		tr := scanTarget(ctx, sc, sess, shared, target, diskOpts())
		prog.clear()
		if tr.Error != "" {
			failed = true
			fmt.Fprintf(stderr, "snapscan scan: %s\n", tr.Error)
		}
		if tr.Incremental != nil {
			for _, w := range tr.Incremental.Warnings {
				fmt.Fprintf(stderr, "snapscan scan: warning: %s: %s\n", target, w)
			}
		}
		done[i] = &tr
	}
	// Report in the order given, whatever the order scanned.
	for _, tr := range done {
		if tr == nil {
			continue
		}
		if tr.report != nil {
			out.Findings = append(out.Findings, tr.report.Findings...)
			results = append(results, tr.report.Result)
			reports = append(reports, tr.report)
		}
		out.Targets = append(out.Targets, *tr)
	}
	prog.clear()
	out.Result = scanner.MergeResults(results...)
	if len(reports) > 0 && !*quiet {
		for _, p := range scanner.UnusedExcludes(reports...) {
			fmt.Fprintf(stderr, "snapscan scan: warning: --exclude %q matched nothing\n", p)
		}
	}
	out.Stats = summarize(out.Targets, rs, time.Since(start))
	if err := rep.finish(&out); err != nil && writeErr == nil {
		writeErr = err
	}
	if writeErr == nil && outFile != nil {
		writeErr = outFile.commit()
	}
	if writeErr != nil {
		return fmt.Errorf("writing the report: %w", writeErr)
	}
	if !out.Result.Complete() {
		fmt.Fprintf(stderr, "snapscan scan: incomplete: not scanned:%s\n", skipText(out.Result.NotScanned)[len("; skipped:"):])
	}
	switch {
	case len(out.Findings) > 0:
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "snapscan scan: interrupted: %v\n", ctx.Err())
		}
		return &exitError{code: exitFindings}
	case ctx.Err() != nil:
		return &exitError{code: exitFailed, err: fmt.Errorf("interrupted: %w", ctx.Err())}
	case failed:
		return &exitError{code: exitFailed}
	case !out.Result.Complete():
		return &exitError{code: exitIncomplete}
	}
	return nil
}

// targetReport is one target's part of the JSON output.
type targetReport struct {
	Target string `json:"target"`
	// Kind is which way the target was read: image, block_device,
	// folder, file (empty when it could not be opened).
	Kind    string                 `json:"kind"`
	Format  string                 `json:"format,omitempty"` // image format, "dir" for a folder, "file"
	Result  *scanner.Result        `json:"result,omitempty"`
	Volumes []scanner.VolumeReport `json:"volumes"`
	// Error is why the target could not be scanned at all.
	Error    string `json:"error,omitempty"`
	Findings int    `json:"findings"`
	// Read is what was read from the files of a disk's chain.
	Read *readReport `json:"read,omitempty"`
	// Incremental says which base layer gave verdicts, or why none did.
	Incremental *scanner.IncrementalReport `json:"incremental,omitempty"`
	report      *scanner.Report
}

// readReport is what one disk cost its datastore: bytes read per file of
// its chain, counted in the image layer.
type readReport struct {
	Bytes int64            `json:"bytes"`
	Files []image.FileRead `json:"files"`
}

type scanStats struct {
	Targets       int              `json:"targets"`
	TargetsFailed int              `json:"targets_failed"`
	Volumes       int              `json:"volumes"`
	Files         int64            `json:"files"`
	Bytes         int64            `json:"bytes"`
	Cached        int64            `json:"cached"`
	Reused        int64            `json:"reused"`
	ReadBytes     int64            `json:"read_bytes"` // from the datastore: the files of the disks' chains
	Skipped       map[string]int64 `json:"skipped"`
	Errors        int64            `json:"errors"`
	Findings      int              `json:"findings"`
	Rules         int              `json:"rules"`
	RulesID       string           `json:"rules_id"`
	Seconds       float64          `json:"seconds"`
}

type scanOutput struct {
	SchemaVersion   int    `json:"schema_version"`
	SnapscanVersion string `json:"snapscan_version"`
	// Result merges the targets' results (targets that could not be
	// opened at all are in Targets[].Error and stats.targets_failed).
	Result   scanner.Result    `json:"result"`
	Targets  []targetReport    `json:"targets"`
	Findings []scanner.Finding `json:"findings"`
	Stats    scanStats         `json:"stats"`
}

// scanTarget opens and scans one target; its errors are recorded in the
// report, never returned, so that the other targets are still scanned.
func scanTarget(ctx context.Context, sc *scanner.Scanner, sess *incremental.Session, shared *image.ReadCache, target string, opts *snapshot.Options) targetReport {
	tr := targetReport{Target: target, Volumes: []scanner.VolumeReport{}}
	var t scanner.Target
	var plan *incremental.Plan
	var reads image.ReadCounter
	opts.WrapReader = reads.Wrap
	if shared != nil {
		// Counted below the cache: what the datastore served.
		opts.WrapReader = func(path string, r io.ReaderAt) io.ReaderAt { return shared.Wrap(path, reads.Wrap(path, r)) }
	}
	fi, statErr := os.Stat(target)
	switch {
	case statErr == nil && fi.IsDir():
		tr.Format = "dir"
		t = scanner.FolderTarget(target)
	default:
		d, err := snapshot.Open(target, opts)
		// A plain file is scanned as itself: one too small to hold a
		// partition table, or one that opens only as a raw disk with
		// nothing known on it. A file in an image format that fails to
		// open stays an error.
		if statErr == nil && fi.Mode().IsRegular() && ((err != nil && fi.Size() < 512) || (err == nil && notAnImage(d))) {
			if d != nil {
				d.Close()
			}
			if t, err = scanner.FileTarget(target); err != nil {
				tr.Error = err.Error()
				return tr
			}
			tr.Format = "file"
			break
		}
		if err != nil {
			tr.Error = err.Error()
			return tr
		}
		defer d.Close()
		tr.Format = d.Format
		if sess != nil {
			plan = sess.Plan(ctx, d)
			t = plan.Target(target)
		} else {
			t = scanner.DiskTarget(target, d)
		}
	}
	tr.Kind = t.Kind
	rep, err := sc.Scan(ctx, t)
	if rep != nil && plan != nil {
		if ferr := plan.Finish(ctx, rep); ferr != nil {
			rep.Incremental.Warnings = append(rep.Incremental.Warnings, "recording the scan: "+ferr.Error())
		}
		tr.Incremental = rep.Incremental
	}
	if t.Kind == scanner.KindImage || t.Kind == scanner.KindBlockDevice {
		tr.Read = &readReport{Bytes: reads.Total(), Files: reads.Files()}
	}
	if rep != nil {
		tr.report = rep
		tr.Volumes = rep.Volumes
		tr.Findings = len(rep.Findings)
		tr.Result = &rep.Result
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		tr.Error = fmt.Sprintf("%s: %v", target, err)
	} else if rep != nil && !anyScanned(t) {
		tr.Error = fmt.Sprintf("%s: no volume could be read", target)
	}
	return tr
}

// defaultRulesCache is the user's cache folder for compiled rule sets, or
// "" (no cache) when there is none.
func defaultRulesCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "snapscan", "rules")
}

// notAnImage reports whether a disk opened from a regular file is no disk
// image at all: raw, with no partition table and nothing known on it.
func notAnImage(d *snapshot.Disk) bool {
	return d.Format == "raw" && d.Table == "" && len(d.Volumes) == 1 && d.Volumes[0].FS == nil && d.Volumes[0].FileSystem == ""
}

func anyScanned(t scanner.Target) bool {
	for _, v := range t.Volumes {
		if v.FS != nil {
			return true
		}
	}
	return false
}

func summarize(ts []targetReport, rs *scanner.Rules, d time.Duration) scanStats {
	st := scanStats{Targets: len(ts), Skipped: map[string]int64{}, Rules: rs.Count(), RulesID: rs.ID(), Seconds: d.Seconds()}
	for _, t := range ts {
		if t.Error != "" {
			st.TargetsFailed++
		}
		st.Findings += t.Findings
		if t.Read != nil {
			st.ReadBytes += t.Read.Bytes
		}
		for _, v := range t.Volumes {
			st.Volumes++
			st.Files += v.Files
			st.Bytes += v.Bytes
			st.Cached += v.Cached
			st.Reused += v.Reused
			st.Errors += int64(len(v.Errors)) + v.ErrorsDropped
			for k, n := range v.Skipped {
				st.Skipped[k] += n
			}
		}
	}
	return st
}

func printFinding(w io.Writer, fd scanner.Finding, showStrings bool) {
	names := make([]string, len(fd.Matches))
	for i, m := range fd.Matches {
		names[i] = m.Rule
		if len(m.Tags) > 0 {
			names[i] += " [" + strings.Join(m.Tags, ",") + "]"
		}
	}
	fmt.Fprintf(w, "FOUND %s %s %s: %s (sha256 %s)\n", fd.Target, fd.Volume, fd.Path, strings.Join(names, ", "), fd.SHA256)
	for _, m := range fd.Matches {
		if len(m.Meta) == 0 {
			continue
		}
		parts := make([]string, len(m.Meta))
		for i, e := range m.Meta {
			parts[i] = fmt.Sprintf("%s=%s", e.Key, metaText(e.Value))
		}
		fmt.Fprintf(w, "  %s meta: %s\n", m.Rule, strings.Join(parts, " "))
	}
	if !showStrings {
		return
	}
	for _, m := range fd.Matches {
		for _, s := range m.Strings {
			more := ""
			if s.Truncated {
				more = "..."
			}
			fmt.Fprintf(w, "  %s 0x%x:%s: %s%s\n", m.Rule, s.Offset, s.Identifier, s.Data, more)
		}
		if m.StringsDropped > 0 {
			fmt.Fprintf(w, "  %s: %d more string matches not shown\n", m.Rule, m.StringsDropped)
		}
	}
}

// metaText writes a rule's meta value for the text report: strings
// quoted and escaped (rule files come from elsewhere), numbers and
// booleans as they are.
func metaText(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// splitList splits comma-separated flag values.
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func printSummary(w io.Writer, o *scanOutput) {
	fmt.Fprintln(w)
	for _, t := range o.Targets {
		fmt.Fprintf(w, "%s (%s, %s)\n", t.Target, dash(t.Kind), dash(t.Format))
		if t.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", t.Error)
		}
		if t.Incremental != nil && t.Incremental.Base != "" {
			fmt.Fprintf(w, "  base: %s\n", t.Incremental.Base)
		}
		if t.Incremental != nil {
			for _, m := range t.Incremental.Warnings {
				fmt.Fprintf(w, "  warning: %s\n", m)
			}
		}
		if t.Read != nil {
			var parts []string
			for _, f := range t.Read.Files {
				parts = append(parts, fmt.Sprintf("%s %s", filepath.Base(f.Path), humanBytes(f.Bytes)))
			}
			fmt.Fprintf(w, "  read %s from the datastore (%s)\n", humanBytes(t.Read.Bytes), strings.Join(parts, ", "))
		}
		for _, v := range t.Volumes {
			if v.Err != "" {
				fmt.Fprintf(w, "  %-14s %-9s not scanned: %s\n", v.ID, dash(v.FileSystem), v.Err)
				continue
			}
			extra := ""
			if v.Reused > 0 {
				extra += fmt.Sprintf(", %d from base", v.Reused)
			}
			if v.ReadBytes > 0 {
				extra += ", read " + humanBytes(v.ReadBytes)
			}
			if v.NoReuse != "" {
				extra += " (none from base: " + v.NoReuse + ")"
			}
			fmt.Fprintf(w, "  %-14s %-9s %d files, %s%s%s\n", v.ID, v.FileSystem, v.Files, humanBytes(v.Bytes), extra, skipText(v.Skipped))
			for _, e := range v.Errors {
				fmt.Fprintf(w, "    %s: %s\n", e.Reason, e.Error())
			}
		}
	}
	s := o.Stats
	fmt.Fprintf(w, "\n%d targets (%d failed), %d files, %s in %.1fs; %d cached; %d from base; %s read from disks; %d rules; %d findings\n",
		s.Targets, s.TargetsFailed, s.Files, humanBytes(s.Bytes), s.Seconds, s.Cached, s.Reused, humanBytes(s.ReadBytes), s.Rules, s.Findings)
	res := string(o.Result.Status)
	if s.TargetsFailed > 0 {
		res += fmt.Sprintf(", %d targets failed", s.TargetsFailed)
	}
	if !o.Result.Complete() {
		res += " (not scanned:" + skipText(o.Result.NotScanned)[len("; skipped:"):] + ")"
	}
	fmt.Fprintf(w, "result: %s\n", res)
}

func skipText(m map[string]int64) string {
	var keys []string
	for k, n := range m {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return "; skipped: " + strings.Join(parts, ", ")
}

// parseSize reads "256MiB", "1.5GB", "4096".
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return int64(v * mult), nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress draws one self-erasing status line on a terminal.
type progress struct {
	mu      sync.Mutex
	w       io.Writer
	on      bool
	start   time.Time
	last    time.Time
	printed bool
}

func newProgress(w io.Writer, on bool) *progress {
	return &progress{w: w, on: on, start: time.Now()}
}

func (p *progress) update(pr scanner.Progress) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := float64(pr.Bytes) / max(el, 0.001)
	eta := "?"
	if pr.Listed && rate > 0 {
		eta = time.Duration(float64(pr.TotalBytes-pr.Bytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s: %d/%d files, %s/%s, %s/s, ETA %s",
		pr.Target, pr.Files, pr.TotalFiles, humanBytes(pr.Bytes), humanBytes(pr.TotalBytes), humanBytes(int64(rate)), eta)
	p.printed = true
}

func (p *progress) clear() {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.printed {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.printed = false
	}
}

// basesFirst orders the targets so that a disk that is a backing layer of
// another target is scanned before it (the deepest base first), so that
// its record serves the disks above it; the order is otherwise kept.
// Targets that do not open are left where they are (their error comes
// when they are scanned).
func basesFirst(targets []string, diskOpts func() *snapshot.Options) []int {
	depth := make(map[string]int, len(targets)) // real path -> deepest place in another's chain
	real := make([]string, len(targets))
	for i, t := range targets {
		real[i] = image.RealPath(t)
		if fi, err := os.Stat(t); err != nil || fi.IsDir() {
			continue
		}
		d, err := snapshot.Open(t, diskOpts())
		if err != nil {
			continue
		}
		for k, l := range d.Chain {
			if k > 0 {
				p := image.RealPath(l.Path)
				depth[p] = max(depth[p], k)
			}
		}
		d.Close()
	}
	idx := make([]int, len(targets))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return depth[real[idx[a]]] > depth[real[idx[b]]] })
	return idx
}
