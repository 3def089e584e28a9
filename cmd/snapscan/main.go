// Command snapscan scans virtual-machine disk snapshots for malware with
// YARA, without an agent in the guest.
//
// Usage:
//
//	snapscan scan --rules PATH [flags] TARGET...  scan images, devices, folders, files
//	snapscan ls [--volume ID] [--hash] IMAGE [PATH]  an image's chain, volumes and files
//	snapscan cat [-o FILE] IMAGE VOLUME PATH      one file of an image
//	snapscan serve --config FILE                  the appliance
//	snapscan submit|status|scans|cancel|findings|datastores|pause|resume|signatures
//	                                              talk to a running appliance
//	snapscan sig keygen|build|verify|push|serve   signature bundles
//	snapscan completion bash|zsh                  shell completion
//	snapscan version                              versions
//
// Run "snapscan COMMAND --help" for a command's flags and examples. The exit
// statuses are the same for every command (exitcodes.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// command is one subcommand; run returns an error mapped to an exit code
// by main.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands []command

func register(c command) { commands = append(commands, c) }

// exitError carries an exit code (exitcodes.go) other than exitFailed, or
// one without a message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// usageError marks wrong command-line use (exit code 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "snapscan: agentless malware scanning of VM disk snapshots\n\nUsage: snapscan COMMAND [flags] [args]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'snapscan COMMAND --help' for a command's flags and examples.\n\n%s", exitStatusHelp)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// SNAPSCAN_CPUPROFILE=FILE writes a CPU profile of the run, for
	// performance work on real images.
	if p := os.Getenv("SNAPSCAN_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
		}
	}
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	pprof.StopCPUProfile() // writes the profile, if one was started
	os.Exit(code)
}

// run executes a command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var ee *exitError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ee):
			if ee.err != nil {
				fmt.Fprintf(stderr, "snapscan %s: %v\n", c.name, ee.err)
			}
			return ee.code
		default:
			// An error is a failure (exit 1 means findings).
			fmt.Fprintf(stderr, "snapscan %s: %v\n", c.name, err)
			return exitFailed
		}
	}
	fmt.Fprintf(stderr, "snapscan: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// newFlags makes a flag set for a command whose errors are returned, not
// printed with os.Exit.
func newFlags(name, usageLine, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: snapscan %s\n\n%s\n", usageLine, help)
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\n%s", exitStatusHelp)
	}
	return fs
}

// parse parses flags, allowing them to appear after positional arguments
// ("snapscan ls disk.img --json").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &exitError{code: 2}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
