package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

func init() {
	register(command{name: "ls", summary: "list a disk image's format, volumes and files", run: runLs})
}

type lsVolume struct {
	ID         string `json:"id"`
	FileSystem string `json:"file_system"`
	Offset     int64  `json:"offset"`
	Size       int64  `json:"size"`
	Label      string `json:"label"`
	Error      string `json:"error"` // why the volume is not read; "" when it is
}

type lsFile struct {
	Volume string    `json:"volume"`
	Path   string    `json:"path"`
	Type   string    `json:"type"`
	Size   int64     `json:"size"`
	Mode   string    `json:"mode"` // as ls -l writes it: drwxr-xr-x, lrwxrwxrwx, -rwsr-xr-x
	MTime  time.Time `json:"mtime"`
	Target string    `json:"target,omitempty"`
	// SHA256 is the content's digest, hex (--hash, regular files only).
	SHA256 string `json:"sha256,omitempty"`
}

type lsOutput struct {
	SchemaVersion int    `json:"schema_version"`
	Image         string `json:"image"`
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual_size"`
	// Chain lists every file the disk reads, top first (image.Layer).
	Chain   []image.Layer `json:"chain"`
	Table   string        `json:"table,omitempty"`
	Volumes []lsVolume    `json:"volumes"`
	Files   []lsFile      `json:"files"`
	Errors  []string      `json:"errors,omitempty"`
	hashed  bool          // --hash: files carry SHA256
}

const lsHelp = `Lists the image's format, the files it reads (its chain of backing files and
extents, top first, each with its format, size and the name the file above gives
it) and its volumes, then every file of every readable volume: type and mode as
ls -l writes them (d directory, l symbolic link), size, modification time
(ISO 8601, UTC) and path. Symbolic links are listed with their target, never
followed. With PATH, lists only PATH and what is below it (in every volume that
has it, or in --volume's).

Examples:
  snapscan ls vm42.qcow2
  snapscan ls --volume p2 vm42.qcow2 /etc
  snapscan ls --hash --json --volume lvm/vg0/root vm42.qcow2 /usr/bin > files.json
`

func runLs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("ls", "ls [--format text|json] [--volume ID] [--hash] [--disk-format FMT] [--layer FILE]... [--allow-unnamed-layers] [--allow-dir DIR]... IMAGE [PATH]",
		lsHelp, stderr)
	format := f.String("format", "text", "output `FORMAT`: text or json (one object: {schema_version, image, format, chain,\nvolumes, files})")
	asJSON := f.Bool("json", false, "the same as --format json")
	volume := f.String("volume", "", "list only volume `ID` (p1, disk, lvm/vg/lv: the ids ls prints)")
	hash := f.Bool("hash", false, "read every regular file and show its SHA-256")
	diskOpts := diskFlags(f)
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		*format = "json"
	case *format != "text" && *format != "json":
		return usageError("--format %q: want text or json (the disk's format is --disk-format)", *format)
	}
	if len(pos) != 1 && len(pos) != 2 {
		f.Usage()
		return usageError("want IMAGE and at most one PATH, got %d arguments", len(pos))
	}
	root := "."
	if len(pos) == 2 {
		root = volumePath(pos[1])
	}
	d, err := snapshot.Open(pos[0], diskOpts())
	if err != nil {
		return err
	}
	defer d.Close()
	vols := d.Volumes
	if *volume != "" {
		v, err := d.Volume(*volume)
		if err != nil {
			return usageError("--volume: %v", err)
		}
		vols = []*snapshot.Volume{v}
	}

	out := lsOutput{SchemaVersion: schemaVersion, Image: pos[0], Format: d.Format, VirtualSize: d.Size, Chain: d.Chain, Table: d.Table,
		Volumes: []lsVolume{}, Files: []lsFile{}, hashed: *hash}
	for _, v := range vols {
		lv := lsVolume{ID: v.ID, FileSystem: v.FileSystem, Offset: v.Offset, Size: v.Size, Label: v.Label}
		if v.Err != nil {
			lv.Error = v.Err.Error()
			if !errors.Is(v.Err, snapshot.ErrUnsupported) {
				out.Errors = append(out.Errors, v.Err.Error())
			}
		}
		out.Volumes = append(out.Volumes, lv)
	}
	found := false // root exists on some volume
	for _, v := range vols {
		if v.FS == nil {
			continue
		}
		if root != "." {
			if _, err := fs.Stat(v.FS, root); errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		found = true
		err := vfs.WalkDir(v.FS, root, 0, func(p string, e fs.DirEntry, err error) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				// The volume's errors name the disk, the volume and the
				// path already (its label): one prefix per layer.
				out.Errors = append(out.Errors, err.Error())
				return nil
			}
			if p == "." {
				return nil
			}
			info, err := e.Info()
			if err != nil {
				out.Errors = append(out.Errors, err.Error())
				return nil
			}
			lf := lsFile{Volume: v.ID, Path: "/" + p, Type: fileType(info.Mode()), Size: info.Size(),
				Mode: modeString(info.Mode()), MTime: info.ModTime().UTC()}
			if lf.Type == "symlink" {
				lf.Target, _ = fs.ReadLink(v.FS, p)
			}
			if *hash && lf.Type == "file" {
				if lf.SHA256, err = hashFile(v.FS, p); err != nil {
					out.Errors = append(out.Errors, fmt.Sprintf("%s %s /%s: %v", pos[0], v.ID, p, err))
				}
			}
			out.Files = append(out.Files, lf)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if root != "." && !found {
		return fmt.Errorf("%s: %s: no such file or folder on %s", pos[0], pos[1], volumeNames(vols))
	}

	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		printLs(stdout, &out)
	}
	for _, e := range out.Errors {
		fmt.Fprintln(stderr, "snapscan ls:", e)
	}
	if len(out.Errors) > 0 {
		return &exitError{code: exitIncomplete}
	}
	return nil
}

