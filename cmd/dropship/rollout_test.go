package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// tag gives host i node tags in its agent file.
func (f *fleetRig) tag(i int, tags ...string) {
	h := f.hosts[i]
	b, _ := os.ReadFile(h.cfg)
	q := make([]string, len(tags))
	for j, t := range tags {
		q[j] = fmt.Sprintf("%q", t)
	}
	line := fmt.Sprintf("node_name  = %q\nnode_tags  = [%s]", h.name, strings.Join(q, ", "))
	os.WriteFile(h.cfg, []byte(strings.Replace(string(b), fmt.Sprintf("node_name  = %q", h.name), line, 1)), 0o644)
}

var waveLine = regexp.MustCompile(`wave may start" service=app checksum=(\S+) wave=(\S+)`)

// waves reads from the hosts' logs which wave each host started in, for
// checksum sum: wave name -> hosts.
func (f *fleetRig) waves(sum string) map[string][]string {
	out := map[string][]string{}
	for _, h := range f.hosts {
		b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
		for _, m := range waveLine.FindAllStringSubmatch(string(b), -1) {
			if m[1] == sum {
				out[m[2]] = append(out[m[2]], h.name)
				break
			}
		}
	}
	return out
}

const rolloutWaves = `
  rollout {
    canary = 1
    waves  = ["50%", "100%"]
    bake   = "1s"
  }`

// Waves go in order: no host of a wave starts before every host of the
// wave before it has finished and the bake has passed.
func TestRolloutWavesInOrderWithBake(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 2, c, rolloutWaves)
	f.tag(5, "canary", "eu")
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.waitEnds("v1", 8)
	sum := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 90*time.Second)
	f.waitEnds("v2", 8)
	f.waitInstalled(f.hosts, sum)

	w := f.waves(sum)
	if len(w["canary"]) != 1 || len(w["1"]) != 3 || len(w["2"]) != 4 {
		t.Fatalf("waves %v: want 1 canary, 3 more to reach 50%%, 4 in the last", w)
	}
	if w["canary"][0] != "host-5" {
		t.Fatalf("the canary is %s, want host-5, tagged canary", w["canary"][0])
	}
	us, _ := f.timeline()
	span := map[string][2]float64{} // host -> start, end of its v2 update
	for _, u := range us[len(us)-8:] {
		span[u.node] = [2]float64{u.start, u.end}
	}
	order := []string{"canary", "1", "2"}
	for i := 1; i < len(order); i++ {
		lastEnd := 0.0
		for _, h := range w[order[i-1]] {
			lastEnd = max(lastEnd, span[h][1])
		}
		for _, h := range w[order[i]] {
			if gap := span[h][0] - lastEnd; gap < 1.0 {
				t.Errorf("%s (wave %s) started %.3fs after wave %s ended, before the 1s bake passed", h, order[i], gap, order[i-1])
			}
		}
	}
	if got := maxOverlap(us[len(us)-8:]); got > 2 {
		t.Errorf("concurrency 2 within a wave, but %d updates overlapped", got)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	for _, want := range []string{"rollout of " + sum, "wave canary 1 hosts: 1 done", "wave 1 3 hosts: 3 done", "wave 2 4 hosts: 4 done"} {
		if !strings.Contains(squash(out), want) {
			t.Errorf("fleet status lacks %q:\n%s", want, out)
		}
	}
}

// squash collapses runs of spaces, for comparing aligned output.
func squash(s string) string {
	return regexp.MustCompile(` +`).ReplaceAllString(s, " ")
}

// distinct fails when a host started sum more than once.
func (f *fleetRig) startedOnce(t *testing.T, sum string) []string {
	t.Helper()
	_, starts := f.timeline()
	seen := map[string]bool{}
	for _, h := range starts[sum] {
		if seen[h] {
			t.Fatalf("%s started %s twice: %v", h, sum, starts[sum])
		}
		seen[h] = true
	}
	return starts[sum]
}

