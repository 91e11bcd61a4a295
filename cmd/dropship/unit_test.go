package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

var updateUnit = flag.Bool("update-unit", false, "rewrite debian/dropship.service from the unit template")

func renderUnit(t *testing.T, path string) string {
	var b bytes.Buffer
	err := template.Must(template.New("unit").Parse(unitTemplate)).Execute(&b, map[string]any{
		"Description": unitDescription, "Path": path,
		"Arguments": []string{"agent", "--config", "/etc/dropship.d/dropship.hcl"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The packaged unit is the one `dropship service install` writes.
func TestDebianUnitMatchesTemplate(t *testing.T) {
	want := renderUnit(t, "/usr/bin/dropship")
	if *updateUnit {
		os.WriteFile("../../debian/dropship.service", []byte(want), 0o644)
	}
	got, err := os.ReadFile("../../debian/dropship.service")
	if err != nil || string(got) != want {
		t.Fatalf("debian/dropship.service differs from the unit template (go test -run Unit -update-unit)")
	}
}

// systemd-analyze verify accepts the unit.
func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is required in CI")
		}
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	unit := filepath.Join(dir, "dropship.service")
	os.WriteFile(unit, []byte(renderUnit(t, bin)), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	// Warnings about the host's own units are not ours.
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "dropship.service") {
			ours = append(ours, line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
