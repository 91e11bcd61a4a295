package main

import (
	"bufio"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func consulServer(t *testing.T) *rig.Consul { return servers.Consul(t) }

// ownConsul is a Consul agent of the test's own, for a test that kills
// and restarts it: the package's agent serves the tests running beside.
func ownConsul(t *testing.T) *rig.Consul {
	t.Helper()
	c, err := rig.StartConsul()
	testutil.RequireServer(t, "Consul", err)
	t.Cleanup(c.Stop)
	return c
}

// fleetRig is N agents, as separate processes, each with its own state
// dir, destination and node name, all watching one artifact.
type fleetRig struct {
	t      *testing.T
	dir    string
	store  string
	shared string // hooks append "<time> start|end <node> <checksum>"
	prefix string
	hosts  []*host
}

type host struct {
	name, cfg, dest string
	cmd             *exec.Cmd
}

// fleetRuns numbers the fleets of this process: see fleetPrefix.
var fleetRuns atomic.Int64

// fleetPrefix is the Consul prefix of a test's fleet, new at each run of
// the test (-count): a key a session held in the run before may not be
// taken again for Consul's lock delay, even once deleted.
func fleetPrefix(t *testing.T) string {
	return fmt.Sprintf("test/%s-%d", strings.ToLower(t.Name()), fleetRuns.Add(1))
}

func newFleet(t *testing.T, n, concurrency int, consul *rig.Consul, extra ...string) *fleetRig {
	dir := t.TempDir()
	f := &fleetRig{t: t, dir: dir, store: filepath.Join(dir, "store", "app.tar.gz"), shared: filepath.Join(dir, "timeline"),
		prefix: fleetPrefix(t)}
	// A fresh fleet, also when a test runs again (-count).
	if c, err := api.NewClient(&api.Config{Address: consul.Addr}); err == nil {
		c.KV().DeleteTree(f.prefix+"/", nil)
	}
	interval := `check_interval = "300ms"`
	for _, e := range extra {
		if strings.HasPrefix(e, "check_interval") || e == "# default check_interval" {
			interval = ""
		}
	}
	for i := range n {
		h := &host{name: fmt.Sprintf("host-%d", i), cfg: filepath.Join(dir, fmt.Sprintf("host-%d.hcl", i)),
			dest: filepath.Join(dir, fmt.Sprintf("host-%d", i), "srv", "app")}
		os.WriteFile(h.cfg, []byte(fmt.Sprintf(`
state_path = %[1]q
node_name  = %[2]q
lock "consul" {
  address     = %[3]q
  prefix      = %[4]q
  session_ttl = "10s"
}
service "app" {
  %[11]s
  sequential     = true
  concurrency    = %[5]d
  artifact "file" {
    path        = %[6]q
    destination = %[7]q
  }
  before "script" {
    command = "echo \"$(date +%%s.%%N) start $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> %[8]s; if [ -f %[9]s/slow ]; then sleep 30; fi; sleep 0.3"
  }
  after "script" {
    command = "echo \"$(date +%%s.%%N) end $DROPSHIP_HOSTNAME $DROPSHIP_PHASE $(cat VERSION)\" >> %[8]s"
  }
  check "script" {
    command = "test ! -f BAD"
    retries = 1
  }
  %[10]s
}
`, filepath.Join(dir, h.name, "state"), h.name, consul.Addr, f.prefix, concurrency, f.store, h.dest, f.shared, dir, strings.Join(extra, "\n"), interval)), 0o644)
		f.hosts = append(f.hosts, h)
	}
	t.Cleanup(f.stopAll)
	return f
}

// publish puts release v in the store and returns its checksum, which the
// hosts name in their logs and records.
func (f *fleetRig) publish(v string, bad bool) string {
	files := []testutil.File{{Name: "VERSION", Body: v}}
	if bad {
		files = append(files, testutil.File{Name: "BAD", Body: "this release fails its health check"})
	}
	b := testutil.TarGz(f.t, files...)
	testutil.WriteFile(f.t, f.store, b)
	later := time.Now().Add(time.Duration(len(v)) * time.Millisecond)
	os.Chtimes(f.store, later, later)
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func (f *fleetRig) start(h *host) {
	log, _ := os.Create(filepath.Join(f.dir, h.name+".log"))
	h.cmd = exec.Command(bin, "agent", "-c", h.cfg, "--log-level", "debug")
	h.cmd.Stderr, h.cmd.Stdout = log, log
	if err := h.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleetRig) startAll() {
	for _, h := range f.hosts {
		f.start(h)
	}
}

func (f *fleetRig) stopAll() {
	for _, h := range f.hosts {
		if h.cmd != nil && h.cmd.ProcessState == nil {
			h.cmd.Process.Signal(syscall.SIGTERM)
			// An agent a test paused (SIGSTOP) and did not resume, the
			// test having failed first, takes its SIGTERM once resumed.
			h.cmd.Process.Signal(syscall.SIGCONT)
			done := make(chan struct{})
			go func() {
				h.cmd.Wait()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(time.Minute):
				f.t.Errorf("%s did not stop within a minute of SIGTERM: killed", h.name)
				h.cmd.Process.Kill()
				<-done
			}
		}
	}
}

func (h *host) version() string {
	b, _ := os.ReadFile(filepath.Join(h.dest, "VERSION"))
	return string(b)
}

// waitAll waits (bounded) until every host in hosts runs version v.
func (f *fleetRig) waitAll(hosts []*host, v string, timeout time.Duration) {
	f.t.Helper()
	testutil.Eventually(f.t, timeout, func() error {
		done := 0
		for _, h := range hosts {
			if h.version() == v {
				done++
			}
		}
		if done == len(hosts) {
			return nil
		}
		var got []string
		for _, h := range f.hosts {
			got = append(got, h.name+"="+h.version())
		}
		log, _ := os.ReadFile(filepath.Join(f.dir, f.hosts[0].name+".log"))
		return fmt.Errorf("%d of %d hosts on %s: %v\nhost-0 log tail:\n%s", done, len(hosts), v, got, tailOf(log))
	})
}

// waitEnds waits (bounded) until n after hooks have finished for version
// v: a host shows v at its switch, its after hook ends a moment later.
func (f *fleetRig) waitEnds(v string, n int) {
	f.t.Helper()
	testutil.Eventually(f.t, 30*time.Second, func() error {
		b, _ := os.ReadFile(f.shared)
		if got := strings.Count(string(b), " after "+v+"\n"); got < n {
			return fmt.Errorf("%d of %d after hooks finished for %s:\n%s", got, n, v, b)
		}
		return nil
	})
}

// marks notes how far each host's log has got, so that waitLog looks
// only at what is written after.
func (f *fleetRig) marks() map[*host]int64 {
	m := map[*host]int64{}
	for _, h := range f.hosts {
		if fi, err := os.Stat(filepath.Join(f.dir, h.name+".log")); err == nil {
			m[h] = fi.Size()
		}
	}
	return m
}

// logSince is what h has logged after its mark.
func (f *fleetRig) logSince(h *host, marks map[*host]int64) string {
	b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
	if off := marks[h]; off <= int64(len(b)) {
		b = b[off:]
	}
	return string(b)
}

// waitLog waits (bounded) until each of hosts has logged, after its mark,
// a line holding every one of parts: a positive sign that it looked and
// decided, rather than a pause after which nothing is seen to happen.
// marks may be nil: the whole log.
func (f *fleetRig) waitLog(hosts []*host, marks map[*host]int64, parts ...string) {
	f.t.Helper()
	testutil.Eventually(f.t, 30*time.Second, func() error {
		for _, h := range hosts {
			if log := f.logSince(h, marks); !hasLine(log, parts) {
				return fmt.Errorf("%s has not logged a line with %q; log tail:\n%s", h.name, parts, tailOf([]byte(log)))
			}
		}
		return nil
	})
}

// waitInstalled waits (bounded) until each of hosts has logged that it
// installed sum: its after hooks have run and its record in Consul says
// so.
func (f *fleetRig) waitInstalled(hosts []*host, sum string) {
	f.t.Helper()
	f.waitLog(hosts, nil, "msg=installed service=app checksum="+sum)
}

func hasLine(log string, parts []string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func tailOf(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// update is one host's update, from its before hook to its after hook.
type update struct {
	node       string
	start, end float64
}

func (f *fleetRig) timeline() (updates []update, starts map[string][]string) {
	file, err := os.Open(f.shared)
	if err != nil {
		return nil, map[string][]string{}
	}
	defer file.Close()
	open := map[string]float64{}
	starts = map[string][]string{} // checksum -> nodes that started it
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		ts, _ := strconv.ParseFloat(fields[0], 64)
		switch fields[1] {
		case "start":
			open[fields[2]] = ts
			if len(fields) > 3 {
				starts[fields[3]] = append(starts[fields[3]], fields[2])
			}
		case "end":
			if s, ok := open[fields[2]]; ok {
				updates = append(updates, update{fields[2], s, ts})
				delete(open, fields[2])
			}
		}
	}
	return updates, starts
}

// maxOverlap is the most updates ever running at once.
func maxOverlap(us []update) int {
	type edge struct {
		t     float64
		delta int
	}
	var edges []edge
	for _, u := range us {
		edges = append(edges, edge{u.start, 1}, edge{u.end, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].t == edges[j].t {
			return edges[i].delta < edges[j].delta
		}
		return edges[i].t < edges[j].t
	})
	cur, best := 0, 0
	for _, e := range edges {
		cur += e.delta
		best = max(best, cur)
	}
	return best
}

func TestFleetRolloutOneAtATime(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 5, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.waitEnds("v1", 5)
	before, _ := f.timeline()
	sum2 := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	f.waitEnds("v2", 5)
	f.waitInstalled(f.hosts, sum2) // their records say so, for fleet status
	us, _ := f.timeline()
	if got := maxOverlap(us); got != 1 {
		t.Fatalf("with concurrency = 1, %d updates overlapped", got)
	}
	// The v2 rollout: wall time against the sum of the hosts' own updates.
	v2 := us[len(before):]
	if len(v2) != 5 {
		t.Fatalf("%d v2 updates, want 5", len(v2))
	}
	first, last, sum := v2[0].start, v2[0].end, 0.0
	for _, u := range v2 {
		first, last, sum = min(first, u.start), max(last, u.end), sum+(u.end-u.start)
	}
	wall := last - first
	t.Logf("5-host sequential rollout: %.3fs wall, %.3fs of updates, %.1fms per hand-off", wall, sum, (wall-sum)/4*1000)

	// fleet status shows every host on the newest checksum.
	out, errOut, code := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if code != 0 || !strings.Contains(out, "5 hosts, 5 on the newest checksum") {
		t.Fatalf("fleet status: %d\n%s%s", code, out, errOut)
	}
}

func TestFleetRolloutTwoAtATime(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 6, 2, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	f.waitEnds("v2", 6)
	us, _ := f.timeline()
	if got := maxOverlap(us); got > 2 {
		t.Fatalf("with concurrency = 2, %d updates overlapped", got)
	}
	t.Logf("max overlap with concurrency 2: %d", maxOverlap(us))
}

func TestBadReleaseStopsAtTheFirstHost(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 5, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.publish("bad", true)

	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	testutil.Eventually(t, 30*time.Second, func() error {
		keys, _, err := client.KV().Keys(f.prefix+"/app/failed/", "", nil)
		if len(keys) != 1 {
			return fmt.Errorf("breakers %v (%v), want one", keys, err)
		}
		return nil
	})
	_, starts := f.timeline()
	var badStarts []string
	var badSum string
	for sum, nodes := range starts {
		if len(nodes) == 1 {
			badStarts, badSum = nodes, sum
		}
	}
	if len(badStarts) != 1 {
		t.Fatalf("the bad release was started by %v, want exactly one host (starts %v)", badStarts, starts)
	}
	// Every other host sees the bad checksum and refuses it because of
	// the breaker.
	var others []*host
	for _, h := range f.hosts {
		if h.name != badStarts[0] {
			others = append(others, h)
		}
	}
	f.waitLog(others, f.marks(), "result=skipped", "failed on "+badStarts[0])
	if _, again := f.timeline(); len(again[badSum]) != 1 {
		t.Fatalf("the bad release was started by %v after the breaker tripped", again[badSum])
	}
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s runs %q, want v1 (rolled back or untouched)", h.name, h.version())
		}
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "BREAKER") || !strings.Contains(out, badStarts[0]) {
		t.Fatalf("fleet status does not show the breaker:\n%s", out)
	}
	// A new checksum starts a new rollout.
	f.publish("v3", false)
	f.waitAll(f.hosts, "v3", 60*time.Second)
}

// A release signed with a key the fleet does not trust is refused by
// every host before its body is read. The refusal does not trip the
// breaker: its checksum is only what the store claims (junk claiming a
// good release's checksum must not stop that release), and each host
// backs off on its own.
func TestForgedReleaseIsRefusedUnread(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	dir := t.TempDir()
	trusted, forger := filepath.Join(dir, "ci"), filepath.Join(dir, "forger")
	for _, k := range []string{trusted, forger} {
		if _, errOut, code := run(t, "keygen", "--out", k, "--no-password"); code != 0 {
			t.Fatal(errOut)
		}
	}
	f := newFleet(t, 4, 1, c, fmt.Sprintf("trusted_keys = [%q]", trusted+".pub"))
	f.publish("v1", false)
	if _, errOut, code := run(t, "sign", f.store, "--key", trusted+".key", "--service", "app"); code != 0 {
		t.Fatal(errOut)
	}
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	marks := f.marks()
	// As publish --sign does it: the (forged) signature goes up first, then
	// the artifact, so no host ever sees v2 beside v1's signature.
	next := filepath.Join(dir, "v2.tar.gz")
	testutil.WriteFile(t, next, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "v2"}))
	if _, errOut, code := run(t, "sign", next, "--key", forger+".key", "--service", "app", "--sig", f.store+".minisig"); code != 0 {
		t.Fatal(errOut)
	}
	if err := os.Rename(next, f.store); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	os.Chtimes(f.store, later, later)
	// Each host refuses it, then backs off: its check after the refusal.
	f.waitLog(f.hosts, marks, "update failed", "phase=signature", "not trusted")
	f.waitLog(f.hosts, marks, "result=skipped", "failed 1 time(s) in signature")
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	if pairs, _, _ := client.KV().List(f.prefix+"/app/failed/", nil); len(pairs) != 0 {
		t.Fatalf("a breaker was tripped by a refusal of unread bytes: %s", pairs[0].Value)
	}
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s runs %q", h.name, h.version())
		}
		b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
		if strings.Contains(string(b[marks[h]:]), "downloaded and verified") {
			t.Fatalf("%s downloaded the forged release", h.name)
		}
	}
	if _, starts := f.timeline(); len(starts) != 1 {
		t.Fatalf("before hooks ran for the forged release: %v", starts)
	}
}

