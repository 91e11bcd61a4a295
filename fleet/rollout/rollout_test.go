package rollout

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

func policy(t *testing.T, canary int, waves ...string) *Policy {
	t.Helper()
	p := &Policy{Canary: canary, MaxFailed: 1, OnFailure: OnFailureStop}
	for _, w := range waves {
		wave, err := ParseWave(w)
		if err != nil {
			t.Fatal(err)
		}
		p.Waves = append(p.Waves, wave)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

func members(n int, tags map[int][]string) []Member {
	var out []Member
	for i := range n {
		out = append(out, Member{Node: fmt.Sprintf("host-%02d", i), Tags: tags[i]})
	}
	return out
}

func TestPlanIsDeterministicAndCoversEveryHostOnce(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "10%", "50%", "100%")
	ms := members(20, nil)
	a := p.Plan("sum1", ms)
	// Another host sees the members in another order: same plan.
	rev := make([]Member, len(ms))
	for i := range ms {
		rev[i] = ms[len(ms)-1-i]
	}
	b := p.Plan("sum1", rev)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("plans differ:\n%v\n%v", a, b)
	}
	sizes := []int{}
	seen := map[string]int{}
	for _, s := range a {
		sizes = append(sizes, len(s.Nodes))
		for _, n := range s.Nodes {
			seen[n]++
		}
	}
	// canary 1, then up to 10% of 20 = 2 (one more), 50% = 10, 100% = 20.
	if fmt.Sprint(sizes) != "[1 1 8 10]" {
		t.Fatalf("wave sizes %v", sizes)
	}
	if len(seen) != 20 {
		t.Fatalf("%d hosts planned", len(seen))
	}
	for n, c := range seen {
		if c != 1 {
			t.Fatalf("%s in %d waves", n, c)
		}
	}
	if names := fmt.Sprint(p.Names()); names != "[canary 1 2 3]" {
		t.Fatalf("names %s", names)
	}
	// Another checksum, another order: the same hosts are not always first.
	firsts := map[string]bool{}
	for i := range 10 {
		firsts[p.Plan(fmt.Sprintf("sum%d", i), ms)[0].Nodes[0]] = true
	}
	if len(firsts) < 3 {
		t.Fatalf("the canary is nearly always the same host: %v", firsts)
	}
}

func TestPlanTagsCanaryAndTagWaves(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "tag:eu", "100%")
	ms := members(6, map[int][]string{4: {"canary"}, 1: {"eu"}, 2: {"eu", "canary"}})
	steps := p.Plan("x", ms)
	if got := fmt.Sprint(steps[0].Nodes); got != "[host-02 host-04]" && got != "[host-04 host-02]" {
		t.Fatalf("canary wave %v: want the tagged hosts", steps[0].Nodes)
	}
	if fmt.Sprint(steps[1].Nodes) != "[host-01]" {
		t.Fatalf("eu wave %v: the canary host tagged eu is already placed", steps[1].Nodes)
	}
	if len(steps[2].Nodes) != 3 {
		t.Fatalf("last wave %v", steps[2].Nodes)
	}
}

// PlanFirst takes the canary among the hosts ready for it (in line, or
// on the release), in their order; hosts tagged canary still come first,
// and a ready host that is not a member is not planned.
func TestPlanFirstTakesTheCanaryAmongTheReady(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "10%", "100%")
	ms := members(20, nil)
	plain := p.Plan("sum1", ms)
	var late string // a host Plan puts in the last wave
	for _, n := range plain[len(plain)-1].Nodes {
		late = n
	}
	steps := p.PlanFirst("sum1", ms, []string{"host-99", late, plain[0].Nodes[0]})
	if fmt.Sprint(steps[0].Nodes) != "["+late+"]" {
		t.Fatalf("canary %v: want %s, the first ready member", steps[0].Nodes, late)
	}
	seen := map[string]int{}
	for _, s := range steps {
		for _, n := range s.Nodes {
			seen[n]++
		}
	}
	if len(seen) != 20 || seen["host-99"] != 0 {
		t.Fatalf("planned %v: want the 20 members once each", seen)
	}
	tagged := members(20, map[int][]string{7: {"canary"}})
	if steps := p.PlanFirst("sum1", tagged, []string{late}); fmt.Sprint(steps[0].Nodes) != "[host-07]" {
		t.Fatalf("canary %v: want host-07, tagged", steps[0].Nodes)
	}
}

