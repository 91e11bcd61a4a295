package main

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
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
	c := consulServer(t)
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