func TestKilledHolderFreesTheSlot(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 5, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	os.WriteFile(filepath.Join(f.dir, "slow"), nil, 0o644)
	v2 := f.publish("v2", false)
	// Wait for the first host to start v2 (it now sleeps in its before
	// hook, holding the slot), then kill -9 its agent.
	var victim *host
	testutil.Eventually(t, 30*time.Second, func() error {
		_, starts := f.timeline()
		for _, h := range f.hosts {
			if len(starts[v2]) > 0 && h.name == starts[v2][0] {
				victim = h
				return nil
			}
		}
		return fmt.Errorf("nobody started v2: %v", starts)
	})
	os.Remove(filepath.Join(f.dir, "slow"))
	killed := time.Now()
	victim.cmd.Process.Signal(syscall.SIGKILL)
	victim.cmd.Wait()
	var others []*host
	for _, h := range f.hosts {
		if h != victim {
			others = append(others, h)
		}
	}
	// The session TTL (10s; Consul may take up to twice that) frees it.
	f.waitAll(others, "v2", 60*time.Second)
	t.Logf("slot freed and rollout finished %.1fs after kill -9 of the holder", time.Since(killed).Seconds())
	if victim.version() != "v1" {
		t.Fatalf("the killed host runs %q", victim.version())
	}
	// Restarted, the killed host recovers and catches up.
	f.start(victim)
	f.waitAll(f.hosts, "v2", 60*time.Second)
}