func TestValidateRefuses(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{Waves: []Wave{{Percent: 50}}, MaxFailed: 1, OnFailure: "stop"}, `last wave must be "100%"`},
		{Policy{Waves: []Wave{{Percent: 50}, {Percent: 20}, {Percent: 100}}, MaxFailed: 1, OnFailure: "stop"}, "must grow"},
		{Policy{Waves: []Wave{{Percent: 100}}, MaxFailed: 1, OnFailure: "rewind"}, `on_failure: "rewind"`},
		{Policy{Waves: []Wave{{Percent: 100}}, MaxFailed: 1, OnFailure: "stop", Approve: []string{"canary"}}, `no wave "canary"`},
	} {
		if err := c.p.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
	for _, bad := range []string{"0%", "101%", "ten", "tag:", "50"} {
		if _, err := ParseWave(bad); err == nil {
			t.Errorf("wave %q accepted", bad)
		}
	}
}

func TestWindow(t *testing.T) {
	t.Parallel()
	w, err := ParseWindow("Mon-Fri", "09:00-16:00", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	at := func(s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, c := range []struct {
		now  string
		open bool
		next string
	}{
		{"2026-11-23 10:00", true, "2026-11-23 16:00"},  // Monday
		{"2026-11-23 08:59", false, "2026-11-23 09:00"}, // before
		{"2026-11-23 16:00", false, "2026-11-24 09:00"}, // the end is out
		{"2026-11-27 17:00", false, "2026-11-30 09:00"}, // Friday evening: Monday
		{"2026-11-28 12:00", false, "2026-11-30 09:00"}, // Saturday
	} {
		open, next := w.Open(at(c.now))
		if open != c.open || !next.Equal(at(c.next)) {
			t.Errorf("%s: open %v next %s, want %v %s", c.now, open, next.In(berlin), c.open, c.next)
		}
	}
	// A window passing midnight belongs to the day it opens.
	night, _ := ParseWindow("Sat", "22:00-02:00", "UTC")
	sun1am := time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC)
	if open, closes := night.Open(sun1am); !open || !closes.Equal(time.Date(2026, 11, 29, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("Sunday 01:00 in Saturday's night window: %v %s", open, closes)
	}
	for _, bad := range [][3]string{{"Mon-Frx", "09:00-10:00", ""}, {"", "9-10", ""}, {"", "09:00-09:00", ""}, {"", "09:00-10:00", "Mars/Base"}} {
		if _, err := ParseWindow(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("window %q accepted", bad)
		}
	}
}

type fakeGate struct {
	ok    bool
	err   error
	calls int
}

func (g *fakeGate) Name() string { return "fake" }
func (g *fakeGate) Check(ctx context.Context, from, to time.Time) (Verdict, error) {
	g.calls++
	return Verdict{OK: g.ok, Detail: "value 0.2"}, g.err
}

// fleetOf builds a status where the hosts of done are on sum at doneAt.
func fleetOf(p *Policy, n int, sum string, done map[string]time.Time) fleet.Status {
	st := fleet.Status{Service: "app"}
	for _, m := range members(n, nil) {
		ns := fleet.NodeStatus{Node: m.Node, Checksum: "old", Policy: p.Hash(), Result: "installed"}
		if t, ok := done[m.Node]; ok {
			ns.Checksum, ns.Time = sum, t
		}
		st.Nodes = append(st.Nodes, ns)
	}
	return st
}

func TestDecideWavesBakeGatesApprovalWindow(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "50%", "100%")
	p.Bake = 10 * time.Minute
	p.Approve = []string{"2"}
	g := &fakeGate{ok: true}
	p.Gates = []Gate{g}
	ctx := context.Background()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	st := fleetOf(p, 4, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	canary, wave1, wave2 := steps[0].Nodes[0], steps[1].Nodes[0], steps[2].Nodes[0]
	d := NewDecider(p)
	decide := func(node string, st fleet.Status, now time.Time) Decision {
		return d.Decide(ctx, node, View{Service: "app", Checksum: "new", Status: st, Now: now})
	}
	if dec := decide(canary, st, now); !dec.Go || dec.Wave != "canary" {
		t.Fatalf("canary: %+v", dec)
	}
	if dec := decide(wave1, st, now); dec.Go || !strings.Contains(dec.Reason, "waiting for wave canary: 0 of 1") {
		t.Fatalf("wave 1 before the canary: %+v", dec)
	}
	// The canary's application defers the release: the wave says so.
	deferred := fleetOf(p, 4, "new", nil)
	for i := range deferred.Nodes {
		if deferred.Nodes[i].Node == canary {
			deferred.Nodes[i].Result, deferred.Nodes[i].Attempt = "deferred", "new"
		}
	}
	if dec := decide(wave1, deferred, now); dec.Go || !strings.Contains(dec.Reason, "the application defers it on "+canary) {
		t.Fatalf("wave 1 while the canary defers: %+v", dec)
	}
	// The canary done: wave 1 bakes for 10 minutes, asking the gate.
	st = fleetOf(p, 4, "new", map[string]time.Time{canary: now})
	dec := decide(wave1, st, now.Add(time.Minute))
	if dec.Go || !dec.Until.Equal(now.Add(10*time.Minute)) || !strings.Contains(dec.Reason, "baking wave canary") {
		t.Fatalf("during the bake: %+v", dec)
	}
	if dec := decide(wave1, st, now.Add(10*time.Minute)); !dec.Go {
		t.Fatalf("after the bake: %+v", dec)
	}
	calls := g.calls
	decide(wave1, st, now.Add(11*time.Minute))
	if g.calls != calls {
		t.Fatal("a bake judged once was judged again")
	}
	// Wave 2 needs approval.
	st = fleetOf(p, 4, "new", map[string]time.Time{canary: now, wave1: now.Add(11 * time.Minute)})
	for _, n := range steps[1].Nodes {
		for i := range st.Nodes {
			if st.Nodes[i].Node == n {
				st.Nodes[i].Checksum, st.Nodes[i].Time = "new", now.Add(11*time.Minute)
			}
		}
	}
	late := now.Add(30 * time.Minute)
	if dec := decide(wave2, st, late); dec.Go || !strings.Contains(dec.Reason, "dropship fleet approve app --wave 2") {
		t.Fatalf("wave 2 unapproved: %+v", dec)
	}
	st.Approvals = []fleet.Approval{{Checksum: "other", Wave: "2"}}
	if dec := decide(wave2, st, late); dec.Go {
		t.Fatalf("an approval of another checksum let wave 2 go: %+v", dec)
	}
	st.Approvals = []fleet.Approval{{Checksum: "new", Wave: "2"}}
	if dec := decide(wave2, st, late); !dec.Go {
		t.Fatalf("wave 2 approved: %+v", dec)
	}
	// A window closed, a freeze, a host with another policy.
	p.Window, _ = ParseWindow("Mon-Fri", "11:00-12:00", "UTC")
	d2 := NewDecider(p)
	st2 := st
	for i := range st2.Nodes {
		st2.Nodes[i].Policy = p.Hash()
	}
	dec = d2.Decide(ctx, wave2, View{Service: "app", Checksum: "new", Status: st2, Now: late})
	if dec.Go || !dec.Until.Equal(time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)) {
		t.Fatalf("window closed: %+v", dec)
	}
	st2.Freeze = &fleet.Freeze{Who: "ops", Reason: "black friday"}
	if dec := d2.Decide(ctx, wave2, View{Checksum: "new", Status: st2, Now: late.Add(time.Hour)}); dec.Go || !strings.Contains(dec.Reason, "frozen by ops: black friday") {
		t.Fatalf("frozen: %+v", dec)
	}
	st2.Freeze = nil
	st2.Nodes[0].Policy = "0123456789ab"
	if dec := d2.Decide(ctx, wave2, View{Checksum: "new", Status: st2, Now: late.Add(time.Hour)}); dec.Go || !strings.Contains(dec.Reason, "rollout policy differs") {
		t.Fatalf("policy mismatch: %+v", dec)
	}
}

func TestDecideGateFailingMidBakeTrips(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "100%")
	p.Bake = time.Minute
	g := &fakeGate{ok: false}
	p.Gates = []Gate{g}
	now := time.Now()
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	st = fleetOf(p, 3, "new", map[string]time.Time{steps[0].Nodes[0]: now})
	dec := NewDecider(p).Decide(context.Background(), steps[1].Nodes[0], View{Checksum: "new", Status: st, Now: now.Add(20 * time.Second)})
	if dec.Go || !strings.Contains(dec.Trip, "gate fake failed during the bake of wave canary: value 0.2") || dec.TripPhase != PhaseGate {
		t.Fatalf("%+v", dec)
	}
	// A gate that cannot be asked at the end of the bake proves nothing:
	// wait, do not trip.
	g.err = fmt.Errorf("connection refused")
	dec = NewDecider(p).Decide(context.Background(), steps[1].Nodes[0], View{Checksum: "new", Status: st, Now: now.Add(2 * time.Minute)})
	if dec.Go || dec.Trip != "" || !strings.Contains(dec.Reason, "could not be asked") {
		t.Fatalf("gate error: %+v", dec)
	}
}

