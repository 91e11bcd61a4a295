package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// consulCounter is a proxy to Consul that notes each request's path.
type consulCounter struct {
	mu       sync.Mutex
	paths    []string
	inFlight map[string]int // by path: the long polls held
}

// via puts a counter between h and Consul.
func (f *fleetRig) via(t *testing.T, h *host, consulAddr string) *consulCounter {
	t.Helper()
	target, _ := url.Parse("http://" + consulAddr)
	c := &consulCounter{inFlight: map[string]int{}}
	p := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.Path
		c.mu.Lock()
		c.paths = append(c.paths, key)
		c.inFlight[key]++
		c.mu.Unlock()
		p.ServeHTTP(w, r)
		c.mu.Lock()
		c.inFlight[key]--
		c.mu.Unlock()
	}))
	t.Cleanup(func() {
		// The agents first: their long polls would hold Close for their
		// 10 minutes, and they would come again.
		f.stopAll()
		srv.CloseClientConnections()
		srv.Close()
	})
	b, _ := os.ReadFile(h.cfg)
	os.WriteFile(h.cfg, []byte(strings.Replace(string(b), consulAddr, strings.TrimPrefix(srv.URL, "http://"), 1)), 0o644)
	return c
}

func (c *consulCounter) since(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.paths[n:]...)
}

// held lists the requests waiting for Consul's answer.
func (c *consulCounter) held() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k, n := range c.inFlight {
		for range n {
			out = append(out, k)
		}
	}
	return out
}

func (c *consulCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.paths)
}

// A host at rest (its store holds what it runs, the rollout done) checks
// the store alone: over many checks it asks Consul nothing but the watch
// of the announcements, neither its records nor the rollout's document.
// What could still move it reaches it through the nudge in the
// announcements: a breaker another host trips on what it runs (a
// revert, here), as a pin does (TestRolloutPinKeepsHostsOnARelease).
func TestHostsAtRestAskConsulOnlyTheirWatch(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 3, 1, c, `
  rollout {
    waves      = ["100%"]
    on_failure = "revert"
  }`)
	counter := f.via(t, f.hosts[0], c.Addr)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	v2 := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	f.waitInstalled(f.hosts, v2)

	// Checks every 300 ms: a window of 20 checks of host-0 in which it
	// asked Consul nothing but its watch.
	watch := "GET /v1/kv/" + fleet.PublishedPrefix(f.prefix)
	var last []string
	testutil.Eventually(t, 60*time.Second, func() error {
		marks, n := f.marks(), counter.count()
		testutil.Eventually(t, 30*time.Second, func() error {
			if got := strings.Count(f.logSince(f.hosts[0], marks), "msg=check service=app result=noop"); got < 20 {
				return fmt.Errorf("%d checks", got)
			}
			return nil
		})
		last = nil
		for _, p := range counter.since(n) {
			if p != watch {
				last = append(last, p)
			}
		}
		if len(last) > 0 {
			return fmt.Errorf("over 20 checks at rest, host-0 asked Consul %d times besides its watch: %v", len(last), last)
		}
		// Nor does it hold a long poll besides the watch (the document's
		// follower paused once the document said the rollout was done).
		if held := counter.held(); len(held) != 1 || held[0] != watch {
			return fmt.Errorf("at rest, host-0 holds %v", held)
		}
		return nil
	})

	// Another host trips the breaker on v2, as an agent does: every host
	// reverts to v1 at once, though none reads its records at its checks.
	tripper := &consul.Fleet{Prefix: f.prefix, Node: "host-9"}
	var err error
	if tripper.Client, err = api.NewClient(&api.Config{Address: c.Addr}); err != nil {
		t.Fatal(err)
	}
	b := fleet.Breaker{Checksum: v2, Phase: "check", Error: "failed on a late host"}
	if err := tripper.Trip(context.Background(), "app", b); err != nil {
		t.Fatal(err)
	}
	f.waitAll(f.hosts, "v1", 30*time.Second)
	f.waitLog(f.hosts, nil, "the fleet's records changed; checking now")
}

// A Consul restored from a snapshot taken before the hosts registered,
// the folder of announcements the same since (its index too): the
// records are gone, and the hosts at rest register again at their next
// check, not within the hour. Consul ends the watch's blocking query
// early, with the index it waited on, when it restores a snapshot.
func TestHostsAtRestRegisterAgainAfterASnapshotRestore(t *testing.T) {
	t.Parallel()
	c := ownConsul(t)
	f := newFleet(t, 2, 1, c, `
  rollout {
    waves = ["100%"]
  }`)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	seed, _ := json.Marshal(fleet.RecordsChanged{Service: "app", What: "watch", Time: time.Now()})
	if _, err := client.KV().Put(&api.KVPair{Key: fleet.RecordsChangedKey(f.prefix, "app"), Value: seed}, nil); err != nil {
		t.Fatal(err)
	}
	snap, _, err := client.Snapshot().Save(nil)
	if err != nil {
		t.Fatal(err)
	}
	saved, err := io.ReadAll(snap)
	snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	v2 := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	f.waitInstalled(f.hosts, v2)
	registered := func() error {
		keys, _, err := client.KV().Keys(fleet.NodesKey(f.prefix, "app"), "", nil)
		if err != nil || len(keys) != len(f.hosts) {
			return fmt.Errorf("registered: %v (%v)", keys, err)
		}
		return nil
	}
	testutil.Eventually(t, 30*time.Second, registered)
	// At rest: their checks look at the store alone.
	marks := f.marks()
	f.waitLog(f.hosts, marks, "msg=check service=app result=noop")

	if err := client.Snapshot().Restore(nil, bytes.NewReader(saved)); err != nil {
		t.Fatal(err)
	}
	if err := registered(); err == nil {
		t.Fatal("the restore left the records")
	}
	testutil.Eventually(t, 30*time.Second, registered)
}

