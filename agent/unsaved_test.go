package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dropshipd/dropship/agent"
)

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h (chattr +i).
const fsImmutableFL = 0x10

// setImmutable sets or clears the immutable flag of dir: nothing can be
// created in it, as on a full disk, while what is there stays readable.
func setImmutable(t *testing.T, dir string, on bool) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		if on {
			flags |= fsImmutableFL
		} else {
			flags &^= fsImmutableFL
		}
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
	}
	if err != nil {
		if on {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI runs as root on a filesystem with the immutable flag: cannot make %s immutable: %v", dir, err)
			}
			t.Skipf("cannot make %s immutable (needs root and a filesystem that has the flag): %v", dir, err)
		}
		t.Fatal(err)
	}
}

// blockStateAtSwitch makes the state directory unwritable once the
// update has switched, until the test's end or unblock.
func blockStateAtSwitch(t *testing.T, r *agent.Runner) (unblock func()) {
	blocked := false
	unblock = func() {
		if blocked {
			setImmutable(t, r.Dir(), false)
			blocked = false
		}
	}
	t.Cleanup(unblock)
	r.SetCrashHook(func(point string) {
		if point == "linked" && !blocked {
			setImmutable(t, r.Dir(), true)
			blocked = true
		}
	})
	return unblock
}