func TestPinnedHostsAreLeftOutOfWaves(t *testing.T) {
	t.Parallel()
	p := policy(t, 0, "100%")
	st := fleetOf(p, 3, "new", nil)
	st.Pins = []fleet.Pin{{Nodes: "host-0[01]", Target: "old"}}
	ms := Members(st, "")
	if len(ms) != 1 || ms[0].Node != "host-02" {
		t.Fatalf("members %v, want host-02 alone", ms)
	}
}

// Failures that count (the release's fault, since the last clear) stop
// the rollout at max_failed, whoever counts; others hold their wave.
func TestDecideCountsFailures(t *testing.T) {
	t.Parallel()
	p := policy(t, 0, "50%", "100%")
	p.MaxFailed = 2
	now := time.Now()
	st := fleetOf(p, 4, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	first, second := steps[0].Nodes, steps[1].Nodes
	fail := func(st *fleet.Status, node string, counted bool, at time.Time) {
		for i := range st.Nodes {
			if st.Nodes[i].Node == node {
				st.Nodes[i].Result, st.Nodes[i].Attempt, st.Nodes[i].Counted, st.Nodes[i].Time = "failed", "new", counted, at
			}
		}
	}
	d := NewDecider(p)
	decide := func(st fleet.Status) Decision {
		return d.Decide(context.Background(), second[0], View{Checksum: "new", Status: st, Now: now})
	}
	// One host of the first wave failed for its own reasons (a download
	// that broke): its wave waits for it.
	fail(&st, first[0], false, now)
	st.Nodes[indexOf(st, first[1])].Checksum = "new"
	if dec := decide(st); dec.Go || !strings.Contains(dec.Reason, "waiting for wave 1: 1 of 2") {
		t.Fatalf("a host's own failure let the wave through: %+v", dec)
	}
	// The release's fault, under max_failed: the wave is done.
	fail(&st, first[0], true, now)
	if dec := decide(st); !dec.Go {
		t.Fatalf("one counted failure under max_failed = 2: %+v", dec)
	}
	// Two counted failures: whoever decides trips the breaker.
	fail(&st, second[1], true, now)
	if dec := decide(st); dec.Go || !strings.Contains(dec.Trip, "2 hosts failed new (max_failed = 2)") || dec.TripPhase != PhaseMaxFailed {
		t.Fatalf("max_failed reached: %+v", dec)
	}
	if Failed(st, "new") != 2 {
		t.Fatalf("Failed = %d", Failed(st, "new"))
	}
	// Cleared: the failures before it no longer count.
	st.Cleared = map[string]time.Time{"new": now.Add(time.Second)}
	if n := Failed(st, "new"); n != 0 {
		t.Fatalf("%d failures count after the clear", n)
	}
}

func indexOf(st fleet.Status, node string) int {
	for i, n := range st.Nodes {
		if n.Node == node {
			return i
		}
	}
	return -1
}

// A wave that is empty for this fleet (its share rounds to hosts already
// placed) still holds back the waves after it when it needs approval: the
// person who asked to approve the rollout past the canary is asked.
func TestApprovalOfAnEmptyWaveHoldsTheNext(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "10%", "50%", "100%")
	p.Approve = []string{"1"}
	now := time.Now()
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	if len(steps[1].Nodes) != 0 || len(steps[2].Nodes) == 0 {
		t.Fatalf("want wave 1 empty with 3 hosts: %v", steps)
	}
	st = fleetOf(p, 3, "new", map[string]time.Time{steps[0].Nodes[0]: now.Add(-time.Hour)})
	decide := func(st fleet.Status) Decision {
		return NewDecider(p).Decide(context.Background(), steps[2].Nodes[0], View{Service: "app", Checksum: "new", Status: st, Now: now})
	}
	if dec := decide(st); dec.Go || !strings.Contains(dec.Reason, "waiting for approval of wave 1") {
		t.Fatalf("wave 2 started without the approval of wave 1: %+v", dec)
	}
	st.Approvals = []fleet.Approval{{Checksum: "new", Wave: "1"}}
	if dec := decide(st); !dec.Go {
		t.Fatalf("wave 1 approved: %+v", dec)
	}
}