// The agents' tokens of an older `fleet acl-policy agent`, which may
// not write the nudge (an upgrade that kept the tokens): a breaker one
// of them trips reaches no host at rest. A host whose own token may not
// write it does not rest: it reverts at its next check, not within the
// hour.
func TestHostWhoseTokenMayNotNudgeDoesNotRest(t *testing.T) {
	t.Parallel()
	f := newACLFleet(t, "")
	h := f.hosts[0]
	acl := servers.ACLConsul(t)
	consulNode, err := f.admin.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	rules, errOut, code := run(t, "fleet", "acl-policy", "agent", "--consul-node", consulNode, "-c", h.cfg)
	if code != 0 {
		t.Fatalf("fleet acl-policy agent: exit %d\n%s", code, errOut)
	}
	rule := fmt.Sprintf("key %q {\n  policy = \"write\"  # tells the hosts at rest that the breaker tripped\n}\n", fleet.RecordsChangedKey(f.prefix, "app"))
	if !strings.Contains(rules, rule) {
		t.Fatalf("no nudge rule in the policy:\n%s", rules)
	}
	older := acl.Token(t, "dropship-agent-older", strings.Replace(rules, rule, "", 1))
	cfg, _ := os.ReadFile(h.cfg)
	s := regexp.MustCompile(`token = "[^"]*"`).ReplaceAllString(string(cfg), fmt.Sprintf("token = %q", older))
	s = strings.Replace(s, `waves = ["100%"]`, "waves = [\"100%\"]\n    on_failure = \"revert\"", 1)
	testutil.WriteFile(t, h.cfg, []byte(s))

	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.waitLog(f.hosts, nil, "may not write the nudge of the fleet's records")
	v2 := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	f.waitInstalled(f.hosts, v2)
	// The rollout done, its coordinator gone: nobody writes the breakers
	// into the document any more.
	testutil.Eventually(t, 90*time.Second, func() error {
		if !strings.Contains(f.logSince(h, nil), "giving up coordinating") {
			return errors.New("host-0 still coordinates")
		}
		return nil
	})
	marks := f.marks()
	f.waitLog(f.hosts, marks, "msg=check service=app result=noop")

	// Another host, of the same older policy, trips the breaker on v2:
	// the record, and no nudge.
	b, _ := json.Marshal(fleet.Breaker{Checksum: v2, Node: "host-9", Phase: "check", Error: "failed on a late host", Time: time.Now().UTC()})
	if _, err := f.admin.KV().Put(&api.KVPair{Key: fleet.FailedKey(f.prefix, "app") + v2, Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	f.waitAll(f.hosts, "v1", 30*time.Second)
}

// A host at rest (its follower of the document paused) that waits long
// in line for a new release (20 s) follows the coordinator while it
// waits: the coordinator's end reaches it at once, rather than at its
// own look every few seconds (TestCoordinatorPausedPastItsTTL).
func TestHostAtRestInLineFollowsTheCoordinator(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 3, 1, c, `
  rollout {
    canary = 0
    waves  = ["100%"]
  }`)
	counters := map[*host]*consulCounter{}
	for _, h := range f.hosts {
		counters[h] = f.via(t, h, c.Addr)
	}
	v1 := f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.waitInstalled(f.hosts, v1)
	// At rest: no host follows the document any more.
	doc := "GET /v1/kv/" + lockconsul.RolloutKey(f.prefix, "app")
	testutil.Eventually(t, 60*time.Second, func() error {
		for h, cn := range counters {
			for _, p := range cn.held() {
				if p == doc {
					return fmt.Errorf("%s follows the document at rest", h.name)
				}
			}
		}
		return nil
	})
	slow := filepath.Join(f.dir, "slow")
	os.WriteFile(slow, nil, 0o644) // each update takes 30 s: the others wait in line
	t.Cleanup(func() { os.Remove(slow) })
	marks := f.marks()
	v2 := f.publish("v2", false)
	coord := "GET /v1/kv/" + lockconsul.CoordKey(f.prefix, "app")
	// A host follows 20 to 40 s after it got in line (agent.FollowInLine);
	// the last in line waits 60 s.
	testutil.Eventually(t, 90*time.Second, func() error {
		started := f.timelineStarts()[v2]
		if len(started) == 0 {
			return errors.New("no host updates to v2")
		}
		waiting := 0
		for _, h := range f.hosts {
			if slices.Contains(started, h.name) || !strings.Contains(f.logSince(h, marks), "waiting for a fleet slot") {
				continue
			}
			waiting++
			held := counters[h].held()
			if !slices.Contains(held, coord) {
				return fmt.Errorf("%s waits in line for %s and does not follow the coordinator: it holds %v", h.name, v2, held)
			}
		}
		if waiting == 0 {
			return errors.New("no host waits in line")
		}
		return nil
	})
}
