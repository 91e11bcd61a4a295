package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `agent --once` from cron with a rollout block: the first run registers
// the host and installs; a second run, with a new release, installs it.
func TestAgentOnceWithRolloutInstalls(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c, `rollout {
    waves = ["100%"]
  }`)
	h := f.hosts[0]
	for _, v := range []string{"v1", "v2"} {
		f.publish(v, false)
		out, errOut, code := run(t, "agent", "--once", "-c", h.cfg)
		if code != 0 || h.version() != v {
			t.Fatalf("agent --once with %s: exit %d, host on %q\n%s%s", v, code, h.version(), out, errOut)
		}
		if !strings.Contains(errOut+out, "msg=installed") {
			t.Errorf("agent --once did not log the install of %s:\n%s%s", v, out, errOut)
		}
	}
	// The state says what the runs did.
	if _, err := os.Stat(filepath.Join(f.dir, h.name, "state", "app")); err != nil {
		t.Fatal(err)
	}
}
