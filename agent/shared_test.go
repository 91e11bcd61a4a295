package agent_test

import (
	"archive/tar"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// Shared directories and files outlive releases: linked into each release
// before its before hooks run, kept across updates and rollbacks; a
// missing shared file stops the update before anything is switched.
func TestSharedDirectoriesAndFiles(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(fmt.Sprintf(`shared {
    dirs  = ["log", "tmp/pids"]
    files = ["config/secrets.yml"]
  }
  before "script" {
    command = "test -L log && test -d tmp/pids && cat config/secrets.yml >> %s"
  }`, e.log))
	r := e.runner(cfg)
	shared := filepath.Join(r.Dir(), "shared")

	e.publish("v1", testutil.File{Name: "log/shipped.log", Body: "from the release"})
	out := e.check(r, agent.ResultFailed)
	if !strings.Contains(out.Err.Error(), "config/secrets.yml") || e.current() != "" || e.hookLog() != "" {
		t.Fatalf("without the shared file: %v, current %q, hooks %q", out.Err, e.current(), e.hookLog())
	}
	os.MkdirAll(filepath.Join(shared, "config"), 0o755)
	os.WriteFile(filepath.Join(shared, "config", "secrets.yml"), []byte("s3cret\n"), 0o600)
	e.publish("v1b", testutil.File{Name: "log/shipped.log", Body: "from the release"})
	e.check(r, agent.ResultInstalled)
	if e.hookLog() != "s3cret\n" {
		t.Fatalf("the before hook did not see the shared paths: %q", e.hookLog())
	}
	if target, err := os.Readlink(filepath.Join(e.dest, "log")); err != nil || target != filepath.Join(shared, "log") {
		t.Fatalf("log is not the shared link: %q %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(shared, "log", "shipped.log")); err == nil {
		t.Fatal("the release's own log/ was written into the shared one")
	}
	// The application writes; the next release and a rollback keep it.
	os.WriteFile(filepath.Join(e.dest, "log", "app.log"), []byte("line 1\n"), 0o644)
	e.publish("v2")
	e.check(r, agent.ResultInstalled)
	if _, err := r.Rollback(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.dest, "log", "app.log")); string(b) != "line 1\n" || e.current() != "v1b" {
		t.Fatalf("after an update and a rollback: current %q, log %q", e.current(), b)
	}
}

// A shared path inside another could never be linked (the outer one is a
// link out of the release by then): refused in the config, as are paths
// that leave the release.
func TestSharedPathsRefusedInTheConfig(t *testing.T) {
	for _, tc := range []struct{ shared, want string }{
		{`dirs = ["config"]
    files = ["config/secrets.yml"]`, `"config/secrets.yml" is inside the shared "config"`},
		{`dirs = ["tmp/pids", "tmp"]`, `"tmp/pids" is inside the shared "tmp"`},
		{`dirs = ["log", "log/"]`, "listed twice"},
		{`dirs = ["../x"]`, "stays inside it"},
		{`files = ["/etc/x"]`, "stays inside it"},
		{`dirs = ["a/.."]`, "stays inside it"},
		{`dirs = [""]`, "stays inside it"},
	} {
		e := newEnv(t)
		path := e.writeConfig("file", "", "shared {\n"+tc.shared+"\n}")
		_, diags := agent.Load(path, registry(), nil)
		if !diags.HasErrors() || !strings.Contains(diags.Error(), tc.want) {
			t.Errorf("%s: diags = %v, want %q", tc.shared, diags, tc.want)
		}
	}
	// Siblings with a common prefix are not nested.
	e := newEnv(t)
	e.config(`shared {
    dirs = ["log", "logs", "tmp/pids", "tmp/sockets"]
  }`)
}

// configWithArtifact is e.config with keys for the artifact block too.
func (e *env) configWithArtifact(artifactKeys, extra string) *agent.Config {
	e.t.Helper()
	return e.load(e.writeConfig("file", artifactKeys, extra))
}

// A shared path whose parent the release ships as a link out of it, or
// as a file, fails the update with an error that says so; nothing is made
// in the shared directory for a failed check of its files, and a shared
// directory that is not one is named.
func TestSharedPathsTheReleaseOrTheHostGetWrong(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.configWithArtifact(`allow_symlinks_to = ["/"]`, `shared {
    dirs  = ["tmp/pids", "log"]
    files = ["config/secrets.yml"]
  }`))
	shared := filepath.Join(r.Dir(), "shared")
	e.publish("v1")
	out := e.check(r, agent.ResultFailed)
	if _, err := os.Lstat(filepath.Join(shared, "log")); !strings.Contains(out.Err.Error(), "config/secrets.yml") || err == nil {
		t.Fatalf("missing shared file: %v; shared/log made: %v", out.Err, err)
	}
	os.MkdirAll(filepath.Join(shared, "config"), 0o755)
	os.WriteFile(filepath.Join(shared, "config", "secrets.yml"), []byte("s3cret\n"), 0o600)

	for i, tc := range []struct {
		files []testutil.File
		want  string
	}{
		{[]testutil.File{{Name: "config", Type: tar.TypeSymlink, Link: "/etc"}}, `the release ships "config" as a link out of it (to "/etc")`},
		{[]testutil.File{{Name: "tmp", Body: "a file"}}, `the release ships "tmp" as a file`},
	} {
		e.publish(fmt.Sprintf("v%d", i+2), tc.files...)
		out := e.check(r, agent.ResultFailed)
		if !strings.Contains(out.Err.Error(), tc.want) || e.current() != "" {
			t.Fatalf("err = %v, want %q; current %q", out.Err, tc.want, e.current())
		}
	}
	os.RemoveAll(filepath.Join(shared, "log"))
	os.WriteFile(filepath.Join(shared, "log"), []byte("not a directory"), 0o644)
	e.publish("v4")
	if out := e.check(r, agent.ResultFailed); !strings.Contains(out.Err.Error(), "shared directory log") || !strings.Contains(out.Err.Error(), "not a directory") {
		t.Fatalf("a shared directory that is a file: %v", out.Err)
	}
	os.Remove(filepath.Join(shared, "log"))
	// Inside the release, a link on the way is followed.
	e.publish("v5", testutil.File{Name: "tmp", Type: tar.TypeSymlink, Link: "var/tmp"}, testutil.File{Name: "var/tmp/x", Body: "x"})
	e.check(r, agent.ResultInstalled)
	if target, err := os.Readlink(filepath.Join(e.dest, "var", "tmp", "pids")); err != nil || target != filepath.Join(shared, "tmp", "pids") {
		t.Fatalf("tmp/pids through the release's own link: %q %v", target, err)
	}
}
