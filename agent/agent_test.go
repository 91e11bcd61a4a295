package agent_test

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/local"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/check"
	"github.com/dropshipd/dropship/hooks/graphite"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/internal/flock"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func registry() agent.Registry {
	return agent.Registry{
		Sources: map[string]artifact.Factory{"file": file.Factory, "crashy": crashyFactory,
			"stalling": stallingFactory, "opaque": opaqueFactory},
		Hooks: map[string]hooks.Factory{"script": script.Factory},
		Announcers: map[string]hooks.AnnouncerFactory{"graphite-event": graphite.EventFactory,
			"graphite-metric": graphite.MetricFactory},
		Checks: map[string]hooks.Factory{"script": check.ScriptFactory, "http": check.HTTPFactory, "tcp": check.TCPFactory},
		Fleets: map[string]fleet.Factory{"local": local.Factory},
	}
}

// env is one host: a config dir, a store, a state dir and a destination.
type env struct {
	t     testing.TB
	dir   string
	store string // the artifact file
	dest  string
	state string
	log   string // hooks append here
}

func newEnv(t testing.TB) *env {
	d := t.TempDir()
	e := &env{t: t, dir: d, store: filepath.Join(d, "store", "app.tar.gz"), dest: filepath.Join(d, "srv", "app"),
		state: filepath.Join(d, "state"), log: filepath.Join(d, "hooks.log")}
	return e
}

// config writes the agent file with one service whose body is extra
// (hooks, keys) and loads it.
// installedTwice is an env whose runner installed v1, then v2: the
// start of every test of going back.
func installedTwice(t *testing.T) (*env, *agent.Runner) {
	e := newEnv(t)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	e.check(r, agent.ResultInstalled)
	return e, r
}

func (e *env) config(extra string) *agent.Config {
	e.t.Helper()
	return e.configKind("file", extra)
}

func (e *env) configKind(kind, extra string) *agent.Config {
	e.t.Helper()
	return e.load(e.writeConfig(kind, "", extra))
}

