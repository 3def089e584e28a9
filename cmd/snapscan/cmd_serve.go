package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/snapscan/snapscan/appliance"
	"github.com/snapscan/snapscan/scanner"
)

// defaultConfig is where the systemd unit keeps the configuration.
const defaultConfig = "/etc/snapscan/appliance.yaml"

func init() {
	register(command{name: "serve", summary: "run the scanning appliance (API, queue, scanner)", run: runServe})
	prev := versionExtras
	versionExtras = func() []string { return append(prev(), applianceVersion()...) }
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("serve", "serve [--config FILE] [--check | --print-unit]",
		"Runs the appliance: the HTTP API (appliance/openapi.yaml), the scan queue, the\n"+
			"scanner and the signature receiver, until SIGTERM or SIGINT; running scans then\n"+
			"get server.shutdown_grace to finish. deploy/appliance.yaml documents the file.\n"+
			"A listener that other machines can reach must use TLS (server.tls) unless\n"+
			"server.allow_plain_http is true. --print-unit writes the systemd unit for this\n"+
			"configuration (deploy/install.sh installs it).\n"+`
Examples:
  snapscan serve --config /etc/snapscan/appliance.yaml --check
  snapscan serve --config /etc/snapscan/appliance.yaml
  snapscan serve --config /etc/snapscan/appliance.yaml --print-unit > /etc/systemd/system/snapscan.service
`, stderr)
	path := f.String("config", envOr("SNAPSCAN_CONFIG", defaultConfig), "configuration `FILE`")
	check := f.Bool("check", false, "check the configuration and exit")
	printUnit := f.Bool("print-unit", false, "check the configuration, then print the systemd unit that runs this binary with it\n(datastores reachable under the unit's sandboxing) and exit")
	pos, err := parse(f, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("no arguments expected")
	}
	cfg, err := appliance.Load(*path)
	if err != nil {
		return err
	}
	if *check {
		fmt.Fprintf(stdout, "%s: ok\n", *path)
		return nil
	}
	if *printUnit {
		abs, err := filepath.Abs(*path)
		if err != nil {
			return err
		}
		bin, err := os.Executable()
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, systemdUnit(cfg, abs, bin))
		return err
	}
	lvl := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[cfg.Log.Level]
	hopts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewJSONHandler(stderr, hopts)
	if cfg.Log.Format == "text" {
		h = slog.NewTextHandler(stderr, hopts)
	}
	log := slog.New(h)
	var events io.Writer
	switch cfg.Events.Log {
	case "none":
	case "stdout":
		events = stdout
	default:
		ef, err := os.OpenFile(cfg.Events.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("events.log: %w", err)
		}
		defer ef.Close()
		events = ef
	}
	a, err := appliance.New(ctx, cfg, appliance.Options{Logger: log, EventLog: events})
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Serve(ctx)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// applianceVersion names the YARA binding linked in and the signature
// set installed for the configuration at $SNAPSCAN_CONFIG (or the default
// path), read without compiling it.
func applianceVersion() []string {
	yara := "libyara " + scanner.EngineVersion
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/hillu/go-yara/v4" {
				yara += " (go-yara " + d.Version + ")"
			}
		}
	}
	return []string{"yara: " + yara, "signatures: " + appliance.InstalledSignatures(envOr("SNAPSCAN_CONFIG", defaultConfig))}
}
