package consul

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// Hosts with their agents' tokens (AgentPolicy) may delete only their own
// events: each must trim its own as it appends, or the log grows past its
// bound by about trimCheck events per host (for 1,000 hosts, some
// 125,000, which every dashboard and `fleet log` reads in full). Each
// keeps its share, MaxEvents over the writers: their reports bring the
// log back to MaxEvents, as their appends with Record do.
func TestAgentsReportsKeepTheAuditLogBounded(t *testing.T) {
	ctx := context.Background()
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	prefix := "test/" + testutil.Unique(t)
	const hosts = 10
	txns := &kindCounter{base: http.DefaultTransport.(*http.Transport).Clone()}
	fleets := make([]*Fleet, hosts)
	for i := range fleets {
		node := fmt.Sprint("host-", i)
		cfg := &api.Config{Address: acl.Addr, Token: acl.Token(t, node, AgentPolicy(prefix, node, "", []string{"app"}))}
		if i == 0 {
			cfg.HttpClient = &http.Client{Transport: txns}
		}
		client, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// As the lock block builds it: what its token may trim is learnt once.
		fleets[i] = &Fleet{Client: client, Prefix: prefix, Node: node, SessionTTL: 10 * time.Second, scope: new(atomic.Int32)}
	}
	// The rollouts before: the log full, each host's events among them.
	fillLog(t, admin, prefix, fleet.MaxEvents+trimSlack, func(i int) string { return fleets[i%hosts].Node }, -1)
	for r := range 300 {
		f := fleets[r%hosts]
		ns := fleet.NodeStatus{Node: f.Node, Checksum: "new", Attempt: "new", Result: "installed", Time: time.Now().UTC()}
		if err := f.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
			t.Fatalf("report %d of %s: %v", r, f.Node, err)
		}
		keys, _, err := admin.KV().Keys(fleet.AuditKey(prefix, "app"), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > fleet.MaxEvents+trimSlack+hosts {
			t.Fatalf("after %d reports the audit log holds %d events: its bound is %d", r+1, len(keys), fleet.MaxEvents+trimSlack)
		}
	}
	// Every host has reported: each holds its share, 100.
	keys, _, err := admin.KV().Keys(fleet.AuditKey(prefix, "app"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != fleet.MaxEvents {
		t.Fatalf("after every host's reports the audit log holds %d events, want %d", len(keys), fleet.MaxEvents)
	}
	// The token's scope is learnt from its first report: each report since
	// is one transaction (with the trim's reads), never a refused one
	// retried, nor the status and events written apart.
	txns.reset()
	f := fleets[0]
	ns := fleet.NodeStatus{Node: f.Node, Checksum: "last", Attempt: "last", Result: "installed", Time: time.Now().UTC()}
	if err := f.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	if n, refused, puts := txns.count("PUT /v1/txn"), txns.count("409 "), txns.count("PUT /v1/kv/"); n < 1 || refused != 0 || puts != 0 {
		t.Fatalf("a report made %d transactions (%d refused) and %d single writes: %v", n, refused, puts, txns.seen())
	}
}

// kindCounter counts requests by method and path, and those refused
// by their status code too.
type kindCounter struct {
	base http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
}

func (c *kindCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	resp, err := c.base.RoundTrip(r)
	if err == nil && resp.StatusCode >= 400 {
		c.mu.Lock()
		c.n[fmt.Sprint(resp.StatusCode, " ", r.Method, " ", r.URL.Path)]++
		c.mu.Unlock()
	}
	return resp, err
}

func (c *kindCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = nil
}

// count is the number of requests whose method and path begin with prefix.
func (c *kindCounter) count(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.n {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

func (c *kindCounter) seen() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

// Agents that may delete only their own events, in a fleet of more hosts
// than the log's bound: each host keeps its newest event, so no host can
// bring the log down to its bound. Each report reads this host's own
// folder (and the writers' names at the first trim), never the whole
// log, and the log keeps one event per host rather than growing.
func TestAgentsOfAFleetLargerThanTheBoundReadOnlyTheirOwnEvents(t *testing.T) {
	ctx := context.Background()
	base, cnt := countedFleet(t, "test/"+testutil.Unique(t), "host-0")
	admin, err := api.NewClient(&api.Config{Address: servers.Consul(t).Addr}) // not counted
	if err != nil {
		t.Fatal(err)
	}
	const hosts, reports = fleet.MaxEvents + trimSlack + 50, 100
	// The rollout before: one event per host.
	fillLog(t, admin, base.Prefix, hosts, func(i int) string { return fmt.Sprint("host-", i) }, -1)
	// As the lock blocks of the fleet's agents build theirs: the token's
	// scope learnt (an agent's: trimOwn, see above).
	own := new(atomic.Int32)
	own.Store(trimOwn)
	shares := new(sync.Map)
	before, reqs := cnt.recv.Load(), cnt.req.Load()
	for i := range reports {
		h := *base
		h.Node, h.scope, h.shares = fmt.Sprint("host-", i), own, shares
		ns := fleet.NodeStatus{Node: h.Node, Checksum: "new", Attempt: "new", Result: "installed", Time: time.Now().UTC()}
		if err := h.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
			t.Fatal(err)
		}
		mine, _, err := admin.KV().Keys(h.auditFolder("app"), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(mine) != 1 || !strings.Contains(mine[0], "-") || strings.Contains(mine[0], "-0000") {
			t.Fatalf("%s's own events after its report: %v, want its newest alone", h.Node, mine)
		}
	}
	read := (cnt.recv.Load() - before) / reports
	perReport := float64(cnt.req.Load()-reqs) / reports
	keys, _, err := admin.KV().Keys(fleet.AuditKey(base.Prefix, "app"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != hosts {
		t.Errorf("the log holds %d events after %d reports of a fleet of %d hosts, want one per host", len(keys), reports, hosts)
	}
	// The report, the keys of its own folder and its events, the delete
	// of its older event; the writers' names once. The log's keys alone are some
	// 90 KB, its events some 700 KB.
	if read > 8<<10 || perReport > 4.5 {
		t.Errorf("each report made %.1f requests and read %d KB from Consul", perReport, read>>10)
	}
}

// agentFleet is host node of an agent's token (AgentPolicy) on the ACL
// Consul, built as the lock block builds it.
func agentFleet(t *testing.T, acl *rig.ACLConsul, prefix, node string) *Fleet {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: acl.Addr, Token: acl.Token(t, node, AgentPolicy(prefix, node, "", []string{"app"}))})
	if err != nil {
		t.Fatal(err)
	}
	return &Fleet{Client: client, Prefix: prefix, Node: node, SessionTTL: 10 * time.Second, scope: new(atomic.Int32), shares: new(sync.Map)}
}

// eventsOf returns node's events in the log, as "kind checksum".
func eventsOf(t *testing.T, admin *api.Client, prefix, node string) []string {
	t.Helper()
	evs, _, err := (&Fleet{Client: admin, Prefix: prefix}).Log(context.Background(), "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		if ev.Node == node {
			out = append(out, ev.Kind+" "+ev.Checksum)
		}
	}
	return out
}

// In a fleet of more hosts than the log's bound (each keeps one report's
// events), an agent's report of a failure and its rollback keeps both,
// and so does the report after a clock stepped back past an event the
// host wrote: its own events go by Consul's order, not its clock's.
func TestAgentsKeepTheirNewestReportWhole(t *testing.T) {
	ctx := context.Background()
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	prefix := "test/" + testutil.Unique(t)
	fillLog(t, admin, prefix, fleet.MaxEvents+trimSlack+50, func(i int) string { return fmt.Sprint("host-", i) }, -1)
	f := agentFleet(t, acl, prefix, "host-3")
	ns := fleet.NodeStatus{Node: f.Node, Checksum: "v1", Attempt: "v2", Result: "failed", Phase: "check", Error: "health check failed", Time: time.Now().UTC()}
	evs := fleet.OutcomeEvents(ns)
	if len(evs) != 2 {
		t.Fatalf("a failure in the check phase: %d events, want the failure and the rollback", len(evs))
	}
	if err := f.ReportEvents(ctx, "app", ns, evs); err != nil {
		t.Fatal(err)
	}
	if got := eventsOf(t, admin, prefix, f.Node); len(got) != 2 {
		t.Fatalf("the log keeps %v of host-3's report of a failure and its rollback", got)
	}
	// A clock a day ahead, then stepped back: the next report's events
	// are the newest.
	g := agentFleet(t, acl, prefix, "host-7")
	ns = fleet.NodeStatus{Node: g.Node, Checksum: "v1", Attempt: "v1", Result: "installed", Time: time.Now().UTC().Add(24 * time.Hour)}
	if err := g.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	ns = fleet.NodeStatus{Node: g.Node, Checksum: "v1", Attempt: "v2", Result: "failed", Phase: "switch", Error: "boom", Time: time.Now().UTC()}
	if err := g.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	got := eventsOf(t, admin, prefix, g.Node)
	if len(got) != 2 || !strings.Contains(strings.Join(got, ","), "v2") {
		t.Fatalf("after its clock stepped back, the log keeps %v of host-7's events, want its last report's (v2)", got)
	}
}
