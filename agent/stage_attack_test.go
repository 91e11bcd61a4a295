package agent_test

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A release staged while the application deferred it is not installed
// once a release signed later has been installed here meanwhile (by
// another process: `dropship agent --once`): put back in the store, the
// staged release's bytes are a replay, refused as they would be if they
// had not been staged.
func TestStagedReleaseOlderThanTheNewestInstalledIsNotInstalled(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	keys := keysConfig(e, []signer{ci})
	a := e.runner(e.deferConfig(&recordingFleet{}, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }
  %s`, lock, keys)))
	now := time.Now().UTC().Truncate(time.Second)
	e.publish("v1")
	ci.signedAt(e, now.Add(-3*time.Minute))
	e.check(a, agent.ResultInstalled)

	release := holdLock(t, lock)
	e.publish("v2")
	v2, v2sig := ci.signedAt(e, now.Add(-2*time.Minute))
	e.check(a, agent.ResultDeferred)
	if len(e.staging()) != 1 {
		t.Fatalf("v2 not staged: %v", e.staging())
	}

	// Another process installs v3, signed later, while v2 waits staged
	// (the staged directory stays: it belongs to the running agent).
	e.publish("v3")
	ci.signedAt(e, now.Add(-time.Minute))
	b := e.runner(e.config(keys))
	e.check(b, agent.ResultInstalled)
	if e.current() != "v3" {
		t.Fatalf("running %q", e.current())
	}

	// v2 put back in the store, with its signature.
	os.WriteFile(e.store, v2, 0o644)
	os.WriteFile(e.store+".minisig", v2sig, 0o644)
	later := time.Now().Add(time.Second)
	os.Chtimes(e.store, later, later)
	release()
	out := a.Check(t.Context())
	if e.current() != "v3" || out.Result == agent.ResultInstalled {
		t.Fatalf("the staged v2 was installed over v3 signed later: %s (phase %s, err %v), running %q", out.Result, out.Phase, out.Err, e.current())
	}
	if out.Result != agent.ResultFailed || out.Phase != agent.PhaseSignature || !strings.Contains(out.Err.Error(), "replayed") {
		t.Fatalf("v2 put back: %s (phase %s, err %v), want a refused replay", out.Result, out.Phase, out.Err)
	}
}

// Another process (`dropship rollback`, `dropship agent --once`) removes
// what it finds under staging/ when it starts, a release the running
// agent staged included. A removal that stops part way (the process
// killed, a file that cannot be removed) must not leave a release the
// agent then installs with files missing: the staged release is
// installed whole, fetched again, or not at all.
func TestStagedReleasePartlyRemovedByAnotherProcessIsNotInstalled(t *testing.T) {
	testutil.RequireRoot(t, "chattr +i")
	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	a := e.runner(e.deferConfig(&recordingFleet{}, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock)))
	e.publish("v1")
	e.check(a, agent.ResultInstalled)
	release := holdLock(t, lock)
	e.publish("v2")
	e.check(a, agent.ResultDeferred)
	staged := e.staging()
	if len(staged) != 1 {
		t.Fatalf("v2 not staged: %v", staged)
	}
	// A file the removal cannot take: it stops there, the rest removed.
	stuck := filepath.Join(e.state, "app", "staging", staged[0], "bin", "run")
	if out, err := exec.Command("chattr", "+i", stuck).CombinedOutput(); err != nil {
		testutil.Require(t, "chattr +i", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", filepath.Join(e.state, "app", "staging")).Run() })
	b := e.runner(e.config(""))
	if out := b.Check(t.Context()); out.Result != agent.ResultError {
		t.Fatalf("another process's start with a file it cannot remove: %s (err %v)", out.Result, out.Err)
	}
	exec.Command("chattr", "-R", "-i", filepath.Join(e.state, "app", "staging")).Run()

	release()
	out := a.Check(t.Context())
	if e.current() == "v1" && out.Result != agent.ResultInstalled {
		return // not installed: the partial release was not taken
	}
	if e.current() != "v2" {
		t.Fatalf("installed a partly removed staged release: %s (err %v), VERSION %q", out.Result, out.Err, e.current())
	}
}

// A staged delta links the unchanged files of the current release: they
// are the running release's inodes. The application writing one of them
// while the staged release waits for its slot (a normal write: its
// modification time changes) must not carry the write into the release
// installed: what is installed is the signed tar's bytes.
func TestStagedDeltaDoesNotInstallAFileTheApplicationWroteSince(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	lock := filepath.Join(e.dir, "busy.lock")
	a := e.runner(e.deferConfigArtifact(&recordingFleet{}, "chunk_links = true", fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock)))
	e.publishChunked("v1", 0)
	e.check(a, agent.ResultInstalled)
	running := e.releasePath("bin/part06")

	release := holdLock(t, lock)
	e.publishChunked("v2", 1)
	e.check(a, agent.ResultDeferred)
	if len(e.staging()) != 1 {
		t.Fatalf("v2 not staged: %v", e.staging())
	}
	staged := filepath.Join(e.state, "app", "staging", e.staging()[0], "bin", "part06")
	if inode(t, staged) != inode(t, running) {
		t.Fatal("bin/part06, unchanged, was not linked from the running release")
	}
	// The application writes its file in place.
	f, err := os.OpenFile(running, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("written by the application"), 0)
	f.Close()
	later := time.Now().Add(time.Second)
	os.Chtimes(running, later, later)

	release()
	e.check(a, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatalf("installed %q", e.current())
	}
	e.checkParts(1)
}

// A host whose disk is full while it stages a release fails on its own:
// the release is not refused for the fleet (the breaker is not tripped).
func TestFullDiskWhileStagingDoesNotTripTheBreaker(t *testing.T) {
	testutil.RequireRoot(t, "mounts a small tmpfs")
	e := newEnv(t)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", mnt).CombinedOutput(); err != nil {
		testutil.Require(t, "a tmpfs mount", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	e.state = mnt
	ff := &recordingFleet{}
	a := e.runner(e.deferConfig(ff, ""))
	e.publish("v1")
	e.check(a, agent.ResultInstalled)
	var many []testutil.File
	for i := range 80 {
		many = append(many, testutil.File{Name: fmt.Sprintf("lib/f%02d", i), Body: "x"})
	}
	e.publish("v2", many...)
	out := e.check(a, agent.ResultFailed)
	if !strings.Contains(out.Err.Error(), "no space left") {
		t.Fatalf("failed with %v", out.Err)
	}
	if len(ff.trips) != 0 {
		t.Fatalf("a full disk on one host tripped the fleet's breaker: %+v", ff.trips)
	}
}

// staging/ made world-searchable by an early version is closed before a
// release is staged in it: the release waits there for its slot, its
// files owned by the service's user when owner is set.
func TestStagingIsClosedBeforeAReleaseWaitsThere(t *testing.T) {
	e := newEnv(t)
	staging := filepath.Join(e.state, "app", "staging")
	os.MkdirAll(staging, 0o755)
	os.Chmod(staging, 0o755)
	lock := filepath.Join(e.dir, "busy.lock")
	a := e.runner(e.deferConfig(&recordingFleet{}, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock)))
	e.publish("v1")
	e.check(a, agent.ResultInstalled)
	release := holdLock(t, lock)
	defer release()
	e.publish("v2")
	e.check(a, agent.ResultDeferred)
	fi, err := os.Stat(staging)
	if err != nil || len(e.staging()) != 1 {
		t.Fatalf("v2 not staged: %v %v", e.staging(), err)
	}
	if m := fi.Mode().Perm(); m != 0o700 {
		t.Fatalf("a release waits staged in a staging/ of mode %v", m)
	}
}

// Two services with one destination would each install into, link from
// and switch back to what the other made: the config is refused, naming
// both.
func TestTwoServicesWithOneDestinationRefused(t *testing.T) {
	e := newEnv(t)
	src := fmt.Sprintf(`
state_path = %q
service "app" {
  artifact "file" {
    path        = %q
    destination = %q
  }
}
service "other" {
  artifact "file" {
    path        = %q
    destination = "%s/"
  }
}
`, e.state, e.store, e.dest, e.store, e.dest)
	path := filepath.Join(e.dir, "two.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, diags := agent.Load(path, registry(), slog.New(slog.DiscardHandler))
	if !diags.HasErrors() || !strings.Contains(diags.Error(), `"app"`) || !strings.Contains(diags.Error(), `"other"`) {
		t.Fatalf("diags = %v", diags)
	}
}
