package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"
// (release builds); without it the version comes from the build info the
// go command records: the module version it derives from the repository
// (a tag, or a pseudo-version v0.0.0-TIME-COMMIT, +dirty for a modified
// tree), and the commit.
// commit (-X main.commit=...) names the commit where the go command
// records none (a git worktree, -buildvcs=false).
var (
	version = ""
	commit  = ""
)

func init() {
	register(command{name: "version", summary: "print snapscan's version, commit and engines", run: runVersion})
}

// buildVersion is what snapscan says about itself.
type buildVersion struct {
	SchemaVersion int    `json:"schema_version"`
	Version       string `json:"version"`
	Commit        string `json:"commit,omitempty"`
	CommitTime    string `json:"commit_time,omitempty"`
	Modified      bool   `json:"modified"` // built from a tree with uncommitted changes
	Go            string `json:"go"`
	Platform      string `json:"platform"`
}

func readVersion() buildVersion {
	v := buildVersion{SchemaVersion: schemaVersion, Version: version, Commit: commit, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if v.Version == "" {
			v.Version = "unknown (no build information)"
		}
		return v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if v.Commit == "" {
				v.Commit = s.Value
			}
		case "vcs.time":
			v.CommitTime = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	v.Modified = v.Modified || strings.HasSuffix(v.Version, "+dirty")
	if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v.Version = bi.Main.Version
	}
	if v.Version == "" && v.Commit != "" {
		// Built with -buildvcs but no module version (go run, go test).
		v.Version = "v0.0.0-" + v.Commit[:min(12, len(v.Commit))]
		if v.Modified {
			v.Version += "+dirty"
		}
	}
	if v.Version == "" {
		v.Version = "unknown (built without version control information: use scripts/build.sh)"
	}
	return v
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("version", "version [--json]", `Prints snapscan's version (the release tag given at build time, else the
module version the go command derived from the repository: a tag or
v0.0.0-TIME-COMMIT, +dirty when the tree had uncommitted changes), the commit it
was built from, the Go release, and the YARA engine and signature set in use
(for the configuration at $SNAPSCAN_CONFIG or /etc/snapscan/appliance.yaml).

Examples:
  snapscan version
  snapscan version --json | jq -r .commit
`, stderr)
	asJSON := f.Bool("json", false, "print one JSON object")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("no arguments expected")
	}
	v := readVersion()
	extras := versionExtras()
	if *asJSON {
		out := struct {
			buildVersion
			Engines []string `json:"engines"`
		}{v, extras}
		if out.Engines == nil {
			out.Engines = []string{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(stdout, "snapscan %s\n", v.Version)
	if v.Commit != "" {
		mod := ""
		if v.Modified {
			mod = " (modified)"
		}
		fmt.Fprintf(stdout, "commit: %s%s %s\n", v.Commit, mod, v.CommitTime)
	}
	fmt.Fprintf(stdout, "go: %s %s\n", v.Go, v.Platform)
	for _, line := range extras {
		fmt.Fprintln(stdout, line)
	}
	return nil
}

// versionExtras lists the versions of engines linked in; files for other
// parts (the YARA scanner) add to it.
var versionExtras = func() []string { return nil }