func TestRolloutApprovalBlocksAndReleases(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    canary  = 1
    waves   = ["100%"]
    approve = ["1"]
  }`)
	sum := f.publish("v1", false)
	f.startAll()
	marks := f.marks()
	var canary *host
	testutil.Eventually(t, 60*time.Second, func() error {
		for _, h := range f.hosts {
			if h.version() == "v1" {
				canary = h
				return nil
			}
		}
		return errors.New("no canary installed v1")
	})
	var others []*host
	for _, h := range f.hosts {
		if h != canary {
			others = append(others, h)
		}
	}
	f.waitLog(others, marks, "waiting for approval of wave 1: dropship fleet approve app --wave 1")
	if got := f.startedOnce(t, sum); len(got) != 1 {
		t.Fatalf("before the approval %v started, want the canary alone", got)
	}
	out, errOut, code := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if code != 0 || !strings.Contains(squash(out), "wave 1 7 hosts: 0 done, 7 waiting: waiting for approval of wave 1") {
		t.Fatalf("fleet status: %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := run(t, "fleet", "approve", "app", "-c", f.hosts[0].cfg); code != 0 || !strings.Contains(out, "wave 1 of "+sum+" approved") {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	f.waitAll(f.hosts, "v1", 60*time.Second)
	log, _, _ := run(t, "fleet", "log", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(log, "approve") || !strings.Contains(log, "wave 1") {
		t.Fatalf("the approval is not in the audit log:\n%s", log)
	}
}

func TestRolloutFreezeStopsNewWaves(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    waves = ["50%", "100%"]
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	if out, errOut, code := run(t, "fleet", "freeze", "app", "--reason", "release party", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("freeze: %s %s", out, errOut)
	}
	marks := f.marks()
	f.publish("v2", false)
	f.waitLog(f.hosts, marks, "frozen by", "release party")
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s took v2 during the freeze", h.name)
		}
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "FROZEN by") || !strings.Contains(out, "release party") {
		t.Fatalf("fleet status does not show the freeze:\n%s", out)
	}
	if out, errOut, code := run(t, "fleet", "unfreeze", "app", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("unfreeze: %s %s", out, errOut)
	}
	f.waitAll(f.hosts, "v2", 60*time.Second)
	log, _, _ := run(t, "fleet", "log", "app", "-c", f.hosts[0].cfg)
	for _, want := range []string{"freeze", "release party", "unfreeze"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the audit log lacks %q:\n%s", want, log)
		}
	}
}

func TestRolloutPinKeepsHostsOnARelease(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    waves = ["100%"]
  }`)
	v1 := f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 60*time.Second)

	// Pinned to a release it keeps, the host goes back to it.
	if out, errOut, code := run(t, "fleet", "pin", "app", "--nodes", "host-3", v1, "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("pin: %s %s", out, errOut)
	}
	f.waitAll(f.hosts[3:4], "v1", 30*time.Second)
	marks := f.marks()
	v3 := f.publish("v3", false)
	var others []*host
	for i, h := range f.hosts {
		if i != 3 {
			others = append(others, h)
		}
	}
	f.waitAll(others, "v3", 60*time.Second)
	f.waitInstalled(others, v3) // their records say so, for fleet status
	f.waitLog(f.hosts[3:4], marks, "pinned to "+v1)
	if v := f.hosts[3].version(); v != "v1" {
		t.Fatalf("the pinned host runs %s", v)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "PIN hosts host-3 on "+v1) || !strings.Contains(squash(out), "wave 1 7 hosts: 7 done") {
		t.Fatalf("fleet status:\n%s", out)
	}
	if out, errOut, code := run(t, "fleet", "unpin", "app", "--nodes", "host-3", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("unpin: %s %s", out, errOut)
	}
	f.waitAll(f.hosts[3:4], "v3", 30*time.Second)
}

