package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// withBlock puts block into the service of h's config.
func (h *host) withBlock(t *testing.T, block string) {
	t.Helper()
	b, err := os.ReadFile(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "  sequential     = true\n", "  sequential     = true\n"+block+"\n", 1)
	if err := os.WriteFile(h.cfg, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Real agents in a real Consul: while the application on host-0 holds
// its lock file, host-0 defers the release, says so in `fleet status`,
// and holds no slot (host-1 updates meanwhile, with one slot for both);
// once the lock is let go, host-0 installs it.
func TestHeldLockFileDefersAHost(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 2, 1, c)
	lock := filepath.Join(f.dir, "host-0.busy")
	f.hosts[0].withBlock(t, `  defer {
    lock_file = "`+lock+`"
    interval  = "1s"
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)

	lf, err := os.Create(lock)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	marks := f.marks()
	f.publish("v2", false)
	f.waitLog(f.hosts[:1], marks, "update deferred by the application", lock)
	f.waitAll(f.hosts[1:], "v2", 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
		if hasLine(out, []string{"host-0", "deferred", "defer", "the application holds " + lock}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet status does not show host-0 deferring:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v := f.hosts[0].version(); v != "v1" {
		t.Fatalf("host-0 runs %q while its application holds the lock", v)
	}
	released := time.Now()
	lf.Close()
	f.waitAll(f.hosts[:1], "v2", 30*time.Second)
	t.Logf("host-0 on v2 %s after the lock was released (interval 1s)", time.Since(released).Round(time.Millisecond))
	// Its record follows the switch: once it says installed, it no
	// longer says deferred.
	testutil.Eventually(t, 30*time.Second, func() error {
		out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
		if hasLine(out, []string{"host-0", "deferred"}) || !hasLine(out, []string{"host-0", "installed"}) {
			return fmt.Errorf("fleet status does not show host-0 installed:\n%s", out)
		}
		return nil
	})
}
