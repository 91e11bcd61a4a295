package agent_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// FuzzLoad feeds arbitrary text to the config loader: it must answer with
// diagnostics, never panic, and every error must say where it is.
func FuzzLoad(f *testing.F) {
	// The golden cases: the agent file above the separator line.
	seeds, _ := filepath.Glob("../cmd/dropship/testdata/diags/*.txt")
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		src, _, _ := strings.Cut(string(b), "----------\n")
		f.Add(src)
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

// FuzzLoadState feeds arbitrary bytes as a service's state.json: the
// loader answers with an error or a state, never a panic, and what it
// accepts saves and loads again the same.
func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"service":"app","checksum":"abc","release":"r1","releases":[{"id":"r1","checksum":"abc","source":"s","installed":"2026-01-01T00:00:00Z","signed":{"key_id":"AB","time":"2026-01-01T00:00:00Z"}}],"failures":{"x":{"count":2,"phase":"check"}},"history":[{"result":"success","duration_ns":5}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"failures":{"x":null}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o640); err != nil {
			t.Fatal(err)
		}
		st, err := agent.LoadState(dir, "app")
		if err != nil {
			if st != nil {
				t.Fatal("a state with an error")
			}
			return
		}
		if err := st.Save(dir); err != nil {
			t.Fatalf("save of a loaded state: %v", err)
		}
		again, err := agent.LoadState(dir, "app")
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
		if again.Checksum != st.Checksum || again.Release != st.Release || len(again.Releases) != len(st.Releases) {
			t.Fatal("a saved state loads differently")
		}
	})
}
