package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// The test binary doubles as a crashing agent: with DROPSHIP_CRASH_CONFIG
// set, it runs one check of that config and SIGKILLs itself at
// DROPSHIP_CRASH_AT.
func TestMain(m *testing.M) {
	if cfgPath := os.Getenv("DROPSHIP_CRASH_CONFIG"); cfgPath != "" {
		crashChild(cfgPath, os.Getenv("DROPSHIP_CRASH_AT"))
		os.Exit(3) // not reached when the crash happened
	}
	rig.Main(m, &servers, rig.Need{Graphite: true})
}

func killSelf() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }

func crashChild(cfgPath, at string) {
	cfg, diags := agent.Load(cfgPath, registry(), nil)
	if diags.HasErrors() {
		fmt.Fprintln(os.Stderr, diags)
		os.Exit(4)
	}
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		os.Exit(5)
	}
	r.SetCrashHook(func(point string) {
		if point == at {
			killSelf()
		}
	})
	if os.Getenv("DROPSHIP_CRASH_OP") == "rollback" {
		_, err := r.Rollback(context.Background(), "")
		fmt.Fprintln(os.Stderr, "child finished: rollback", err)
		return
	}
	out := r.Check(context.Background())
	fmt.Fprintln(os.Stderr, "child finished:", out.Result, out.Err)
}

// TestCrashRecovery kills a real agent process (SIGKILL) during the unpack
// and at each instant of the switch, then checks that the destination is
// a complete release and a restarted agent cleans up and carries on.
func TestCrashRecovery(t *testing.T) {
	for _, at := range []string{"unpack", "verified", "linked", "switched"} {
		t.Run(at, func(t *testing.T) {
			e := newEnv(t)
			r := e.runner(e.config(""))
			e.publish("v1")
			e.check(r, agent.ResultInstalled)

			// A v2 big enough that the unpack is well under way when the
			// crashing source kills the process.
			var files []testutil.File
			for i := range 200 {
				files = append(files, testutil.File{Name: fmt.Sprintf("data/f%03d", i), Body: strings.Repeat(fmt.Sprint(i), 5000)})
			}
			e.publish("v2", files...)

			kind := "file"
			if at == "unpack" {
				kind = "crashy"
			}
			e.configKind(kind, "")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "DROPSHIP_CRASH_CONFIG="+filepath.Join(e.dir, "dropship.hcl"), "DROPSHIP_CRASH_AT="+at)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed: %v\n%s", err, stderr.String())
			}

			// Whatever the instant, destination is one whole release.
			switch v := e.current(); {
			case at == "switched" && v != "v2", at != "switched" && at != "linked" && v != "v1", at == "linked" && v != "v1":
				t.Fatalf("after a crash at %s, destination has %q", at, v)
			}
			if at == "switched" {
				if _, err := os.Stat(filepath.Join(e.dest, "data", "f199")); err != nil {
					t.Fatalf("switched to an incomplete release: %v", err)
				}
			}

			// Restart: leftovers are cleaned and v2 ends up installed once.
			r = e.runner(e.config(""))
			e.check(r, agent.ResultInstalled)
			if e.current() != "v2" {
				t.Fatalf("after restart, current = %q", e.current())
			}
			if left, _ := os.ReadDir(filepath.Join(r.Dir(), "staging")); len(left) != 0 {
				t.Fatalf("staging leftovers: %v", left)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(e.dest), ".app.dropship-tmp")); err == nil {
				t.Fatal("half-made switch link left behind")
			}
			e.check(r, agent.ResultNoop)
			st := e.state_(r)
			dirs, _ := os.ReadDir(filepath.Join(r.Dir(), "releases"))
			if len(dirs) != len(st.Releases) {
				t.Fatalf("%d release dirs, %d in state: orphans not pruned", len(dirs), len(st.Releases))
			}
		})
	}
}

// An operator rollback killed after its switch, before its state was
// saved: nothing records it and its hooks never ran, so the restarted
// agent installs the release its state names again, hooks and all (the
// destination, the state and what runs agree again), and the rollback
// can be run again.
func TestCrashDuringRollbackIsUndone(t *testing.T) {
	e, r := installedTwice(t)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DROPSHIP_CRASH_CONFIG="+filepath.Join(e.dir, "dropship.hcl"), "DROPSHIP_CRASH_AT=switched:operator", "DROPSHIP_CRASH_OP=rollback")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); err == nil || !ok || !ws.Signaled() {
		t.Fatalf("child was not killed: %v\n%s", err, stderr.String())
	}
	if v := e.current(); v != "v1" {
		t.Fatalf("the rollback did not get to its switch: destination has %q", v)
	}

	r = e.runner(e.config(""))
	e.check(r, agent.ResultInstalled)
	if v := e.current(); v != "v2" {
		t.Fatalf("after restart the destination has %q, the state says v2", v)
	}
	st := e.state_(r)
	if got := r.Status(); got.Release != st.Release {
		t.Fatalf("status says %q, state %q", got.Release, st.Release)
	}
	// Run again, the rollback goes through and sticks.
	if _, err := r.Rollback(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if v := e.current(); v != "v1" {
		t.Fatalf("the rollback run again left %q", v)
	}
	e.check(r, agent.ResultSkipped)
	if v := e.current(); v != "v1" {
		t.Fatalf("after the rollback, a check left %q", v)
	}
}
