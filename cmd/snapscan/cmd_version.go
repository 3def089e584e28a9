package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	register(command{name: "version", summary: "print snapscan's version", run: runVersion})
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = "dev-" + s.Value[:12]
			}
		}
	}
	fmt.Fprintf(stdout, "snapscan %s\n", v)
	for _, line := range versionExtras() {
		fmt.Fprintln(stdout, line)
	}
	return nil
}

// versionExtras lists the versions of engines linked in; files for other
// parts (the YARA scanner) add to it.
var versionExtras = func() []string { return nil }
