package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/dropshipd/dropship/fleet"
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
	t.Parallel()
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
	t.Parallel()
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

// The unit's exposure, as systemd-analyze security rates it, stays low:
// 6.9 (MEDIUM) before the file system, capabilities, system calls and
// address families were bounded, 3.2 (OK) after.
func TestUnitSecurityExposure(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is required in CI")
		}
		t.Skip("systemd-analyze not installed")
	}
	unit := filepath.Join(t.TempDir(), "dropship.service")
	os.WriteFile(unit, []byte(renderUnit(t, "/usr/bin/dropship")), 0o644)
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(string(out), "Overall exposure level for dropship.service: ")
	var score float64
	if !ok {
		t.Fatalf("no overall exposure in:\n%s", out)
	}
	if _, err := fmt.Sscanf(after, "%g", &score); err != nil || score > 3.5 {
		t.Fatalf("exposure %v (%v), want at most 3.5:\n%s", score, err, out)
	}
}

// `fleet log` prints every event once, in the log's order (Consul's),
// whatever the times the writers' clocks gave them; a read of the whole
// log again prints nothing twice.
func TestFleetLogPrintsEachEventOnceWhateverItsTime(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	g := &globals{stdout: &out, stderr: io.Discard}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	evs := []fleet.Event{
		{Time: now.Add(time.Hour), Kind: fleet.EventInstall, Node: "clock-ahead", Index: 10},
		{Time: now, Kind: fleet.EventRevert, Node: "host-1", Index: 11},
		{Time: now, Kind: fleet.EventRevert, Node: "host-2", Index: 12},
	}
	var p printed
	for _, ev := range evs {
		p.print(g, ev)
	}
	// Read again after Consul renumbered its index.
	for i, ev := range evs {
		ev.Index = uint64(100 + i)
		p.print(g, ev)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "host-1") || !strings.Contains(lines[2], "host-2") {
		t.Fatalf("printed:\n%s\nwant each of the three events once, in the log's order", out.String())
	}
}