func TestRolloutPolicyMismatchStopsEveryone(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, rolloutWaves)
	b, _ := os.ReadFile(f.hosts[7].cfg)
	os.WriteFile(f.hosts[7].cfg, []byte(strings.Replace(string(b), `bake   = "1s"`, `bake   = "5s"`, 1)), 0o644)
	f.publish("v1", false)
	marks := f.marks()
	f.startAll()
	f.waitLog(f.hosts, marks, "rollout policy differs")
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "POLICY DIFFERS on host-7") {
		t.Fatalf("fleet status does not name the host that differs:\n%s", out)
	}
	if _, starts := f.timeline(); len(starts) != 0 {
		t.Fatalf("hosts started with policies that differ: %v", starts)
	}
	// The host's config fixed and reloaded: the rollout goes.
	os.WriteFile(f.hosts[7].cfg, b, 0o644)
	f.hosts[7].cmd.Process.Signal(syscall.SIGHUP)
	f.waitAll(f.hosts, "v1", 90*time.Second)
}

// A canary whose health check fails: only it is touched (its own
// rollback), the breaker stops every other host.
func TestRolloutCanaryFailsAlone(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    canary     = 1
    waves      = ["100%"]
    on_failure = "revert"
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	marks := f.marks()
	bad := f.publish("bad", true)
	testutil.Eventually(t, 30*time.Second, func() error {
		if starts := f.timelineStarts(); len(starts[bad]) == 0 {
			return fmt.Errorf("no canary started the bad release %s: %v", bad, starts)
		}
		return nil
	})
	f.waitLog(f.hosts, marks, "result=skipped", "checksum="+bad)
	if got := f.startedOnce(t, bad); len(got) != 1 {
		t.Fatalf("the bad release was started by %v, want the canary alone", got)
	}
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s runs %q", h.name, h.version())
		}
	}
}

// onVersion is the hosts whose files are those of version v.
func (f *fleetRig) onVersion(v string) []*host {
	var on []*host
	for _, h := range f.hosts {
		if h.version() == v {
			on = append(on, h)
		}
	}
	return on
}

func (f *fleetRig) timelineStarts() map[string][]string {
	_, s := f.timeline()
	return s
}

// Consul restarted mid-rollout (a -dev agent: its records are gone): the
// hosts register again, the rollout goes on, and no host runs an update
// twice.
func TestRolloutSurvivesAConsulRestart(t *testing.T) {
	t.Parallel()
	c := ownConsul(t)
	f := newFleet(t, 8, 2, c, `
  rollout {
    canary = 1
    waves  = ["50%", "100%"]
    bake   = "2s"
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	sum := f.publish("v2", false)
	// Once the canary is done, Consul goes away and comes back empty.
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := f.onVersion("v2"); len(n) == 0 {
			return errors.New("the canary has not installed v2")
		}
		return nil
	})
	marks := f.marks()
	c.Kill()
	// A real outage, not a test shortcut: a host finds Consul gone.
	testutil.Eventually(t, 30*time.Second, func() error {
		for _, h := range f.hosts {
			if strings.Contains(f.logSince(h, marks), "fleet records unavailable") {
				return nil
			}
		}
		return errors.New("no host has found Consul gone")
	})
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	f.waitAll(f.hosts, "v2", 90*time.Second)
	f.waitEnds("v2", 8)
	f.waitInstalled(f.hosts, sum)
	if got := f.startedOnce(t, sum); len(got) != 8 {
		t.Fatalf("%d hosts started v2, want 8 (each once): %v", len(got), got)
	}
	w := f.waves(sum)
	if len(w["canary"]) != 1 {
		t.Fatalf("waves %v", w)
	}
}

// The dashboard shows a rollout wave by wave, live, and a wave waiting
// for approval is approved from the page with a token.
func TestDashboardShowsARolloutInABrowser(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	b := startBrowser(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    canary  = 1
    waves   = ["50%", "100%"]
    bake    = "1s"
    approve = ["2"]
  }`)
	f.publish("v1", false)
	f.startAll()
	const token = "rollout-test-token-0123456789"
	url := startDashboard(t, f.hosts[0].cfg, token)
	waitService(t, url, "app")
	b.navigate(url + "services/app")
	b.waitJS("the waves, wave 2 waiting for approval",
		`(r => r && /4 waiting: waiting for approval of wave 2/.test(r.textContent))(document.querySelector('table.waves tr[data-wave="2"]'))`)
	b.waitJS("canary and wave 1 done",
		`["canary", "1"].every(w => /done$/.test(document.querySelector('table.waves tr[data-wave="' + w + '"] td.reason').textContent))`)
	b.screenshot("dashboard-waves.png", 1000, 760)
	// Approve from the page: the last wave goes, and the page shows it.
	b.eval(fmt.Sprintf(`(() => {
		document.getElementById("token").value = %q;
		const form = document.querySelector('form[data-action="approve"]');
		form.querySelector('input[name="wave"]').value = "2";
		form.requestSubmit();
	})()`, token), nil)
	b.waitJS("the approval done", `/approve: done/.test(document.getElementById("action-result").textContent)`)
	f.waitAll(f.hosts, "v1", 60*time.Second)
	b.waitJS("every wave done, live",
		`[...document.querySelectorAll('table.waves td.reason')].every(td => td.textContent === "done")`)
	b.waitJS("the approval in the history", `[...document.querySelectorAll('tr[data-kind="approve"]')].some(r => /alice \(dashboard on host-0\)/.test(r.textContent) && /wave 2/.test(r.textContent))`)
}

