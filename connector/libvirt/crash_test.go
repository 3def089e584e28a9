package libvirt_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/connector/libvirt"
)

// The child process the crash tests kill: it runs a freeze (and, with
// childRelease set, its release) through the connector and is sent
// SIGKILL by its parent at a random moment.
const (
	childEnv     = "SNAPSCAN_LIBVIRT_CHILD"
	childSocket  = "SNAPSCAN_LIBVIRT_SOCKET"
	childVM      = "SNAPSCAN_LIBVIRT_VM"
	childRelease = "SNAPSCAN_LIBVIRT_RELEASE"
)

var crashRuns = flag.Int("crash-runs", 3, "freezes killed at random moments in TestCrashRecovery (bench/connector-libvirt.sh runs 20)")

func runChild() int {
	ctx := context.Background()
	c, err := libvirt.Dial(ctx, libvirt.Config{Socket: os.Getenv(childSocket)})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	f, err := c.Freeze(ctx, os.Getenv(childVM), connector.Options{TrackChanges: true})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("FROZEN", f.ID)
	if os.Getenv(childRelease) != "" {
		if _, err := c.Release(ctx, f); err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		fmt.Println("RELEASED")
	}
	time.Sleep(time.Minute) // the parent kills it before this ends
	return 0
}

// TestCrashRecovery kills the process that freezes (or releases) the
// running guest at a random moment, then shows that the next run's
// cleanup (Stale + ReleaseStale) leaves the chain as it was and no
// overlay or snapshot behind, and that the guest went on writing.
func TestCrashRecovery(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx := context.Background()
	c := dial(t, e)
	vm := vmByName(t, c, "guest1")
	chainBefore := fmt.Sprint(chainOf(t, e, "guest1"))
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var killedFrozen, killedEarly, repaired int
	for run := 0; run < *crashRuns; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=1", childSocket+"="+e.d.Socket, childVM+"="+vm.ID)
		withRelease := rng.IntN(2) == 0
		if withRelease {
			cmd.Env = append(cmd.Env, childRelease+"=1")
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 8)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill at a random moment: during the snapshot call (the child
		// takes ~50-300 ms to get there), or after it, or mid-release.
		delay := time.Duration(rng.IntN(2500)) * time.Millisecond
		timer := time.After(delay)
		frozen := false
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				if strings.HasPrefix(l, "ERROR") {
					t.Fatalf("child: %s", l)
				}
				if strings.HasPrefix(l, "FROZEN") {
					frozen = true
				}
			case <-timer:
				break wait
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if frozen {
			killedFrozen++
		} else {
			killedEarly++
		}
		// The next start: everything snapscan made before now is stale.
		n, err := cleanup(ctx, c)
		if err != nil {
			t.Fatalf("run %d (killed after %v, release %v): cleanup: %v", run, delay, withRelease, err)
		}
		repaired += n
		if ch := fmt.Sprint(chainOf(t, e, "guest1")); ch != chainBefore {
			t.Fatalf("run %d: chain after cleanup %s, before %s", run, ch, chainBefore)
		}
		if left := leftovers(t, e, e.g); len(left) != 0 {
			t.Fatalf("run %d: left behind after cleanup: %v", run, left)
		}
	}
	before := e.g.LastWrite(t)
	time.Sleep(500 * time.Millisecond)
	if e.g.LastWrite(t) <= before {
		t.Fatal("the guest stopped writing")
	}
	t.Logf("%d runs killed: %d after the freeze was made, %d before it was reported; %d stale freezes released; 0 left", *crashRuns, killedFrozen, killedEarly, repaired)
}

// cleanup is what a starting appliance does: release every freeze
// snapscan left. A snapshot call still running inside libvirtd when its
// caller was killed completes there, so it waits briefly for one.
func cleanup(ctx context.Context, c *libvirt.Connector) (int, error) {
	n := 0
	deadline := time.Now().Add(10 * time.Second)
	for {
		stale, err := c.Stale(ctx, time.Now().Add(time.Second))
		if err != nil {
			return n, err
		}
		for _, s := range stale {
			if _, err := c.ReleaseStale(ctx, s); err != nil {
				return n, err
			}
			n++
		}
		if len(stale) == 0 {
			// Nothing left; look once more shortly, in case libvirtd was
			// still finishing the killed child's call.
			time.Sleep(300 * time.Millisecond)
			again, err := c.Stale(ctx, time.Now().Add(time.Second))
			if err != nil || len(again) == 0 || time.Now().After(deadline) {
				return n, err
			}
		}
	}
}
