package agent_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
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
	if s.KeepReleases != 5 || s.Concurrency != 1 || s.Sequential || s.Hold != 0 || cfg.LockKind != "local" || cfg.NodeName != "test-node" ||
		!s.StageAhead() {
		t.Fatalf("defaults: %+v", s)
	}
}

// A gate whose query compares with bool would always hold: the config
// is refused, at the query.
func TestGateQueryWithBoolIsRefused(t *testing.T) {
	e := newEnv(t)
	reg := registry()
	reg.Fleets = map[string]fleet.Factory{"consul": func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return &fakeFleet{}, nil }}
	src := fmt.Sprintf(`
state_path = %q
lock "consul" {}
service "app" {
  artifact "file" {
    path        = %q
    destination = %q
  }
  rollout {
    waves = ["100%%"]
    bake  = "1m"
    gate "prometheus" {
      address = "http://prometheus:9090"
      query   = "rate(errors[5m]) < bool 0.01"
    }
  }
}
`, e.state, e.store, e.dest)
	path := filepath.Join(e.dir, "gate.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "bool") || diags[0].Subject == nil || diags[0].Subject.Start.Line != 14 {
		t.Fatalf("diags = %v", diags)
	}
}