// prometheusServer is the package's Prometheus, once it has scraped
// errorRatio: the gate judges from the start of each bake, so the series
// must be there.
func prometheusServer(t *testing.T) (*rig.Prometheus, prometheus.Gauge) {
	p := servers.Prometheus(t)
	g := &rollout.Prometheus{Address: p.URL, Query: "app_error_ratio"}
	testutil.Eventually(t, 30*time.Second, func() error {
		now := time.Now()
		if v, err := g.Check(context.Background(), now, now); err != nil || !v.OK {
			return fmt.Errorf("Prometheus has not scraped the test's metric: %v %+v", err, v)
		}
		return nil
	})
	return p, errorRatio
}

// A gate that fails during a bake stops the rollout, and with
// on_failure = "revert" every host already updated goes back; the hosts
// of the next waves never start.
func TestRolloutGateFailsMidBakeAndReverts(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	p, ratio := prometheusServer(t)
	ratio.Set(0.001)
	f := newFleet(t, 8, 4, c, fmt.Sprintf(`
  rollout {
    canary     = 1
    waves      = ["50%%", "100%%"]
    bake       = "4s"
    on_failure = "revert"
    gate "prometheus" {
      address = %q
      query   = "app_error_ratio < 0.01"
    }
  }`, p.URL))
	v1 := f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.waitEnds("v1", 8)
	f.publish("v2", false)
	// Wave 1 (the canary and 3 more: 50 %) installs; during its bake the
	// error ratio goes up.
	var updated []*host
	testutil.Eventually(t, 60*time.Second, func() error {
		if updated = f.onVersion("v2"); len(updated) != 4 {
			return fmt.Errorf("%d hosts on v2, want 4 (canary and wave 1)", len(updated))
		}
		return nil
	})
	marks := f.marks()
	ratio.Set(0.5)
	f.waitAll(f.hosts, "v1", 60*time.Second)
	// Back on v1 at the switch; the revert is recorded once its hooks ran.
	f.waitLog(updated, marks, "msg=check", "result=reverted", "checksum="+v1)
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(out, "BREAKER") || !strings.Contains(out, "in gate") || !strings.Contains(out, "gate prometheus failed during the bake of wave 1") {
		t.Fatalf("fleet status does not show the gate's breaker:\n%s", out)
	}
	w := map[string][]string{}
	for _, h := range f.hosts {
		b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
		if hasLine(string(b[marks[h]:]), []string{"fleet revert"}) {
			w["reverted"] = append(w["reverted"], h.name)
		}
	}
	if len(w["reverted"]) != 4 {
		t.Fatalf("reverted %v, want the 4 hosts of the canary and wave 1", w["reverted"])
	}
	_, starts := f.timeline()
	for s, nodes := range starts {
		if len(nodes) == 4 {
			continue // v2: the canary and wave 1
		}
		if len(nodes) != 8 {
			t.Fatalf("checksum %s started on %v", s, nodes)
		}
	}
	// A host writes its audit events after its node record: wait for them.
	testutil.Eventually(t, 30*time.Second, func() error {
		log, _, _ := run(t, "fleet", "log", "app", "-c", f.hosts[0].cfg)
		if strings.Count(log, "revert ") < 4 || !strings.Contains(log, "gate ") {
			return fmt.Errorf("the audit log lacks the gate or the reverts:\n%s", log)
		}
		return nil
	})
	ratio.Set(0.001)
}