// writeConfig writes the test's config: one service "app" from an
// artifact of kind, with artifactKeys in its artifact block and extra in
// the service, and returns its path.
func (e *env) writeConfig(kind, artifactKeys, extra string) string {
	e.t.Helper()
	src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
service "app" {
  check_interval = "1s"
  artifact %q {
    path        = %q
    destination = %q
    %s
  }
%s
}
`, e.state, kind, e.store, e.dest, artifactKeys, extra)
	path := filepath.Join(e.dir, "dropship.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *env) load(path string) *agent.Config {
	e.t.Helper()
	cfg, diags := agent.Load(path, registry(), slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		e.t.Fatalf("config: %v", diags)
	}
	return cfg
}

func (e *env) runner(cfg *agent.Config) *agent.Runner {
	e.t.Helper()
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.DiscardHandler))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// publish writes a release whose VERSION file says v.
func (e *env) publish(v string, extra ...testutil.File) {
	e.t.Helper()
	files := append([]testutil.File{{Name: "VERSION", Body: v}, {Name: "bin/run", Body: "#!/bin/sh\necho " + v + "\n", Mode: 0o755}}, extra...)
	testutil.WriteFile(e.t, e.store, testutil.TarGz(e.t, files...))
	// A new mtime even within the filesystem's timestamp granularity.
	later := time.Now().Add(time.Duration(len(v)) * time.Millisecond)
	os.Chtimes(e.store, later, later)
}

// current returns the installed VERSION, "" if nothing is installed.
func (e *env) current() string {
	b, err := os.ReadFile(filepath.Join(e.dest, "VERSION"))
	if err != nil {
		return ""
	}
	return string(b)
}

func (e *env) hookLog() string {
	b, _ := os.ReadFile(e.log)
	return string(b)
}

func (e *env) check(r *agent.Runner, want agent.Result) agent.Outcome {
	e.t.Helper()
	out := r.Check(context.Background())
	if out.Result != want {
		e.t.Fatalf("check: result %s, want %s (phase %s, err %v, reason %s)", out.Result, want, out.Phase, out.Err, out.Reason)
	}
	return out
}

func (e *env) state_(r *agent.Runner) *agent.State {
	e.t.Helper()
	st, err := agent.LoadState(r.Dir(), "app")
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func TestInstallNoopChangeRollbackPrune(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(fmt.Sprintf(`
  keep_releases = 3
  before "script" { command = "echo before $DROPSHIP_PHASE $DROPSHIP_CHECKSUM prev=$DROPSHIP_PREVIOUS_CHECKSUM >> %[1]s" }
  after  "script" { command = "echo after $DROPSHIP_PHASE $(cat VERSION) $DROPSHIP_SERVICE $DROPSHIP_HOSTNAME >> %[1]s" }
`, e.log))
	r := e.runner(cfg)

	e.publish("v1")
	out := e.check(r, agent.ResultInstalled)
	if e.current() != "v1" {
		t.Fatalf("installed %q", e.current())
	}
	if fi, err := os.Lstat(e.dest); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("destination is not a symlink: %v %v", fi, err)
	}
	if log := e.hookLog(); !strings.Contains(log, "before before "+out.Checksum+" prev=\n") || !strings.Contains(log, "after after v1 app test-node") {
		t.Fatalf("hook log:\n%s", log)
	}

	// Unchanged: nothing happens, even with a new runner (a restart).
	e.check(r, agent.ResultNoop)
	r2 := e.runner(e.config(fmt.Sprintf(`keep_releases = 3
  after "script" { command = "echo after-restart >> %s" }`, e.log)))
	e.check(r2, agent.ResultNoop)
	if strings.Contains(e.hookLog(), "after-restart") {
		t.Fatal("restart with an unchanged artifact ran hooks")
	}

	for _, v := range []string{"v2", "v3", "v4", "v5"} {
		e.publish(v)
		e.check(r, agent.ResultInstalled)
		if e.current() != v {
			t.Fatalf("installed %q, want %s", e.current(), v)
		}
	}
	st := e.state_(r)
	if len(st.Releases) != 3 {
		t.Fatalf("kept %d releases, want 3", len(st.Releases))
	}
	dirs, _ := os.ReadDir(filepath.Join(r.Dir(), "releases"))
	if len(dirs) != 3 {
		t.Fatalf("%d release directories on disk, want 3", len(dirs))
	}

	// Rollback goes to v4, runs the after hooks, and sticks.
	rel, err := r.Rollback(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if e.current() != "v4" || rel.ID != st.Releases[1].ID {
		t.Fatalf("rolled back to %q (%s)", e.current(), rel.ID)
	}
	if !strings.Contains(e.hookLog(), "after rollback v4") {
		t.Fatalf("after hooks not run on rollback:\n%s", e.hookLog())
	}
	e.check(r, agent.ResultSkipped)
	if e.current() != "v4" {
		t.Fatal("the agent reinstalled the checksum rolled back from")
	}
	// Rolling back to a named release, then a new publish installs again.
	if _, err := r.Rollback(context.Background(), st.Releases[0].ID); err != nil || e.current() != "v3" {
		t.Fatalf("rollback --to: %v, now %q", err, e.current())
	}
	e.publish("v6")
	e.check(r, agent.ResultInstalled)
	if e.current() != "v6" {
		t.Fatalf("after rollback, new publish installed %q", e.current())
	}
	if st := e.state_(r); st.RolledBackFrom != "" {
		t.Fatalf("rolled_back_from still %q", st.RolledBackFrom)
	}
	hist, attempts, err := r.History()
	if err != nil || len(hist) != 3 || !hist[2].Current || len(attempts) < 7 {
		t.Fatalf("history: %+v, %d attempts, %v", hist, len(attempts), err)
	}
}

func TestBeforeHookFailureInstallsNothing(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(`before "script" { command = "test \"$(cat $DROPSHIP_PREVIOUS_RELEASE_DIR/VERSION 2>/dev/null)\" != v1" }`))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	out := e.check(r, agent.ResultFailed)
	if out.Phase != hooks.PhaseBefore || !strings.Contains(out.Err.Error(), "exited with status 1") {
		t.Fatalf("phase %s err %v", out.Phase, out.Err)
	}
	if e.current() != "v1" {
		t.Fatalf("current = %q after a failed before hook", e.current())
	}
	st := e.state_(r)
	f := st.Failures[out.Checksum]
	if f == nil || f.Count != 1 || f.Phase != "before" {
		t.Fatalf("failure not recorded: %+v", st.Failures)
	}
	if dirs, _ := os.ReadDir(filepath.Join(r.Dir(), "releases")); len(dirs) != 1 {
		t.Fatalf("%d releases on disk after a failed update, want 1", len(dirs))
	}
	if left, _ := os.ReadDir(filepath.Join(r.Dir(), "staging")); len(left) != 0 {
		t.Fatalf("staging not cleaned: %v", left)
	}
	// The failed checksum is not retried at the next interval.
	out = e.check(r, agent.ResultSkipped)
	if !strings.Contains(out.Reason, "failed 1 time") {
		t.Fatalf("reason %q", out.Reason)
	}
}

// A before chain that stops the service and then fails must not leave
// the service stopped: the current release's after hooks run again.
func TestFailedBeforeChainRestartsCurrentRelease(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(fmt.Sprintf(`
  before "script" { command = "echo stop >> %[1]s" }
  before "script" { command = "test \"$DROPSHIP_CHECKSUM\" != \"$(cat %[2]s 2>/dev/null)\"" }
  after  "script" { command = "echo start $(cat VERSION) $DROPSHIP_PHASE >> %[1]s" }
`, e.log, filepath.Join(e.dir, "bad-checksum"))))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	info, err := r.Service().Source.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(e.dir, "bad-checksum"), []byte(info.Checksum()), 0o644)
	e.check(r, agent.ResultFailed)
	if e.current() != "v1" {
		t.Fatalf("current = %q", e.current())
	}
	if log := e.hookLog(); !strings.HasSuffix(log, "stop\nstart v1 rollback\n") {
		t.Fatalf("the stopped release was not started again:\n%s", log)
	}
}

func TestAfterHookFailureRollsBack(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(fmt.Sprintf(`
  after "script" { command = "echo start $(cat VERSION) >> %s; test $(cat VERSION) != v2" }
  rollback "script" { command = "echo rollback-chain $DROPSHIP_PHASE >> %[1]s" }
`, e.log))
	r := e.runner(cfg)
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	out := e.check(r, agent.ResultFailed)
	if out.Phase != hooks.PhaseAfter {
		t.Fatalf("phase %s", out.Phase)
	}
	if e.current() != "v1" {
		t.Fatalf("current = %q, want v1 after the rollback", e.current())
	}
	// v1 was started again by the after hooks, and the rollback chain ran.
	if log := e.hookLog(); !strings.HasSuffix(log, "start v1\nstart v2\nstart v1\nrollback-chain rollback\n") {
		t.Fatalf("hook log:\n%s", log)
	}
	st := e.state_(r)
	if st.Failures[out.Checksum] == nil || st.Checksum == out.Checksum {
		t.Fatalf("state after rollback: %+v", st)
	}
	if last := st.History[len(st.History)-1]; last.Result != "failure" || last.Phase != "after" {
		t.Fatalf("last attempt %+v", last)
	}
	if dirs, _ := os.ReadDir(filepath.Join(r.Dir(), "releases")); len(dirs) != 1 {
		t.Fatalf("%d releases kept, want only v1", len(dirs))
	}
}

func TestFirstInstallFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(`after "script" { command = "exit 3" }`))
	e.publish("v1")
	e.check(r, agent.ResultFailed)
	if _, err := os.Lstat(e.dest); !os.IsNotExist(err) {
		t.Fatalf("destination left behind: %v", err)
	}
}

func TestContinuePolicy(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(`after "script" {
    command    = "exit 1"
    on_failure = "continue"
  }`))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
}

func TestHostileArchiveKeepsOldRelease(t *testing.T) {
	big := strings.Repeat("0", 40<<20)
	cases := []struct {
		name   string
		files  []testutil.File
		keys   string // extra artifact keys
		entry  string
		reason string
	}{
		{"dotdot", []testutil.File{{Name: "../x", Body: "evil"}}, "", "../x", ".."},
		{"absolute", []testutil.File{{Name: "/etc/x", Body: "evil"}}, "", "/etc/x", "absolute"},
		{"escaping symlink", []testutil.File{{Name: "link", Type: tar.TypeSymlink, Link: "../../../../etc/passwd"}}, "", "link", "outside"},
		{"escaping hardlink", []testutil.File{{Name: "hard", Type: tar.TypeLink, Link: "../../etc/passwd"}}, "", "hard", "outside"},
		{"write through symlink", []testutil.File{{Name: "up", Type: tar.TypeSymlink, Link: "bin"}, {Name: "up/x", Body: "evil"}}, "", "up/x", "through the symlink"},
		{"device node", []testutil.File{{Name: "dev", Type: tar.TypeChar}}, "", "dev", "device"},
		{"fifo", []testutil.File{{Name: "fifo", Type: tar.TypeFifo}}, "", "fifo", "FIFO"},
		{"directory replaced by a link", []testutil.File{{Name: "bin", Type: tar.TypeSymlink, Link: "."}}, "", "bin", "replaces a directory"},
		{"too many files", []testutil.File{{Name: "a"}, {Name: "b"}}, "max_files = 4", "b", "max_files"},
		{"too large", []testutil.File{{Name: "big", Body: strings.Repeat("x", 5000)}}, "max_size = 4096", "big", "max_size"},
		{"bomb", []testutil.File{{Name: "zeros", Body: big}}, "max_ratio = 50", "zeros", "compression ratio"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			cfg := filepath.Join(e.dir, "hostile.hcl")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
service "app" {
  artifact "file" {
    path        = %q
    destination = %q
    %s
  }
}`, e.state, e.store, e.dest, c.keys)), 0o644)
			loaded, diags := agent.Load(cfg, registry(), slog.New(slog.DiscardHandler))
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			r := e.runner(loaded)
			e.publish("v1")
			e.check(r, agent.ResultInstalled)
			e.publish("v2", c.files...)
			out := e.check(r, agent.ResultFailed)
			if msg := out.Err.Error(); !strings.Contains(msg, fmt.Sprintf("entry %q", c.entry)) || !strings.Contains(msg, c.reason) {
				t.Fatalf("error does not name entry %q and reason %q: %v", c.entry, c.reason, out.Err)
			}
			if e.current() != "v1" {
				t.Fatalf("current = %q", e.current())
			}
			for _, p := range []string{filepath.Join(e.dir, "x"), filepath.Join(e.dir, "srv", "x"), filepath.Join(r.Dir(), "x")} {
				if _, err := os.Lstat(p); err == nil {
					t.Fatalf("%s written outside the release", p)
				}
			}
			if left, _ := os.ReadDir(filepath.Join(r.Dir(), "staging")); len(left) != 0 {
				t.Fatalf("staging not cleaned: %v", left)
			}
		})
	}
}

