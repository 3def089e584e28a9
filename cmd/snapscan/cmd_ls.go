package main

import (
	"context"
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
	FileSystem string `json:"filesystem"`
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
	Mode   string    `json:"mode"`
	MTime  time.Time `json:"mtime"`
	Target string    `json:"target,omitempty"`
}

type lsOutput struct {
	Image       string `json:"image"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	// Chain lists every file the disk reads, top first (image.Layer).
	Chain   []image.Layer `json:"chain"`
	Table   string        `json:"table,omitempty"`
	Volumes []lsVolume    `json:"volumes"`
	Files   []lsFile      `json:"files"`
	Errors  []string      `json:"errors,omitempty"`
}

func runLs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("ls", "ls [--json] [--format FMT] [--layer FILE]... [--allow-unnamed-layers] [--allow-dir DIR]... IMAGE",
		"Lists the image's format, the files it reads (its chain) and its volumes, then every file of\n"+
			"every readable volume. Symbolic links are listed, never followed. Exit status 1 when a volume\n"+
			"or file could not be read.", stderr)
	asJSON := f.Bool("json", false, "print one JSON object")
	diskOpts := diskFlags(f)
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		f.Usage()
		return usageError("want exactly one IMAGE, got %d arguments", len(pos))
	}
	d, err := snapshot.Open(pos[0], diskOpts())
	if err != nil {
		return err
	}
	defer d.Close()

	out := lsOutput{Image: pos[0], Format: d.Format, VirtualSize: d.Size, Chain: d.Chain, Table: d.Table,
		Volumes: []lsVolume{}, Files: []lsFile{}}
	for _, v := range d.Volumes {
		lv := lsVolume{ID: v.ID, FileSystem: v.FileSystem, Offset: v.Offset, Size: v.Size, Label: v.Label}
		if v.Err != nil {
			lv.Error = v.Err.Error()
			if !errors.Is(v.Err, snapshot.ErrUnsupported) {
				out.Errors = append(out.Errors, v.Err.Error())
			}
		}
		out.Volumes = append(out.Volumes, lv)
	}
	for _, v := range d.Volumes {
		if v.FS == nil {
			continue
		}
		err := vfs.WalkDir(v.FS, ".", 0, func(p string, e fs.DirEntry, err error) error {
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
				Mode: info.Mode().String(), MTime: info.ModTime().UTC()}
			if lf.Type == "symlink" {
				lf.Target, _ = fs.ReadLink(v.FS, p)
			}
			out.Files = append(out.Files, lf)
			return nil
		})
		if err != nil {
			return err
		}
	}

	if *asJSON {
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
		return &exitError{code: 1}
	}
	return nil
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
	for _, f := range o.Files {
		name := f.Path
		if f.Target != "" {
			name += " -> " + f.Target
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.Volume, f.Mode, f.Size, f.MTime.Format("2006-01-02 15:04"), name)
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
	format := f.String("format", "", "the disk's format: "+strings.Join(snapshot.Formats(), ", ")+
		"; raw means raw, never probed (default: probe by content)")
	f.Var(&layers, "layer", "a `FILE` the disk is made of: the image, then its extents and backing files (repeatable)")
	unnamed := f.Bool("allow-unnamed-layers", false, "let a probed image open backing files, parents and extents not given with\n"+
		"--layer (only for images whose headers the host wrote: a guest can write a header into a raw disk)")
	f.Var(&allow, "allow-dir", "also allow backing files and extents from `DIR` (repeatable)")
	return func() *snapshot.Options {
		return &snapshot.Options{Format: *format, Layers: layers, AllowUnnamedLayers: *unnamed, AllowedDirs: allow}
	}
}
