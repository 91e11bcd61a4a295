package agent_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// FuzzLoad feeds arbitrary text to the config loader: it must answer with
// diagnostics, never panic, and every error must say where it is.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/diags/*.hcl")
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		f.Add(string(b))
	}
	f.Add(`service "a" { artifact "file" { path = "x" destination = "y" } before "script" { command = "true" } }`)
	f.Fuzz(func(t *testing.T, src string) {
		dir := t.TempDir()
		p := filepath.Join(dir, "dropship.hcl")
		os.WriteFile(p, []byte(src), 0o644)
		_, diags := agent.Load(p, registry(), slog.New(slog.DiscardHandler))
		for _, d := range diags {
			if d.Summary == "" {
				t.Fatalf("diagnostic without a summary: %+v", d)
			}
		}
	})
}