// A bake judged once is not judged again; but a wave that ends again (a
// host that joined it, a checksum cleared and installed anew) has a new
// bake, and its gates judge that one.
func TestANewBakeOfTheSameWaveIsJudgedAgain(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "100%")
	p.Bake = 10 * time.Minute
	g := &fakeGate{ok: true}
	p.Gates = []Gate{g}
	d := NewDecider(p)
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	canary, next := steps[0].Nodes[0], steps[1].Nodes[0]
	decide := func(done, now time.Time) Decision {
		st := fleetOf(p, 3, "new", map[string]time.Time{canary: done})
		return d.Decide(context.Background(), next, View{Service: "app", Checksum: "new", Status: st, Now: now})
	}
	if dec := decide(t0, t0.Add(11*time.Minute)); !dec.Go {
		t.Fatalf("first bake: %+v", dec)
	}
	t1 := t0.Add(time.Hour)
	g.ok = false
	dec := decide(t1, t1.Add(11*time.Minute))
	if dec.Go || !strings.Contains(dec.Trip, "gate fake failed") {
		t.Fatalf("the second bake of wave canary went by unjudged: %+v", dec)
	}
}

// Every host judges the window alike: "Local" is each host's own zone,
// so the same policy would open at different times on different hosts.
func TestWindowRefusesTheLocalZone(t *testing.T) {
	t.Parallel()
	for _, tz := range []string{"Local", "local"} {
		if _, err := ParseWindow("Mon-Fri", "09:00-16:00", tz); err == nil || !strings.HasPrefix(err.Error(), "timezone") {
			t.Errorf("timezone %q: %v", tz, err)
		}
	}
}

