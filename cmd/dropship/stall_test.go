package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact/sourcetest"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A host whose download stalls (MinIO behind a proxy that stops sending
// mid-body) gives up at update_timeout and frees its fleet slot, and the
// second host of the fleet installs: one stuck host never stalls a
// rollout.
func TestStalledHostFreesTheSlot(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	c := consulServer(t)
	st, bucket := minioBucket(t, "stall")
	dir := t.TempDir()
	noise := make([]byte, 2<<20) // incompressible: the body is long
	rand.Read(noise)
	art := filepath.Join(dir, "app.tar.gz")
	os.WriteFile(art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "v1"}, testutil.File{Name: "noise", Body: string(noise)}), 0o644)
	if _, err := st.Publish(context.Background(), bucket, "app.tar.gz", art, 0); err != nil {
		t.Fatal(err)
	}

	type host struct {
		name, cfg, dest string
		proxy           *sourcetest.Proxy
		log             *syncBuffer
		cmd             *exec.Cmd
	}
	var hosts []*host
	for i := range 2 {
		h := &host{name: fmt.Sprintf("host-%d", i), proxy: sourcetest.NewProxy(t, strings.TrimPrefix(minio.Endpoint, "http://")),
			log: &syncBuffer{}}
		h.cfg = filepath.Join(dir, h.name+".hcl")
		h.dest = filepath.Join(dir, h.name, "srv")
		os.WriteFile(h.cfg, []byte(fmt.Sprintf(`state_path = %q
node_name  = %q
lock "consul" {
  address     = %q
  prefix      = "test/%s"
  session_ttl = "10s"
}
service "app" {
  sequential     = true
  update_timeout = "3s"
  stage          = "off" # the download inside the slot: the slot is what a stall must not keep
  artifact "s3" {
    bucket        = %q
    path          = "app.tar.gz"
    destination   = %q
    endpoint      = "http://%s"
    access_key    = %q
    secret_key    = %q
    stall_timeout = "1m"
  }
}
`, filepath.Join(dir, h.name, "state"), h.name, c.Addr, bucket, bucket, h.dest, h.proxy.Addr(), minio.AccessKey, minio.SecretKey)), 0o600)
		hosts = append(hosts, h)
	}
	start := func(h *host) {
		h.cmd = exec.Command(bin, "agent", "-c", h.cfg, "--log-level", "debug")
		h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
		if err := h.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.cmd.Process.Signal(syscall.SIGTERM); h.cmd.Wait() })
	}
	waitLog := func(h *host, want string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			if !strings.Contains(h.log.String(), want) {
				return fmt.Errorf("%s has not logged %q:\n%s", h.name, want, h.log.String())
			}
			return nil
		})
	}
	stuck, next := hosts[0], hosts[1]
	stuck.proxy.PauseAfter(256 << 10) // its first download stops a quarter MiB in
	start(stuck)
	waitLog(stuck, "msg=installing")
	start(next)
	waitLog(next, "waiting for a fleet slot") // it wants the slot the stuck host holds
	waitLog(stuck, "update_timeout reached")
	waitLog(next, "result=installed")
	if b, _ := os.ReadFile(filepath.Join(next.dest, "VERSION")); !bytes.Equal(b, []byte("v1")) {
		t.Fatalf("the second host has %q", b)
	}
	if _, err := os.Lstat(stuck.dest); err == nil {
		t.Fatal("the stuck host switched to a release it did not finish downloading")
	}
	if left, _ := os.ReadDir(filepath.Join(dir, stuck.name, "state", "app", "staging")); len(left) != 0 {
		t.Fatalf("the stuck host left staging behind: %v", left)
	}
}
