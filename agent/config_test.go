package agent_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func render(diags hcl.Diagnostics, dir string) string {
	var b strings.Builder
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		where := "-"
		if d.Subject != nil {
			rel, _ := filepath.Rel(dir, d.Subject.Filename)
			where = fmt.Sprintf("%s:%d:%d", rel, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		detail := strings.ReplaceAll(d.Detail, dir+string(filepath.Separator), "")
		fmt.Fprintf(&b, "%s: %s: %s: %s\n", where, sev, d.Summary, detail)
	}
	return b.String()
}

// TestDiagnosticsGolden loads each testdata/diags/*.hcl as an agent file
// and compares every diagnostic, with its file:line:column, with the
// .golden file beside it.
func TestDiagnosticsGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/diags/*.hcl")
	if len(files) < 10 {
		t.Fatalf("only %d cases", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".hcl")
		t.Run(name, func(t *testing.T) {
			dir, _ := filepath.Abs("testdata/diags")
			_, diags := agent.Load(f, registry(), nil)
			got := render(diags, dir)
			golden := strings.TrimSuffix(f, ".hcl") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("diagnostics differ\n--- got\n%s--- want\n%s", got, want)
			}
			if got == "" {
				t.Error("no diagnostics")
			}
		})
	}
}

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
