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

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
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
	rig.Main(m, &servers, rig.Need{Graphite: true, Consul: true, ACLConsul: true})
}

func killSelf() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }

func crashChild(cfgPath, at string) {
	reg := registry()
	if kind, sum, ok := strings.Cut(os.Getenv("DROPSHIP_CRASH_FLEET"), ":"); ok {
		ff := switchBackFleet(kind, sum)
		reg.Fleets = map[string]fleet.Factory{"consul": func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return ff, nil }}
	}
	cfg, diags := agent.Load(cfgPath, reg, nil)
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
// (of a staging), with a release staged and waiting, and at each instant
// of the switch, then checks that the destination is
// a complete release and a restarted agent cleans up and carries on.
func TestCrashRecovery(t *testing.T) {
	for _, at := range []string{"unpack", "staged", "verified", "linked", "switched"} {
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

// crashRollback runs `dropship rollback` in a child process that
// SIGKILLs itself at point.
func crashRollback(t *testing.T, e *env, point string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DROPSHIP_CRASH_CONFIG="+filepath.Join(e.dir, "dropship.hcl"), "DROPSHIP_CRASH_AT="+point, "DROPSHIP_CRASH_OP=rollback")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed at %s: %v\n%s", point, err, stderr.String())
	}
}

// An operator rollback killed after it saved its intent, before or after
// its switch, is completed by the restarted agent: the release rolled
// back to is current and the state says so, the release rolled away from
// is not installed again and none of its hooks run; the after hooks and
// the rollback chain of the release rolled back to run once (they had
// not run when the process died). Run again instead, the rollback
// completes the one interrupted and goes no further back.
func TestCrashDuringRollbackIsCompleted(t *testing.T) {
	for _, tc := range []struct {
		at, restart string
		switched    bool
	}{
		{"switched:operator", "check", true},
		{"intent:operator", "check", false},
		{"switched:operator", "rollback", true},
	} {
		t.Run(tc.at+"/"+tc.restart, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.config(fmt.Sprintf(`
  before "script" { command = "echo before $(cat VERSION) >> %[1]s" }
  after "script" { command = "echo after $(cat VERSION) >> %[1]s" }
  rollback "script" { command = "echo rollback $(cat VERSION) >> %[1]s" }`, e.log))
			r := e.runner(cfg)
			for _, v := range []string{"v0", "v1", "v2"} {
				e.publish(v)
				e.check(r, agent.ResultInstalled)
			}
			before := e.state_(r)
			v1, v2 := before.Releases[1], before.Releases[2]
			hooksBefore := e.hookLog()

			crashRollback(t, e, tc.at)
			if want := map[bool]string{true: "v1", false: "v2"}[tc.switched]; e.current() != want {
				t.Fatalf("killed at %s, the destination has %q, want %q", tc.at, e.current(), want)
			}
			if e.hookLog() != hooksBefore {
				t.Fatalf("hooks ran before the crash point:\n%s", strings.TrimPrefix(e.hookLog(), hooksBefore))
			}
			if sb := e.state_(r).SwitchBack; sb == nil || sb.Target.ID != v1.ID || sb.From != v2.ID || sb.FromChecksum != v2.Checksum || sb.Reason != "operator" {
				t.Fatalf("the intent saved before the crash: %+v", sb)
			}

			r = e.runner(cfg)
			if tc.restart == "check" {
				e.check(r, agent.ResultSkipped)
			} else if got, err := r.Rollback(context.Background(), ""); err != nil || got.ID != v1.ID {
				t.Fatalf("the rollback run again: %s, %v", got.ID, err)
			}
			if v := e.current(); v != "v1" {
				t.Fatalf("after restart the destination has %q, want v1", v)
			}
			st := e.state_(r)
			if st.Release != v1.ID || st.Checksum != v1.Checksum || st.RolledBackFrom != v2.Checksum || st.SwitchBack != nil {
				t.Fatalf("state after the restart: release %s checksum %s rolled back from %s, intent %+v", st.Release, st.Checksum, st.RolledBackFrom, st.SwitchBack)
			}
			if last := st.History[len(st.History)-1]; last.Result != "rollback" || last.Release != v1.ID {
				t.Fatalf("last attempt recorded: %+v", last)
			}
			if got := r.Status(); tc.restart == "check" && got.Release != st.Release {
				t.Fatalf("status says %q, state %q", got.Release, st.Release)
			}
			if got, want := strings.TrimPrefix(e.hookLog(), hooksBefore), "after v1\nrollback v1\n"; got != want {
				t.Fatalf("hooks run after the restart:\n%s\nwant:\n%s", got, want)
			}
			// The next checks leave it there and run nothing.
			e.check(r, agent.ResultSkipped)
			if v := e.current(); v != "v1" || e.hookLog() != hooksBefore+"after v1\nrollback v1\n" {
				t.Fatalf("a later check left %q and ran:\n%s", v, strings.TrimPrefix(e.hookLog(), hooksBefore))
			}
		})
	}
}

