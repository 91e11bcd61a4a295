package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

func TestServicePathAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "services"), 0o755)
	os.WriteFile(filepath.Join(dir, "dropship.hcl"), []byte(`service_path = "services"
state_path = "state"`), 0o644)
	os.WriteFile(filepath.Join(dir, "services", "a.hcl"), []byte(`
service "one" {
  artifact "file" {
    path = "store/one.tar.gz"
    destination = "srv/one"
  }
}
service "two" {
  artifact "file" {
    path = "/abs/two.tar.gz"
    destination = "/srv/two"
  }
}`), 0o644)
	os.WriteFile(filepath.Join(dir, "services", "b.hcl"), []byte(`
service "one" {
  artifact "file" {
    path = "x"
    destination = "y"
  }
}`), 0o644)
	os.WriteFile(filepath.Join(dir, "services", "ignored.txt"), []byte(`not hcl`), 0o644)
	cfg, diags := agent.Load(filepath.Join(dir, "dropship.hcl"), registry(), nil)
	if len(diags) != 1 || !strings.Contains(diags[0].Detail, `service "one" is already defined at `+filepath.Join(dir, "services", "a.hcl")+":2") ||
		diags[0].Subject.Filename != filepath.Join(dir, "services", "b.hcl") {
		t.Fatalf("diags = %v", diags)
	}
	if len(cfg.Services) != 2 {
		t.Fatalf("%d services", len(cfg.Services))
	}
	one := cfg.Services[0]
	if cfg.StatePath != filepath.Join(dir, "state") || one.Destination != filepath.Join(dir, "services", "srv/one") ||
		one.Source.String() != "file://"+filepath.Join(dir, "services", "store/one.tar.gz") {
		t.Fatalf("paths: state %s dest %s src %s", cfg.StatePath, one.Destination, one.Source)
	}
	if cfg.Services[1].Destination != "/srv/two" {
		t.Fatal(cfg.Services[1].Destination)
	}
}

func TestDefaults(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("")
	s := cfg.Services[0]
	if s.KeepReleases != 5 || s.Concurrency != 1 || s.Sequential || s.Hold != 0 || cfg.LockKind != "local" || cfg.NodeName != "test-node" {
		t.Fatalf("defaults: %+v", s)
	}
}
