package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// A kept release whose directory was removed by hand is never switched
// to: an operator's rollback to it is refused and the destination stays
// on the current release.
func TestRollbackToARemovedReleaseIsRefused(t *testing.T) {
	e, r := installedTwice(t)
	st := e.state_(r)
	os.RemoveAll(filepath.Join(r.Dir(), "releases", st.Releases[0].ID))
	if _, err := r.Rollback(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "not there") {
		t.Fatalf("rollback to a removed release: %v", err)
	}
	if got := e.current(); got != "v2" {
		t.Fatalf("destination reads %q after a refused rollback", got)
	}
	if got := e.state_(r); got.Release != st.Release || got.RolledBackFrom != "" {
		t.Fatalf("state changed by a refused rollback: release %s, rolled back from %q", got.Release, got.RolledBackFrom)
	}
}

// A release that fails its checks is not rolled back into a directory
// removed by hand: the destination stays on the failed release, whole,
// rather than pointing nowhere.
func TestFailedCheckKeepsReleaseWhenThePreviousOneIsGone(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(`check "script" { command = "! grep -q v2 \"$DROPSHIP_RELEASE_DIR/VERSION\"" }`))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	os.RemoveAll(filepath.Join(r.Dir(), "releases", e.state_(r).Release))
	e.publish("v2")
	out := e.check(r, agent.ResultFailed)
	if !strings.Contains(out.Err.Error(), "rollback failed") {
		t.Fatalf("error %v", out.Err)
	}
	if got := e.current(); got != "v2" {
		t.Fatalf("destination reads %q: switched back into a removed release", got)
	}
}

// The current release's directory removed by hand leaves the destination
// pointing nowhere: the next check installs the release again instead of
// finding nothing to do.
func TestCurrentReleaseRemovedByHandIsInstalledAgain(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	os.RemoveAll(filepath.Join(r.Dir(), "releases", e.state_(r).Release))
	e.check(r, agent.ResultInstalled)
	if got := e.current(); got != "v1" {
		t.Fatalf("destination reads %q", got)
	}
	e.check(r, agent.ResultNoop)
}

// A failure recorded while the clock was far ahead (then set back) backs
// the checksum off for its back-off, not until the clock catches up.
func TestFailureFromAClockAheadDoesNotHoldForever(t *testing.T) {
	e := newEnv(t)
	flag := filepath.Join(e.dir, "fail")
	r := e.runner(e.config(fmt.Sprintf(`before "script" { command = "! test -e %s" }`, flag)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	os.WriteFile(flag, nil, 0o644)
	out := e.check(r, agent.ResultFailed)
	os.Remove(flag)
	st := e.state_(r)
	f := st.Failures[out.Checksum]
	f.Last = f.Last.AddDate(1, 0, 0)
	if err := st.Save(r.Dir()); err != nil {
		t.Fatal(err)
	}
	e.check(r, agent.ResultInstalled)
	if got := e.current(); got != "v2" {
		t.Fatalf("current %q", got)
	}
}