func TestConsulDownNobodyStarts(t *testing.T) {
	t.Parallel()
	c := ownConsul(t)
	f := newFleet(t, 5, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	_, before := f.timeline()
	c.Kill()
	marks := f.marks()
	f.publish("v2", false)
	// Each host sees v2, cannot reach Consul, and starts nothing.
	f.waitLog(f.hosts, marks, "result=error", "phase=lock", "fleet records unavailable")
	_, during := f.timeline()
	if len(during) != len(before) {
		t.Fatalf("an update started while Consul was down: %v", during)
	}
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s moved to %q without Consul", h.name, h.version())
		}
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	f.waitAll(f.hosts, "v2", 90*time.Second)
	us, _ := f.timeline()
	if got := maxOverlap(us); got != 1 {
		t.Fatalf("%d updates overlapped after Consul came back", got)
	}
}

func TestHoldAndResume(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 2, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	if out, errOut, code := run(t, "hold", "app", "--reason", "incident 42", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("hold: %s%s", out, errOut)
	}
	marks := f.marks()
	f.publish("v2", false)
	f.waitLog(f.hosts, marks, "result=skipped", "on hold since", "incident 42")
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s updated during a hold", h.name)
		}
	}
	out, _, _ := run(t, "fleet", "status", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "HOLD") || !strings.Contains(out, "incident 42") {
		t.Fatalf("status:\n%s", out)
	}
	run(t, "resume", "app", "-c", f.hosts[0].cfg)
	f.waitAll(f.hosts, "v2", 60*time.Second)
}