func volumeNames(vols []*snapshot.Volume) string {
	if len(vols) == 1 {
		return "volume " + vols[0].ID
	}
	ids := make([]string, len(vols))
	for i, v := range vols {
		ids[i] = v.ID
	}
	return "any volume (" + strings.Join(ids, ", ") + ")"
}

// hashFile returns the hex SHA-256 of a file's content.
func hashFile(fsys fs.FS, name string) (string, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// modeString writes a mode as ls -l does ("lrwxrwxrwx", "-rwsr-xr-t"),
// where fs.FileMode.String writes "Lrwxrwxrwx" and "ugtrwxr-xr-x".
func modeString(m fs.FileMode) string {
	b := []byte("----------")
	switch {
	case m.IsDir():
		b[0] = 'd'
	case m&fs.ModeSymlink != 0:
		b[0] = 'l'
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice != 0:
		b[0] = 'c'
	case m&fs.ModeDevice != 0:
		b[0] = 'b'
	case m&fs.ModeNamedPipe != 0:
		b[0] = 'p'
	case m&fs.ModeSocket != 0:
		b[0] = 's'
	case m&fs.ModeIrregular != 0:
		b[0] = '?'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if m&(1<<uint(8-i)) != 0 {
			b[i+1] = rwx[i]
		}
	}
	special := func(i int, set bool, exec, noexec byte) {
		if !set {
			return
		}
		if b[i] == 'x' {
			b[i] = exec
		} else {
			b[i] = noexec
		}
	}
	special(3, m&fs.ModeSetuid != 0, 's', 'S')
	special(6, m&fs.ModeSetgid != 0, 's', 'S')
	special(9, m&fs.ModeSticky != 0, 't', 'T')
	return string(b)
}

func printLs(w io.Writer, o *lsOutput) {
	fmt.Fprintf(w, "image:  %s\nformat: %s\nsize:   %d bytes\n", o.Image, o.Format, o.VirtualSize)
	if o.Table != "" {
		fmt.Fprintf(w, "table:  %s\n", o.Table)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHAIN\tFORMAT\tSIZE\tFILE\tNAMED")
	for i, l := range o.Chain {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", i, l.Format, l.Size, l.Path, dash(l.Name))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tFILESYSTEM\tOFFSET\tSIZE\tLABEL\tNOTE")
	for _, v := range o.Volumes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", v.ID, dash(v.FileSystem), v.Offset, v.Size, dash(v.Label), v.Error)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hashCol := ""
	if o.hashed {
		hashCol = "SHA256\t"
	}
	fmt.Fprintf(tw, "VOLUME\tMODE\tSIZE\tMTIME\t%sPATH\n", hashCol)
	for _, f := range o.Files {
		name := f.Path
		if f.Target != "" {
			name += " -> " + f.Target
		}
		if o.hashed {
			hashCol = dash(f.SHA256) + "\t"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s%s\n", f.Volume, f.Mode, f.Size, f.MTime.Format(time.RFC3339), hashCol, name)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "other"
}

// volumePath turns a path as users write it ("/etc/hosts") into an fs.FS
// name ("etc/hosts").
func volumePath(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// diskFlags adds the flags that say how a disk is opened (its declared
// format, the files it is made of, the folders it may read) to f, and
// returns the snapshot.Options they give once f is parsed. Every command
// that opens a disk should use it.
func diskFlags(f *flag.FlagSet) func() *snapshot.Options {
	var allow, layers stringList
	format := f.String("disk-format", "", "the disk's `FORMAT`: "+strings.Join(snapshot.Formats(), ", ")+
		"; raw means raw, never probed (default: probe by content)")
	f.Var(&layers, "layer", "a `FILE` the disk is made of: the image, then its extents and backing files (repeatable)")
	unnamed := f.Bool("allow-unnamed-layers", false, "let a probed image open backing files, parents and extents not given with\n"+
		"--layer (only for images whose headers the host wrote: a guest can write a header into a raw disk)")
	f.Var(&allow, "allow-dir", "also allow backing files and extents from `DIR` (repeatable)")
	return func() *snapshot.Options {
		return &snapshot.Options{Format: *format, Layers: layers, AllowUnnamedLayers: *unnamed, AllowedDirs: allow}
	}
}