// A comparison with bool returns 0 or 1 whether or not it holds: such a
// gate would always hold, and is refused.
func TestPrometheusGateRefusesBool(t *testing.T) {
	t.Parallel()
	for q, refused := range map[string]bool{
		`rate(errors[5m]) < bool 0.01`:                       true,
		`sum(rate(errors[5m])) / sum(rate(req[5m])) >BOOL 0`: true,
		"up ==\n  # a comment\n  bool 1":                     true,
		`rate(errors[5m]) < 0.01`:                            false,
		`sum by (bool) (up) > 0`:                             false,
		`up{job="a < bool 1"} > 0`:                           false,
		`up{job=~"x{2}", bool="1"} == 1`:                     false,
		`label_replace(up, "x", "< bool", "", "") > 0`:       false,
		"up > 0 # < bool 1":                                  false,
	} {
		g := &Prometheus{Query: q}
		if err := g.Validate(); (err != nil) != refused {
			t.Errorf("%q: %v, want refused %v", q, err, refused)
		}
	}
}

// A record dated ahead of the reader's clock (a host whose clock runs
// fast, a hand-edited record) counts as of when the reader first saw it:
// a bake ends after its length, and a clear dated ahead does not hide the
// failures after it.
func TestRecordsDatedAheadCountFromWhenSeen(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "100%")
	p.Bake = 10 * time.Minute
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	canary, next := steps[0].Nodes[0], steps[1].Nodes[0]
	st = fleetOf(p, 3, "new", map[string]time.Time{canary: now.Add(24 * time.Hour)})
	d := NewDecider(p)
	decide := func(st fleet.Status, at time.Time) Decision {
		return d.Decide(context.Background(), next, View{Checksum: "new", Status: st, Now: at})
	}
	if dec := decide(st, now); dec.Go || !dec.Until.Equal(now.Add(p.Bake)) {
		t.Fatalf("a canary dated a day ahead, seen now: %+v; want a bake until %s", dec, now.Add(p.Bake))
	}
	if dec := decide(st, now.Add(p.Bake)); !dec.Go {
		t.Fatalf("after the bake: %+v", dec)
	}
	// Within the tolerance, a record's time is taken as it is.
	st = fleetOf(p, 3, "new", map[string]time.Time{canary: now.Add(30 * time.Second)})
	if dec := NewDecider(p).Decide(context.Background(), next, View{Checksum: "new", Status: st, Now: now}); !dec.Until.Equal(now.Add(30*time.Second + p.Bake)) {
		t.Fatalf("a record 30 s ahead: %+v", dec)
	}

	// A clear dated an hour ahead, seen now; then two hosts fail.
	p = policy(t, 0, "100%")
	p.MaxFailed = 2
	st = fleetOf(p, 3, "new", nil)
	st.Cleared = map[string]time.Time{"new": now.Add(time.Hour)}
	d = NewDecider(p)
	if dec := d.Decide(context.Background(), "host-02", View{Checksum: "new", Status: st, Now: now}); !dec.Go {
		t.Fatalf("after the clear: %+v", dec)
	}
	for _, i := range []int{0, 1} {
		st.Nodes[i].Result, st.Nodes[i].Attempt, st.Nodes[i].Counted, st.Nodes[i].Time = "failed", "new", true, now.Add(time.Second)
	}
	if dec := d.Decide(context.Background(), "host-02", View{Checksum: "new", Status: st, Now: now.Add(2 * time.Second)}); dec.TripPhase != PhaseMaxFailed {
		t.Fatalf("two failures after a clear dated ahead: %+v", dec)
	}
}

