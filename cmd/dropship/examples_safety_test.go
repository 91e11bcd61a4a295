package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// The examples of the README's deploy-safety sections load as they are.
func TestSafetyExamplesValidate(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("../../examples/safety/*.hcl")
	if len(files) < 4 {
		t.Fatalf("%d examples", len(files))
	}
	for _, f := range files {
		out, errOut, code := run(t, "validate", "-c", f)
		if code != 0 || !strings.Contains(out, "ok (1 services") || errOut != "" {
			t.Errorf("%s: code %d\n%s%s", f, code, out, errOut)
		}
	}
}
