package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// stagingDir lists what the service has under staging/.
func (e *env) staging() []string {
	es, _ := os.ReadDir(filepath.Join(e.state, "app", "staging"))
	var names []string
	for _, en := range es {
		names = append(names, en.Name())
	}
	return names
}

// A release the application defers is staged first, and stays staged
// across checks; one published over it replaces it (the staged one is
// removed, never installed: no hook runs for it); once the application
// lets go, the staged release is the one installed, not fetched again.
func TestStagedReleaseReplacedByAPublishOverIt(t *testing.T) {
	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	r := e.runner(e.deferConfig(&recordingFleet{}, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }
  before "script" { command = "echo before $DROPSHIP_CHECKSUM >> %s" }`, lock, e.log)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)

	release := holdLock(t, lock)
	e.publish("v2")
	v2 := e.check(r, agent.ResultDeferred).Checksum
	staged := e.staging()
	if st := r.Status(); st.Staged != v2 || len(staged) != 1 {
		t.Fatalf("deferred v2: status staged %q (want %s), staging %v", st.Staged, v2, staged)
	}
	e.check(r, agent.ResultDeferred)
	if again := e.staging(); strings.Join(again, ",") != strings.Join(staged, ",") {
		t.Fatalf("staged again at the next check: %v, then %v", staged, again)
	}

	e.publish("v3")
	v3 := e.check(r, agent.ResultDeferred).Checksum
	v3staged := e.staging()
	if st := r.Status(); st.Staged != v3 || len(v3staged) != 1 || v3staged[0] == staged[0] {
		t.Fatalf("v3 published over the staged v2: status staged %q (v3 %s), staging %v (v2's %v)", st.Staged, v3, v3staged, staged)
	}

	release()
	out := e.check(r, agent.ResultInstalled)
	if out.Checksum != v3 || out.Release != v3staged[0] || e.current() != "v3" {
		t.Fatalf("installed %s as %s (staged %v), running %q", out.Checksum, out.Release, v3staged, e.current())
	}
	if log := e.hookLog(); strings.Contains(log, v2) || !strings.Contains(log, v3) {
		t.Fatalf("hooks ran for:\n%s(v2 %s, v3 %s)", log, v2, v3)
	}
	if st := r.Status(); st.Staged != "" || len(e.staging()) != 0 {
		t.Fatalf("after the install: status staged %q, staging %v", st.Staged, e.staging())
	}
}

// With stage = "off", a deferred update has downloaded nothing.
func TestStageOffDownloadsNothingBeforeTheSlot(t *testing.T) {
	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	r := e.runner(e.deferConfig(&recordingFleet{}, fmt.Sprintf(`stage = "off"
  defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	release := holdLock(t, lock)
	e.publish("v2")
	e.check(r, agent.ResultDeferred)
	if st := r.Status(); st.Staged != "" || len(e.staging()) != 0 {
		t.Fatalf("stage = \"off\": status staged %q, staging %v", st.Staged, e.staging())
	}
	release()
	e.check(r, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatalf("running %q", e.current())
	}
}

// What a process killed while staging leaves (a partial release under
// staging/, the pieces of chunks it was writing into the chunk cache) is
// removed by the next start, before it looks at the artifact; the chunks
// the cache holds stay.
func TestNextStartCleansWhatAStagingLeft(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	r := e.runner(e.config(""))
	e.check(r, agent.ResultInstalled)
	app := filepath.Join(e.state, "app")
	left := []string{
		filepath.Join(app, "staging", "20261206T000000.000Z-0123456789ab", "bin", "run"),
		filepath.Join(app, "staging", ".download-123"),
		filepath.Join(app, "chunks", ".fill-123"),
		filepath.Join(app, "chunks", ".fetch-456"),
		filepath.Join(app, "chunks", ".skel-789"),
	}
	kept := filepath.Join(app, "chunks", "ab", "abcdef")
	for _, p := range append(left, kept) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r = e.runner(e.config(""))
	e.check(r, agent.ResultNoop)
	for _, p := range left {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	if len(e.staging()) != 0 {
		t.Errorf("staging/ holds %v", e.staging())
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("a chunk of the cache was removed: %v", err)
	}
}
