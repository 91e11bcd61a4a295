package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the expected part of the golden files")

// goldenSep divides a golden file: above it the agent file, below it
// exactly what `dropship validate` prints for it.
const goldenSep = "----------\n"

// TestDiagnosticsGolden runs `dropship validate` (the real registry, the
// CLI's own printer) on each testdata/diags/*.txt and compares what a
// user reads, file:line:column and all, with the expected part.
func TestDiagnosticsGolden(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("testdata/diags/*.txt")
	if len(files) < 15 {
		t.Fatalf("only %d cases", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".txt")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), goldenSep)
			if !ok {
				t.Fatalf("%s: no %q line", f, strings.TrimSpace(goldenSep))
			}
			dir := t.TempDir()
			cfg := filepath.Join(dir, name+".hcl")
			if err := os.WriteFile(cfg, []byte(input), 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			root := newRoot(&stdout, &stderr)
			root.SetArgs([]string{"validate", "--config", cfg})
			err = root.Execute()
			got := strings.ReplaceAll(stderr.String(), dir+string(filepath.Separator), "")
			if *updateGolden {
				os.WriteFile(f, []byte(input+goldenSep+got), 0o644)
				return
			}
			if got != want {
				t.Errorf("diagnostics differ\n--- got\n%s--- want\n%s", got, want)
			}
			if got == "" {
				t.Error("no diagnostics")
			}
			hasError := strings.Contains(got, ": error: ")
			if ee, isExit := err.(exitError); hasError && (!isExit || ee.code != 2) {
				t.Errorf("errors printed, but validate returned %v, not exit status 2", err)
			}
		})
	}
}
