package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/snapscan/snapscan/snapshot"
)

func init() {
	register(command{name: "cat", summary: "write one file of a disk image to stdout", run: runCat})
}

func runCat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("cat", "cat [--format FMT] [--layer FILE]... [--allow-unnamed-layers] [--allow-dir DIR]... IMAGE VOLUME PATH",
		"Writes the bytes of the file PATH (e.g. /etc/hosts, or /file.txt:stream for an NTFS\n"+
			"alternate data stream) of volume VOLUME (an id from 'snapscan ls': p1, disk, lvm/vg/lv) to stdout.", stderr)
	diskOpts := diskFlags(f)
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 3 {
		f.Usage()
		return usageError("want IMAGE VOLUME PATH, got %d arguments", len(pos))
	}
	d, err := snapshot.Open(pos[0], diskOpts())
	if err != nil {
		return err
	}
	defer d.Close()
	v, err := d.Volume(pos[1])
	if err != nil {
		return err
	}
	if v.FS == nil {
		return v.Err // names the disk and the volume
	}
	file, err := v.FS.Open(volumePath(pos[2]))
	if err != nil {
		return err // the volume's label names the disk and the volume
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return err
	}
	if info.IsDir() {
		return fmt.Errorf("%s %s: %s is a directory", pos[0], v.ID, pos[2])
	}
	buf := make([]byte, 1<<20)
	// Neither side may take over the copy (os.File.ReadFrom would use 32 KiB reads).
	if _, err := io.CopyBuffer(struct{ io.Writer }{stdout}, struct{ io.Reader }{file}, buf); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return err // a read error: the volume's label names disk, volume and path
		}
		return fmt.Errorf("%s %s %s: %w", pos[0], v.ID, pos[2], err) // writing stdout
	}
	return nil
}