// A closed deploy window holds every host back, saying until when; the
// window opened (by a config reload) lets the rollout go. The window's
// arithmetic with an injected clock is in fleet/rollout's tests.
func TestRolloutWindowClosed(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	now := time.Now().UTC()
	closed := now.Add(48 * time.Hour).Weekday().String()[:3]
	f := newFleet(t, 8, 4, c, fmt.Sprintf(`
  rollout {
    waves = ["100%%"]
    window {
      days  = %q
      hours = "00:00-24:00"
    }
  }`, closed))
	f.publish("v1", false)
	marks := f.marks()
	f.startAll()
	f.waitLog(f.hosts, marks, "outside the deploy window", "opens "+now.Add(48*time.Hour).Format("2006-01-02")+"T00:00:00Z")
	if _, starts := f.timeline(); len(starts) != 0 {
		t.Fatalf("hosts started outside the window: %v", starts)
	}
	// What `dropship publish` announces, so that fleet status knows the
	// release rolling out before any host has it.
	b, _ := os.ReadFile(f.store)
	sum := md5.Sum(b)
	pub, _ := json.Marshal(fleet.Published{Service: "app", Checksum: hex.EncodeToString(sum[:])})
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	if _, err := client.KV().Put(&api.KVPair{Key: fleet.PublishedPrefix(f.prefix) + "app", Value: pub}, nil); err != nil {
		t.Fatal(err)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if !strings.Contains(squash(out), "wave 1 8 hosts: 0 done, 8 waiting: outside the deploy window") {
		t.Fatalf("fleet status does not say the window is closed:\n%s", out)
	}
	for _, h := range f.hosts {
		b, _ := os.ReadFile(h.cfg)
		os.WriteFile(h.cfg, []byte(strings.Replace(string(b), fmt.Sprintf("days  = %q", closed), `days  = "Mon-Sun"`, 1)), 0o644)
		h.cmd.Process.Signal(syscall.SIGHUP)
	}
	f.waitAll(f.hosts, "v1", 60*time.Second)
}

// A host gone for good holds its wave back until it is forgotten.
func TestRolloutForgetADeadHost(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 4, c, `
  rollout {
    canary = 1
    waves  = ["100%"]
  }`)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	p, _ := rollout.ParseWave("100%")
	pol := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{p}, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	// Tagged canary: the wave every other host waits for.
	dead, _ := json.Marshal(fleet.NodeStatus{Node: "host-dead", Result: "registered", Policy: pol.Hash(), Tags: []string{"canary"}, Time: time.Now()})
	client.KV().Put(&api.KVPair{Key: fleet.NodesKey(f.prefix, "app") + "host-dead", Value: dead}, nil)
	f.publish("v1", false)
	marks := f.marks()
	f.startAll()
	// The hosts wait in line; the coordinator's document says why.
	f.waitLog(f.hosts, marks, "waiting for a fleet slot")
	testutil.Eventually(t, 30*time.Second, func() error {
		kv, _, err := client.KV().Get(lockconsul.RolloutKey(f.prefix, "app"), nil)
		if err != nil || kv == nil {
			return fmt.Errorf("no rollout document: %v", err)
		}
		if !strings.Contains(string(kv.Value), "waiting for wave canary: 0 of 1 hosts done (host-dead to go)") {
			return fmt.Errorf("the rollout does not wait for host-dead: %s", kv.Value)
		}
		return nil
	})
	if out, errOut, code := run(t, "fleet", "forget", "app", "host-dead", "-c", f.hosts[0].cfg); code != 0 || !strings.Contains(out, "forgotten") {
		t.Fatalf("forget: %d %s %s", code, out, errOut)
	}
	f.waitAll(f.hosts, "v1", 60*time.Second)
	if _, _, code := run(t, "fleet", "forget", "app", "host-dead", "-c", f.hosts[0].cfg); code == 0 {
		t.Fatal("forgetting a host twice succeeded")
	}
}