// blockedFleet is a fakeFleet whose breakers also block an install.
type blockedFleet struct{ *fakeFleet }

func (f blockedFleet) Blocked(ctx context.Context, service, sum string) (string, error) {
	st, _ := f.Status(ctx, service)
	if st.Breaker(sum) != nil {
		return "the breaker of " + sum + " is tripped", nil
	}
	return "", nil
}

// switchBackFleet is a fleet that pins this host to checksum sum (kind
// "pin") or has tripped the breaker of sum (kind "revert").
func switchBackFleet(kind, sum string) blockedFleet {
	ff := &fakeFleet{}
	if kind == "pin" {
		ff.st.Pins = []fleet.Pin{{Nodes: "test-*", Target: sum, Who: "ops"}}
	} else {
		ff.st.Breakers = []fleet.Breaker{{Checksum: sum, Node: "other", Phase: "gate"}}
	}
	return blockedFleet{ff}
}

// A switch to a pinned release or a fleet revert killed after it saved
// its intent: after the switch, the restarted agent records it and runs
// the after hooks (and for a pin the rollback chain) of the release it
// went back to, once; before the switch, the intent is dropped and the
// next check, which reads the fleet again, switches in its slot. Either
// way the release left is not installed again.
func TestCrashDuringPinOrRevertIsCompleted(t *testing.T) {
	for _, tc := range []struct {
		kind     string
		switched bool
		result   agent.Result
	}{
		{"pin", true, agent.ResultSkipped},
		{"pin", false, agent.ResultRolledBack},
		{"revert", true, agent.ResultSkipped},
		{"revert", false, agent.ResultReverted},
	} {
		at := map[bool]string{true: "switched:", false: "intent:"}[tc.switched] + tc.kind
		t.Run(at, func(t *testing.T) {
			e := newEnv(t)
			hooks := fmt.Sprintf(`
  after "script" { command = "echo after $(cat VERSION) >> %[1]s" }
  rollback "script" { command = "echo rollback $(cat VERSION) >> %[1]s" }`, e.log)
			r := e.runner(e.config(hooks))
			for _, v := range []string{"v1", "v2"} {
				e.publish(v)
				e.check(r, agent.ResultInstalled)
			}
			before := e.state_(r)
			v1, v2 := before.Releases[0], before.Releases[1]
			hooksBefore := e.hookLog()

			path := filepath.Join(e.dir, "pin.hcl")
			src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
lock "consul" {}
service "app" {
  check_interval = "1s"
  sequential     = true
  artifact "file" {
    path        = %q
    destination = %q
  }
  rollout {
    waves      = ["100%%"]
    on_failure = "revert"
  }
  %s
}
`, e.state, e.store, e.dest, hooks)
			sum := v1.Checksum
			if tc.kind == "revert" {
				sum = v2.Checksum
			}
			if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "DROPSHIP_CRASH_CONFIG="+path, "DROPSHIP_CRASH_AT="+at, "DROPSHIP_CRASH_FLEET="+tc.kind+":"+sum)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed at %s: %v\n%s", at, err, stderr.String())
			}
			if want := map[bool]string{true: "v1", false: "v2"}[tc.switched]; e.current() != want || e.hookLog() != hooksBefore {
				t.Fatalf("killed at %s: destination %q, want %q; hooks ran:\n%s", at, e.current(), want, strings.TrimPrefix(e.hookLog(), hooksBefore))
			}
			if sb := e.state_(r).SwitchBack; sb == nil || sb.Target.ID != v1.ID || sb.Reason != tc.kind {
				t.Fatalf("the intent saved before the crash: %+v", sb)
			}

			ff := switchBackFleet(tc.kind, sum)
			reg := registry()
			reg.Fleets = map[string]fleet.Factory{"consul": func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return ff, nil }}
			cfg, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			r, err = agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			e.check(r, tc.result)
			st := e.state_(r)
			// A revert leaves the refusal of the checksum to the fleet's breaker.
			from, result, ran := v2.Checksum, "rollback", "after v1\nrollback v1\n"
			if tc.kind == "revert" {
				from, result, ran = "", "revert", "after v1\n"
			}
			if e.current() != "v1" || st.Release != v1.ID || st.RolledBackFrom != from || st.SwitchBack != nil {
				t.Fatalf("after restart: destination %q, state release %s rolled back from %s, intent %+v", e.current(), st.Release, st.RolledBackFrom, st.SwitchBack)
			}
			if last := st.History[len(st.History)-1]; last.Result != result || last.Release != v1.ID {
				t.Fatalf("last attempt recorded: %+v", last)
			}
			if got, want := strings.TrimPrefix(e.hookLog(), hooksBefore), ran; got != want {
				t.Fatalf("hooks run after the restart:\n%s\nwant:\n%s", got, want)
			}
			e.check(r, agent.ResultSkipped)
			if e.current() != "v1" || e.hookLog() != hooksBefore+ran {
				t.Fatalf("a later check left %q and ran:\n%s", e.current(), strings.TrimPrefix(e.hookLog(), hooksBefore))
			}
		})
	}
}