func TestDestinationDirectoryMovedAside(t *testing.T) {
	e := newEnv(t)
	os.MkdirAll(e.dest, 0o755)
	os.WriteFile(filepath.Join(e.dest, "old-data"), []byte("keep me"), 0o644)
	r := e.runner(e.config(""))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	matches, _ := filepath.Glob(e.dest + ".dropship-orig-*")
	if len(matches) != 1 {
		t.Fatalf("old directory not moved aside: %v", matches)
	}
	if b, err := os.ReadFile(filepath.Join(matches[0], "old-data")); err != nil || string(b) != "keep me" {
		t.Fatalf("old data lost: %v", err)
	}
	if e.current() != "v1" {
		t.Fatal("not installed")
	}
}

func TestDiskPreflight(t *testing.T) {
	e := newEnv(t)
	// disk_space_factor is an artifact key: write the block directly.
	src := fmt.Sprintf(`
state_path = %q
service "app" {
  artifact "file" {
    path = %q
    destination = %q
    disk_space_factor = 1e12
  }
}`, e.state, e.store, e.dest)
	path := filepath.Join(e.dir, "big.hcl")
	os.WriteFile(path, []byte(src), 0o644)
	cfg, diags := agent.Load(path, registry(), slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	r := e.runner(cfg)
	e.publish("v1")
	out := e.check(r, agent.ResultFailed)
	if out.Phase != agent.PhasePreflight || !strings.Contains(out.Err.Error(), "bytes free") {
		t.Fatalf("phase %s err %v", out.Phase, out.Err)
	}
	if _, err := os.Lstat(e.dest); err == nil {
		t.Fatal("installed despite the preflight")
	}
}

func TestLocalLockSerialisesAgents(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("")
	holder := flock.New(filepath.Join(e.state, "app", "lock"))
	if ok, err := holder.TryAcquire(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	e.publish("v1")
	r := e.runner(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	out := r.Check(ctx)
	if out.Result != agent.ResultError || out.Phase != agent.PhaseLock || e.current() != "" {
		t.Fatalf("installed while another agent held the lock: %+v", out)
	}
	holder.Release(context.Background())
	e.check(r, agent.ResultInstalled)
}

func TestSlotsLimitHolders(t *testing.T) {
	p := local.Fleet{Dir: t.TempDir()}
	a, _ := p.Semaphore("svc", 2)
	b, _ := p.Semaphore("svc", 2)
	c, _ := p.Semaphore("svc", 2)
	ctx := context.Background()
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c.Acquire(short); err == nil {
		t.Fatal("a third holder got one of two slots")
	}
	a.Release(ctx)
	if _, err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSequentialWithLocalSlots(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.config(`sequential = true`))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
}

// crashyFactory is a file source whose stream kills the process (SIGKILL)
// half way through, to test a crash during unpack.
func crashyFactory(kind string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	s, d := file.Factory(kind, body, env)
	return crashy{s}, d
}

type crashy struct{ artifact.Source }

func (c crashy) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	rc, err := c.Source.Open(ctx, pin)
	if err != nil {
		return nil, err
	}
	return &killAfter{ReadCloser: rc, left: pin.Size / 2}, nil
}

type killAfter struct {
	io.ReadCloser
	left int64
}

func (k *killAfter) Read(p []byte) (int, error) {
	if k.left <= 0 {
		time.Sleep(50 * time.Millisecond) // let the unpacker write what it has
		killSelf()
	}
	if int64(len(p)) > k.left {
		p = p[:max(k.left, 1)]
	}
	n, err := k.ReadCloser.Read(p)
	k.left -= int64(n)
	return n, err
}

// A check that finds nothing new does not rewrite the state file; one
// whose error changes does.
func TestIdleCheckLeavesStateFileAlone(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	r := e.runner(e.config(""))
	e.check(r, agent.ResultInstalled)
	path := filepath.Join(r.Dir(), "state.json")
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.check(r, agent.ResultNoop)
	}
	after, _ := os.Stat(path)
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("a noop check rewrote the state file")
	}
	if got := r.Status(); got.LastResult != agent.ResultNoop || got.Release == "" || got.LastCheck.Before(before.ModTime()) {
		t.Fatalf("live status after noops: %+v", got)
	}

	os.Rename(e.store, e.store+".away")
	e.check(r, agent.ResultError)
	if st := e.state_(r); st.LastError == "" {
		t.Fatal("the error was not written")
	}
	os.Rename(e.store+".away", e.store)
	e.check(r, agent.ResultNoop)
	if st := e.state_(r); st.LastError != "" {
		t.Fatalf("the cleared error was not written: %q", st.LastError)
	}
}

// A rollback whose switch fails (here: something is in the way of the
// switch link) leaves the destination on the failed release: that
// release's directory must stay, never a destination pointing nowhere.
func TestFailedRollbackSwitchKeepsTheCurrentRelease(t *testing.T) {
	e := newEnv(t)
	block := filepath.Join(filepath.Dir(e.dest), ".app.dropship-tmp", "in-the-way")
	cfg := e.config(fmt.Sprintf(`
  check "script" { command = "if grep -q v2 \"$DROPSHIP_RELEASE_DIR/VERSION\"; then mkdir -p %s; exit 1; fi" }
`, block))
	r := e.runner(cfg)
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	out := e.check(r, agent.ResultFailed)
	if !strings.Contains(out.Err.Error(), "rollback failed") {
		t.Fatalf("the rollback's switch did not fail: %v", out.Err)
	}
	if got := e.current(); got != "v2" {
		t.Fatalf("destination reads %q: the release it points at was removed", got)
	}
}