// A host that registers in the middle of a rollout whose plan is fixed
// goes into the last wave: it does not become the canary, and no waiting
// host moves into a wave already approved.
func TestFixedPlanPutsLateHostsLast(t *testing.T) {
	p := policy(t, 1, "50%", "100%")
	p.Approve = []string{"1"}
	st := fleetOf(p, 6, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	st.Plans = map[string][]fleet.PlanWave{"new": Waves(steps)}
	canary := steps[0].Nodes[0]
	st = fleetOf(p, 6, "new", map[string]time.Time{canary: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)})
	st.Plans = map[string][]fleet.PlanWave{"new": Waves(steps)}
	st.Approvals = []fleet.Approval{{Checksum: "new", Wave: "1"}}
	// Hosts join; one is forgotten. Recomputed, the plan would move hosts
	// between waves; fixed, the waves keep their hosts.
	for i := 6; i < 12; i++ {
		st.Nodes = append(st.Nodes, fleet.NodeStatus{Node: fmt.Sprintf("late-%02d", i), Checksum: "old", Policy: p.Hash()})
	}
	gone := steps[1].Nodes[0]
	st.Nodes = append(st.Nodes[:indexOf(st, gone)], st.Nodes[indexOf(st, gone)+1:]...)
	got := p.Fixed("new", st, Members(st, ""))
	if fmt.Sprint(got[0].Nodes) != fmt.Sprint(steps[0].Nodes) {
		t.Fatalf("the canary changed: %v, was %v", got[0].Nodes, steps[0].Nodes)
	}
	for i, s := range got[:len(got)-1] {
		for _, n := range s.Nodes {
			if strings.HasPrefix(n, "late-") {
				t.Errorf("late host %s in wave %s", n, s.Name)
			}
		}
		if i == 1 && len(s.Nodes) != len(steps[1].Nodes)-1 {
			t.Errorf("wave 1 has %v; was %v less %s", s.Nodes, steps[1].Nodes, gone)
		}
	}
	if n := len(got[len(got)-1].Nodes); n != len(steps[len(steps)-1].Nodes)+6 {
		t.Errorf("the last wave has %d hosts; want its %d and the 6 late ones", n, len(steps[len(steps)-1].Nodes))
	}
	// A late host waits for the approved wave 1 to finish, like the rest
	// of the last wave; it is not let in with it.
	d := NewDecider(p)
	dec := d.Decide(context.Background(), "late-07", View{Service: "app", Checksum: "new", Status: st, Now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)})
	if dec.Go || dec.Wave != "2" || !strings.Contains(dec.Reason, "waiting for wave 1") {
		t.Fatalf("a late host: %+v", dec)
	}
}

