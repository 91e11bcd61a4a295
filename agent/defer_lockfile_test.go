package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
)

// The lock file belongs to the application, whose user may put anything
// at its path: a FIFO (whose opening for reading waits for a writer) or
// a link to a file the agent should not open. Either is refused with a
// clear error, at once, and the release stays as it was; nothing at the
// link's target is opened.
func TestDeferLockFileNotARegularFile(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			lock := filepath.Join(e.dir, "busy.lock")
			ff := &recordingFleet{}
			r := e.runner(e.deferConfig(ff, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock)))
			e.publish("v1")
			e.check(r, agent.ResultInstalled)
			switch kind {
			case "fifo":
				if err := syscall.Mkfifo(lock, 0o644); err != nil {
					t.Fatal(err)
				}
				// Should the agent wait on it, a writer lets it go
				// once the test has failed.
				t.Cleanup(func() {
					if f, err := os.OpenFile(lock, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
						f.Close()
					}
				})
			case "symlink":
				target := filepath.Join(e.dir, "elsewhere")
				os.WriteFile(target, nil, 0o644)
				holdLock(t, target)
				if err := os.Symlink(target, lock); err != nil {
					t.Fatal(err)
				}
			}
			e.publish("v2")
			done := make(chan agent.Outcome, 1)
			go func() { done <- r.Check(context.Background()) }()
			var out agent.Outcome
			select {
			case out = <-done:
			case <-time.After(time.Minute):
				t.Fatalf("the check still waits on a %s at the lock file's path", kind)
			}
			if out.Result != agent.ResultError || out.Phase != agent.PhaseDefer || out.Err == nil ||
				!strings.Contains(out.Err.Error(), lock) || !strings.Contains(out.Err.Error(), "regular file") {
				t.Fatalf("result %s, phase %s, err %v", out.Result, out.Phase, out.Err)
			}
			if e.current() != "v1" {
				t.Fatalf("running %q", e.current())
			}
		})
	}
}