// An install whose state cannot be saved (a full disk) is not installed
// a second time: the next check saves what the first one could not, and
// finds nothing to do.
func TestUnsavedInstallIsSavedNotInstalledAgain(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(fmt.Sprintf(`
  before "script" { command = "echo before $(cat VERSION) >> %s" }`, e.log)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	unblock := blockStateAtSwitch(t, r)
	out := e.check(r, agent.ResultError)
	if !strings.Contains(out.Err.Error(), "state.json") || e.current() != "v2" {
		t.Fatalf("error %v, current %q", out.Err, e.current())
	}
	if st := e.state_(r); e.current() != "v2" || st.Release == "" {
		t.Fatalf("state %+v", st)
	}
	// What runs is shown while its record waits to be saved.
	cur, _ := os.Readlink(e.dest)
	if s := r.Status(); s.Release == "" || !strings.HasSuffix(cur, "/"+s.Release) {
		t.Fatalf("status shows release %q, destination %s", s.Release, cur)
	}
	rels, _, err := r.History()
	if err != nil {
		t.Fatal(err)
	}
	if last := rels[len(rels)-1]; !last.Current || !last.Unrecorded || !strings.HasSuffix(cur, "/"+last.ID) {
		t.Fatalf("history %+v, destination %s", rels, cur)
	}
	unblock()
	r.SetCrashHook(nil)
	e.check(r, agent.ResultNoop)
	if n := strings.Count(e.hookLog(), "before v2"); n != 1 {
		t.Fatalf("v2's before hooks ran %d times:\n%s", n, e.hookLog())
	}
	st := e.state_(r)
	if cur, _ := os.Readlink(e.dest); !strings.HasSuffix(cur, "/"+st.Release) || len(st.Releases) != 2 {
		t.Fatalf("saved state: release %s, %d kept; destination %s", st.Release, len(st.Releases), cur)
	}
}

// An operator's rollback whose state cannot be saved sticks: the next
// check does not reinstall the release rolled back from.
func TestUnsavedRollbackSticks(t *testing.T) {
	e, r := installedTwice(t)
	unblock := blockStateAtSwitch(t, r)
	if _, err := r.Rollback(context.Background(), ""); err == nil || e.current() != "v1" {
		t.Fatalf("rollback: %v, current %q", err, e.current())
	}
	unblock()
	r.SetCrashHook(nil)
	e.check(r, agent.ResultSkipped)
	if got := e.current(); got != "v1" {
		t.Fatalf("the release rolled back from was installed again: %q", got)
	}
	if st := e.state_(r); st.RolledBackFrom == "" {
		t.Fatal("the rollback was not saved")
	}
}

// A state that could not be saved is dropped when the file changed since
// (another process wrote it): that writer's state wins.
func TestUnsavedStateYieldsToAnotherWriter(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	unblock := blockStateAtSwitch(t, r)
	e.check(r, agent.ResultError)
	unblock()
	r.SetCrashHook(nil)
	// Another process (an agent started by mistake) installs meanwhile.
	other := e.runner(e.config(""))
	e.check(other, agent.ResultInstalled)
	want := e.state_(r)
	e.check(r, agent.ResultNoop)
	if got := e.state_(r); got.Release != want.Release {
		t.Fatalf("state overwritten: release %s, the other writer's %s", got.Release, want.Release)
	}
}

// A recovery that fails at start (a leftover that cannot be removed yet)
// is tried again at the next check, not taken as done: the update waits
// for it, and once it can run it cleans what the crash left.
func TestFailedRecoveryIsTriedAgain(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)

	// A fresh process finds a crash's leftover in staging that cannot be
	// removed for now.
	r = e.runner(e.config(""))
	left := filepath.Join(r.Dir(), "staging", "crashed-unpack")
	if err := os.MkdirAll(filepath.Join(left, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	setImmutable(t, left, true)
	t.Cleanup(func() {
		if _, err := os.Stat(left); err == nil {
			setImmutable(t, left, false)
		}
	})
	e.publish("v2")
	out := e.check(r, agent.ResultError)
	if !strings.Contains(out.Err.Error(), "interrupted update") || e.current() != "v1" {
		t.Fatalf("error %v, current %q", out.Err, e.current())
	}
	out = e.check(r, agent.ResultError)
	if out.Err == nil || !strings.Contains(out.Err.Error(), "interrupted update") {
		t.Fatalf("the second check did not try the recovery again: %+v", out)
	}

	setImmutable(t, left, false)
	e.check(r, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatalf("current %q", e.current())
	}
	if entries, _ := os.ReadDir(filepath.Join(r.Dir(), "staging")); len(entries) != 0 {
		t.Fatalf("the crash's leftovers stay in staging: %v", entries)
	}
}

// A destination that points at a release directory which is gone (removed
// by hand) is not listed as a release the agent switched to and could not
// record; one outside the releases is not listed at all.
func TestUnsavedHistoryIgnoresMissingOrForeignTarget(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	for _, target := range []string{
		filepath.Join(r.Dir(), "releases", "20990101T000000.000Z-gone"),
		t.TempDir(),
	} {
		tmp := e.dest + ".test-tmp"
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, e.dest); err != nil {
			t.Fatal(err)
		}
		rels, _, err := r.History()
		if err != nil {
			t.Fatal(err)
		}
		for _, rel := range rels {
			if rel.Current || rel.Unrecorded {
				t.Fatalf("destination %s: history %+v", target, rels)
			}
		}
	}
}

// A rollback whose intent cannot be saved (a full disk) is refused before
// anything changes: the current release stays and no hook runs.
func TestRollbackRefusedWhenItsIntentCannotBeSaved(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(fmt.Sprintf(`
  after "script" { command = "echo after $(cat VERSION) >> %s" }`, e.log)))
	for _, v := range []string{"v1", "v2"} {
		e.publish(v)
		e.check(r, agent.ResultInstalled)
	}
	hooksBefore := e.hookLog()
	setImmutable(t, r.Dir(), true)
	t.Cleanup(func() { setImmutable(t, r.Dir(), false) })
	_, err := r.Rollback(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), "intent") || e.current() != "v2" || e.hookLog() != hooksBefore {
		t.Fatalf("rollback: %v; current %q; hooks ran:\n%s", err, e.current(), strings.TrimPrefix(e.hookLog(), hooksBefore))
	}
	setImmutable(t, r.Dir(), false)
	if st := e.state_(r); st.SwitchBack != nil || st.RolledBackFrom != "" {
		t.Fatalf("state after a refused rollback: %+v", st)
	}
	if _, err := r.Rollback(context.Background(), ""); err != nil || e.current() != "v1" {
		t.Fatalf("rollback once the disk has room: %v, current %q", err, e.current())
	}
}