// A wave whose hosts watched their health for the whole bake (watch =
// "bake") has served it: the next wave starts when it reports, with the
// gates judged over the watch. A host that watched less, or did not,
// leaves the bake to count from the wave's end.
func TestAWaveWatchedThroughTheBakeHasServedIt(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "100%")
	p.Bake = 10 * time.Minute
	g := &gateWindow{}
	p.Gates = []Gate{g}
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	canary, next := steps[0].Nodes[0], steps[1].Nodes[0]
	withWatch := func(w time.Duration) fleet.Status {
		st := fleetOf(p, 3, "new", map[string]time.Time{canary: now})
		for i := range st.Nodes {
			if st.Nodes[i].Node == canary {
				st.Nodes[i].Watched = w
			}
		}
		return st
	}
	decide := func(st fleet.Status) Decision {
		return NewDecider(p).Decide(context.Background(), next, View{Service: "app", Checksum: "new", Status: st, Now: now})
	}
	if dec := decide(withWatch(p.Bake)); !dec.Go {
		t.Fatalf("the canary watched for the bake; the next wave waits: %+v", dec)
	}
	if !g.from.Equal(now.Add(-p.Bake)) || !g.to.Equal(now) {
		t.Fatalf("gates judged over [%s, %s]; want the watch [%s, %s]", g.from, g.to, now.Add(-p.Bake), now)
	}
	for _, w := range []time.Duration{0, p.Bake - time.Second} {
		if dec := decide(withWatch(w)); dec.Go || !dec.Until.Equal(now.Add(p.Bake)) {
			t.Fatalf("the canary watched %s of a %s bake: %+v; want a bake until %s", w, p.Bake, dec, now.Add(p.Bake))
		}
	}
}

// gateWindow passes and keeps the window it was asked about.
type gateWindow struct{ from, to time.Time }

func (g *gateWindow) Name() string { return "window" }
func (g *gateWindow) Check(_ context.Context, from, to time.Time) (Verdict, error) {
	g.from, g.to = from, to
	return Verdict{OK: true}, nil
}

// A host whose clock runs behind dates its report in the past: a decider
// that has read the records before counts the report from when it first
// saw it, so the bake still lasts its length. A decider whose first read
// it is (a coordinator taking over) takes the report as dated.
func TestRecordsDatedBehindCountFromWhenSeen(t *testing.T) {
	t.Parallel()
	p := policy(t, 1, "100%")
	p.Bake = 10 * time.Minute
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	st := fleetOf(p, 3, "new", nil)
	steps := p.Plan("new", Members(st, ""))
	canary, next := steps[0].Nodes[0], steps[1].Nodes[0]
	d := NewDecider(p)
	decide := func(d *Decider, st fleet.Status, at time.Time) Decision {
		return d.Decide(context.Background(), next, View{Checksum: "new", Status: st, Now: at})
	}
	if dec := decide(d, st, now); dec.Go {
		t.Fatalf("before the canary: %+v", dec)
	}
	// The canary installs a minute later, its clock an hour behind.
	seen := now.Add(time.Minute)
	st = fleetOf(p, 3, "new", map[string]time.Time{canary: seen.Add(-time.Hour)})
	if dec := decide(d, st, seen); dec.Go || !dec.Until.Equal(seen.Add(p.Bake)) {
		t.Fatalf("a canary dated an hour behind, seen now: %+v; want a bake until %s", dec, seen.Add(p.Bake))
	}
	if dec := decide(d, st, seen.Add(p.Bake/2)); dec.Go {
		t.Fatalf("half way through the bake: %+v", dec)
	}
	if dec := decide(d, st, seen.Add(p.Bake)); !dec.Go {
		t.Fatalf("after the bake: %+v", dec)
	}
	// Within the tolerance, a report is taken as dated.
	st = fleetOf(p, 3, "new", map[string]time.Time{canary: seen.Add(-30 * time.Second)})
	d = NewDecider(p)
	decide(d, fleetOf(p, 3, "new", nil), now)
	if dec := decide(d, st, seen); !dec.Until.Equal(seen.Add(-30*time.Second + p.Bake)) {
		t.Fatalf("a report 30 s behind: %+v", dec)
	}
	// A first read takes the report as dated: its bake is long over.
	st = fleetOf(p, 3, "new", map[string]time.Time{canary: seen.Add(-time.Hour)})
	if dec := decide(NewDecider(p), st, seen); !dec.Go {
		t.Fatalf("a decider's first read of a report an hour old: %+v", dec)
	}
}
