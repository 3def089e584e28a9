package snapshot

import (
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/qcow2"
	"github.com/snapscan/snapscan/snapshot/image/vhd"
	"github.com/snapscan/snapscan/snapshot/image/vhdx"
	"github.com/snapscan/snapscan/snapshot/image/vmdk"
)

// formats is the one registry of container formats, in detection order
// (image.Detect: each says "not mine" with image.ErrWrongType); raw is
// what is left when none matches. A declared format (Options.Format) is
// looked up here by name.
var formats = []image.Format{
	{Name: "qcow2", New: func(f image.File, o *image.Options) (image.Image, error) { return qcow2.New(f, o) }},
	{Name: "vmdk", New: func(f image.File, o *image.Options) (image.Image, error) { return vmdk.New(f, o) }},
	{Name: "vhdx", New: func(f image.File, o *image.Options) (image.Image, error) { return vhdx.New(f, o) }},
	{Name: "vhd", New: func(f image.File, o *image.Options) (image.Image, error) { return vhd.New(f, o) }},
}

// Formats returns the names of the formats Options.Format accepts.
func Formats() []string {
	names := []string{"raw"}
	for _, f := range formats {
		names = append(names, f.Name)
	}
	return names
}

func lookupFormat(name string) (image.Format, bool) {
	for _, f := range formats {
		if f.Name == name {
			return f, true
		}
	}
	return image.Format{}, false
}
