package main

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// announce writes the record `dropship publish` writes, naming checksum.
func (f *fleetRig) announce(t *testing.T, addr, checksum string) {
	t.Helper()
	client, _ := api.NewClient(&api.Config{Address: addr})
	b, _ := json.Marshal(fleet.Published{Service: "app", Key: "file://" + f.store, Checksum: checksum, Publisher: "test", Time: time.Now()})
	if _, err := client.KV().Put(&api.KVPair{Key: fleet.PublishedPrefix(f.prefix) + "app", Value: b}, nil); err != nil {
		t.Fatal(err)
	}
}

func (f *fleetRig) storeMD5(t *testing.T) string {
	b, err := os.ReadFile(f.store)
	if err != nil {
		t.Fatal(err)
	}
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

// With lock "consul", services poll every 5 minutes and watch the
// announcements: a new host installs within seconds of starting, and an
// announced release is installed within seconds, not minutes. An
// announcement the store does not bear out installs nothing, and the
// watch comes back after Consul does.
func TestWatchBringsReleasesAtOnce(t *testing.T) {
	t.Parallel()
	c := ownConsul(t)
	f := newFleet(t, 3, 3, c, "# default check_interval")
	f.publish("v1", false)
	f.startAll()
	// New hosts: the 5-minute interval does not delay the first install.
	f.waitAll(f.hosts, "v1", 20*time.Second)
	f.waitLog(f.hosts, nil, "watching for announced releases") // the watch is up before anything is announced

	f.publish("v2", false)
	f.announce(t, c.Addr, f.storeMD5(t))
	f.waitAll(f.hosts, "v2", 20*time.Second)

	// A record the store does not hold (yet, or ever): a few looks, then
	// the poll; nothing is installed.
	marks := f.marks()
	f.announce(t, c.Addr, strings.Repeat("0", 32))
	f.waitLog(f.hosts, marks, "release announced", strings.Repeat("0", 32))
	f.waitLog(f.hosts, marks, "announced release not in the store; leaving it to the poll")
	// A record older than what is installed changes nothing either.
	marks = f.marks()
	f.publish("v2", false)
	f.announce(t, c.Addr, "an-older-checksum")
	f.waitLog(f.hosts, marks, "announced release not in the store; leaving it to the poll")
	for _, h := range f.hosts {
		if h.version() != "v2" {
			t.Fatalf("%s moved to %q on an announcement the store does not hold", h.name, h.version())
		}
	}

	// Consul restarted: the watch comes back by itself.
	marks = f.marks()
	c.Kill()
	f.waitLog(f.hosts, marks, "stopped answering; polling meanwhile")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	f.waitLog(f.hosts, marks, "watching for announced releases")
	f.publish("v3", false)
	f.announce(t, c.Addr, f.storeMD5(t))
	f.waitAll(f.hosts, "v3", 30*time.Second)
}

// `dropship publish` with the agent's config announces the release in
// Consul, and an agent polling only every 5 minutes installs it within
// seconds.
func TestPublishAnnouncesToWatchingAgents(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	c := consulServer(t)
	_, bucket := minioBucket(t, "watched")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dropship.hcl")
	dest := filepath.Join(dir, "srv", "app")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = "state"
repo "s3" {
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
lock "consul" {
  address = %q
  prefix  = "test/%s"
}
service "app" {
  artifact "s3" {
    bucket      = %q
    path        = "app.tar.gz"
    destination = %q
  }
}
`, minio.Endpoint, minio.AccessKey, minio.SecretKey, c.Addr, bucket, bucket, dest)), 0o600)
	publish := func(v string) string {
		t.Helper()
		art := filepath.Join(dir, v+".tar.gz")
		os.WriteFile(art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: v}), 0o644)
		out, errOut, code := run(t, "publish", "-c", cfg, art, "--to", "s3://"+bucket+"/app.tar.gz")
		if code != 0 || !strings.Contains(out, "announced app") {
			t.Fatalf("publish: %d\n%s%s", code, out, errOut)
		}
		return out
	}
	version := func() string { b, _ := os.ReadFile(filepath.Join(dest, "VERSION")); return string(b) }
	waitFor := func(v string) time.Duration {
		t.Helper()
		start := time.Now()
		testutil.Eventually(t, 20*time.Second, func() error {
			if got := version(); got != v {
				return fmt.Errorf("the agent runs %q, not %s", got, v)
			}
			return nil
		})
		return time.Since(start)
	}
	publish("v1")
	agent := exec.Command(bin, "agent", "-c", cfg)
	var logs syncBuffer
	agent.Stdout, agent.Stderr = &logs, &logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Signal(syscall.SIGTERM); agent.Wait() })
	waitFor("v1") // a new host: within seconds, whatever the interval
	testutil.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "watching for announced releases") {
			return fmt.Errorf("no watch:\n%s", logs.String())
		}
		return nil
	})
	publish("v2")
	t.Logf("end of publish to installed: %s (poll interval 5m)", waitFor("v2").Round(time.Millisecond))
}
