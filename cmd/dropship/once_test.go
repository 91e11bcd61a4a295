package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// onceRuns reads the lines the run-once hooks wrote: "RUNID HOST CHECKSUM".
func onceRuns(t *testing.T, path string) map[string][][]string {
	t.Helper()
	b, _ := os.ReadFile(path)
	runs := map[string][][]string{} // checksum -> [run id, host]
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 {
			runs[f[2]] = append(runs[f[2]], f[:2])
		}
	}
	return runs
}

// Real agents in a real Consul, all updating at once: a once = "fleet"
// hook runs exactly once per release, on one host, the others waiting
// for it; never on a rollback; a run whose host is SIGKILLed mid-hook
// runs again once, elsewhere, with the same run id.
func TestOnceHookRunsOncePerRelease(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	const n, releases = 10, 10
	f := newFleet(t, n, n, c)
	before, after := filepath.Join(f.dir, "once-before"), filepath.Join(f.dir, "once-after")
	hang := filepath.Join(f.dir, "hang")
	for _, h := range f.hosts {
		h.withBlock(t, `  before "script" {
    once    = "fleet"
    timeout = "60s"
    command = "echo \"$DROPSHIP_RUN_ID $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> `+before+`; if rm `+hang+` 2>/dev/null; then echo $$ > `+hang+`.pid; sleep 120; fi; sleep 0.5"
  }
  after "script" {
    once    = "fleet"
    command = "echo \"$DROPSHIP_RUN_ID $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> `+after+`"
  }`)
	}
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 90*time.Second)

	// v3: the first run hangs; its host is killed in the middle of it.
	os.WriteFile(hang, nil, 0o644)
	f.publish("v3", false)
	deadline := time.Now().Add(60 * time.Second)
	var pid int
	for pid == 0 {
		b, _ := os.ReadFile(hang + ".pid")
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		if time.Now().After(deadline) {
			t.Fatal("the run-once hook of v3 never started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The hanging run wrote the release's only line.
	var victim *host
	for _, h := range f.hosts {
		for _, r := range onceRuns(t, before)[f.storeMD5(t)] {
			if r[1] == h.name {
				victim = h
			}
		}
	}
	if victim == nil {
		t.Fatal("no host wrote the hanging run's line")
	}
	victim.cmd.Process.Kill()
	victim.cmd.Wait()
	syscall.Kill(-pid, syscall.SIGKILL) // the hook's process group, orphaned by the kill
	var others []*host
	for _, h := range f.hosts {
		if h != victim {
			others = append(others, h)
		}
	}
	f.waitAll(others, "v3", 120*time.Second)
	f.start(victim)
	f.waitAll(f.hosts, "v3", 90*time.Second)
	// fleet status shows the newest releases' run-once hooks: v3's, run twice.
	testutil.Eventually(t, 30*time.Second, func() error {
		out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
		if !strings.Contains(out, "RUN-ONCE before-1") {
			return fmt.Errorf("fleet status does not show v3's run-once hook run twice:\n%s", out)
		}
		return nil
	})

	last := fmt.Sprintf("v%d", releases)
	for i := 4; i <= releases; i++ {
		v := fmt.Sprintf("v%d", i)
		f.publish(v, false)
		f.waitAll(f.hosts, v, 90*time.Second)
	}
	f.waitEnds(last, n)

	// An operator rollback runs the after hooks, but not the run-once one.
	if _, errOut, code := run(t, "rollback", "app", "-c", f.hosts[1].cfg); code != 0 {
		t.Fatalf("rollback: %d\n%s", code, errOut)
	}
	if v, want := f.hosts[1].version(), fmt.Sprintf("v%d", releases-1); v != want {
		t.Fatalf("after the rollback host-1 runs %q, want %s", v, want)
	}

	befores, afters := onceRuns(t, before), onceRuns(t, after)
	if len(befores) != releases || len(afters) != releases {
		t.Fatalf("run-once hooks ran for %d and %d checksums, want %d (v1..%s):\n%v\n%v", len(befores), len(afters), releases, last, befores, afters)
	}
	reruns := 0
	for sum, runs := range befores {
		switch {
		case len(runs) == 1:
		case len(runs) == 2 && runs[0][0] == runs[1][0] && runs[0][1] != runs[1][1]:
			reruns++
		default:
			t.Errorf("before hook of %s ran %v", sum, runs)
		}
	}
	for sum, runs := range afters {
		if len(runs) != 1 {
			t.Errorf("after hook of %s ran %v", sum, runs)
		}
	}
	if reruns != 1 {
		t.Fatalf("%d releases had their run-once hook run again, want 1 (v3): %v", reruns, befores)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "RUN-ONCE before-1") {
		t.Fatalf("fleet status does not show the run-once hooks:\n%s", out)
	}
	log, _, _ := run(t, "fleet", "log", "app", "-c", f.hosts[0].cfg)
	if strings.Count(log, "once") < 2*releases {
		t.Fatalf("the audit log does not show the run-once hooks:\n%s", log)
	}
}