func TestFleetClear(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	client.KV().Put(&api.KVPair{Key: f.prefix + "/app/failed/abc", Value: []byte(`{"node":"h"}`)}, nil)
	if out, errOut, code := run(t, "fleet", "clear", "app", "abc", "-c", f.hosts[0].cfg); code != 0 || !strings.Contains(out, "lifted") {
		t.Fatalf("%d %s %s", code, out, errOut)
	}
	if kv, _, _ := client.KV().Get(f.prefix+"/app/failed/abc", nil); kv != nil {
		t.Fatal("breaker still there")
	}
	if _, _, code := run(t, "fleet", "clear", "app", "abc", "-c", f.hosts[0].cfg); code == 0 {
		t.Fatal("clearing a missing breaker succeeded")
	}
	_ = context.Background
}

// `fleet approve --wave` writes only a wave a rollout has: with this
// host's rollout block, one of its waves; without one, a name a rollout
// could have (canary, 1, 2, …).
func TestFleetApproveRefusesAnUnknownWave(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	plain := newFleet(t, 1, 1, c).hosts[0].cfg
	for wave, ok := range map[string]bool{"canary": true, "2": true, "cnary": false, "0": false, "02": false, "-1": false, "1/x": false} {
		out, errOut, code := run(t, "fleet", "approve", "app", "--wave", wave, "--checksum", "abc", "-c", plain)
		if (code == 0) != ok {
			t.Errorf("without a rollout block, wave %q: %d %s %s", wave, code, out, errOut)
		}
		if !ok && !strings.Contains(errOut, "canary, 1, 2") {
			t.Errorf("wave %q refused without saying which names a rollout has: %s", wave, errOut)
		}
	}
	withPolicy := newFleet(t, 1, 1, c, `rollout {
    waves = ["50%", "100%"]
  }`).hosts[0].cfg
	if _, errOut, code := run(t, "fleet", "approve", "app", "--wave", "3", "--checksum", "abc", "-c", withPolicy); code == 0 || !strings.Contains(errOut, `no wave "3" (the waves are 1, 2)`) {
		t.Errorf("wave 3 of two: %d %s", code, errOut)
	}
	if out, errOut, code := run(t, "fleet", "approve", "app", "--wave", "2", "--checksum", "abc", "-c", withPolicy); code != 0 {
		t.Errorf("wave 2 of two: %d %s %s", code, out, errOut)
	}
}

// `fleet status` names a host whose record is dated ahead of this host's
// clock, and not one within the tolerance.
func TestFleetStatusNamesAClockAhead(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	for node, at := range map[string]time.Time{"fast": time.Now().Add(3 * time.Hour), "near": time.Now().Add(10 * time.Second)} {
		b, _ := json.Marshal(fleet.NodeStatus{Node: node, Checksum: "abc", Result: "installed", Time: at})
		if _, err := client.KV().Put(&api.KVPair{Key: f.prefix + "/app/nodes/" + node, Value: b}, nil); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if code != 0 || !strings.Contains(out, "CLOCK AHEAD on fast?") || strings.Contains(out, "CLOCK AHEAD on near") {
		t.Fatalf("%d %s %s", code, out, errOut)
	}
}
