package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// watched runs WatchPublished of f until the test ends, and returns what
// it told of, one line each: "records <service>" or "published
// <service> <checksum>".
func watched(t *testing.T, f *Fleet, services ...string) func() []string {
	t.Helper()
	var mu sync.Mutex
	var told []string
	up := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.WatchPublished(ctx, fleet.Watch{
			Services: services,
			Changed: func(p fleet.Published) {
				mu.Lock()
				told = append(told, "published "+p.Service+" "+p.Checksum)
				mu.Unlock()
			},
			Records: func(service string) {
				mu.Lock()
				told = append(told, "records "+service)
				mu.Unlock()
			},
			Up: func() {
				select {
				case up <- struct{}{}:
				default:
				}
			},
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	<-up
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), told...)
	}
}

// watchedFleet is a Fleet of a prefix of its own, as host web-1 of
// "app", with its watch of the announcements running; await waits until
// the watch has told exactly want (see watched).
func watchedFleet(t *testing.T) (f *Fleet, client *api.Client, await func(want ...string)) {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: servers.Consul(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	f = &Fleet{Client: client, Prefix: "test/" + testutil.Unique(t), Node: "web-1"}
	told := watched(t, f, "app")
	return f, client, func(want ...string) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, func() error {
			if got := told(); fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("the watch told %q, want %q", got, want)
			}
			return nil
		})
	}
}

// The changes of the records a host at rest acts on (a breaker, a pin,
// a forgotten host) each write the nudge, which the watch of the
// announcements tells of as such; those a host at rest does not act on
// (a freeze, a hold, an unpin) do not wake every agent.
func TestNudgesOfTheRecordsWakeTheWatch(t *testing.T) {
	ctx := context.Background()
	f, _, await := watchedFleet(t)
	// What runs before any nudge: nothing told (the seed is no change).
	if err := f.SetFreeze(ctx, "app", &fleet.Freeze{Who: "ops", Reason: "friday"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Hold(ctx, "app", fleet.Hold{Who: "ops", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Trip(ctx, "app", fleet.Breaker{Checksum: "aaa", Phase: "check", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	await("records app")
	if _, err := f.SetPin(ctx, "app", "web-*", &fleet.Pin{Target: "bbb", Who: "ops"}); err != nil {
		t.Fatal(err)
	}
	await("records app", "records app")
	if _, err := f.SetPin(ctx, "app", "web-*", nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Report(ctx, "app", fleet.NodeStatus{Node: "web-1", Result: "registered"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Forget(ctx, "app", "web-1"); err != nil || !ok {
		t.Fatalf("forget: %v %v", ok, err)
	}
	await("records app", "records app", "records app")
	if err := f.Announce(ctx, fleet.Published{Service: "app", Checksum: "ccc"}); err != nil {
		t.Fatal(err)
	}
	await("records app", "records app", "records app", "published app ccc")
}

// A watch of an empty folder of announcements writes the nudge key of
// its first service: Consul's index of an empty folder is the whole
// store's, and every write anywhere (each host's report of a rollout)
// would wake every agent's watch. With the key, writes elsewhere do not.
func TestWatchOfAnEmptyFolderSeedsIt(t *testing.T) {
	c := servers.Consul(t)
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	prefix := "test/" + testutil.Unique(t)
	f := &Fleet{Client: client, Prefix: prefix, Node: "web-1"}
	watched(t, f, "app", "db")
	kv, _, err := client.KV().Get(fleet.RecordsChangedKey(prefix, "app"), nil)
	if err != nil || kv == nil {
		t.Fatalf("no seed after the watch's first answer: %v %v", kv, err)
	}
	var n fleet.RecordsChanged
	if err := json.Unmarshal(kv.Value, &n); err != nil || n.Service != "app" {
		t.Fatalf("seed %s: %v", kv.Value, err)
	}
	// The folder's index is its own now: a blocking list of it is not
	// woken by writes elsewhere.
	_, meta, err := client.KV().List(fleet.PublishedPrefix(prefix), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := client.KV().Put(&api.KVPair{Key: prefix + "/app/nodes/web-" + fmt.Sprint(i), Value: []byte("{}")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, after, err := client.KV().List(fleet.PublishedPrefix(prefix), nil)
	if err != nil {
		t.Fatal(err)
	}
	if after.LastIndex != meta.LastIndex {
		t.Fatalf("the folder's index moved from %d to %d with writes elsewhere", meta.LastIndex, after.LastIndex)
	}
}

// An agent's token (AgentPolicy) may write the nudge of its service's
// breaker: a breaker it trips reaches the hosts at rest.
func TestAgentTokenTripsAndNudges(t *testing.T) {
	acl := servers.ACLConsul(t)
	prefix := "test/" + testutil.Unique(t)
	client, err := api.NewClient(&api.Config{Address: acl.Addr, Token: acl.Token(t, "web-1", AgentPolicy(prefix, "web-1", "", []string{"app"}))})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fleet{Client: client, Prefix: prefix, Node: "web-1"}
	if err := f.Trip(context.Background(), "app", fleet.Breaker{Checksum: "aaa", Phase: "check", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	kv, _, err := acl.Admin(t).KV().Get(fleet.RecordsChangedKey(prefix, "app"), nil)
	if err != nil || kv == nil {
		t.Fatalf("no nudge after an agent's trip: %v %v", kv, err)
	}
	var n fleet.RecordsChanged
	if err := json.Unmarshal(kv.Value, &n); err != nil || n.What != "breaker" || n.Who != "web-1" {
		t.Fatalf("nudge %s: %v", kv.Value, err)
	}
}

// Whoever may write the folder of announcements (a CI token that may
// only announce) may write the nudge key too: a nudge written over with
// the seed's value, or deleted, before the watches saw it would leave
// the hosts at rest on a breaker or a pin for the hour. Any change of
// the key is told but the seed of an empty folder.
func TestNudgeOverwrittenOrDeletedIsTold(t *testing.T) {
	ctx := context.Background()
	f, client, await := watchedFleet(t)
	if err := f.Trip(ctx, "app", fleet.Breaker{Checksum: "aaa", Phase: "check", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	await("records app")
	seed, _ := json.Marshal(fleet.RecordsChanged{Service: "app", What: seedWhat, Who: "ci", Time: time.Now()})
	if _, err := client.KV().Put(&api.KVPair{Key: fleet.RecordsChangedKey(f.Prefix, "app"), Value: seed}, nil); err != nil {
		t.Fatal(err)
	}
	await("records app", "records app")
	if _, err := client.KV().Delete(fleet.RecordsChangedKey(f.Prefix, "app"), nil); err != nil {
		t.Fatal(err)
	}
	await("records app", "records app", "records app")
}

// An agent's token of an older policy may not write the nudge: the watch
// of an empty folder tries the seed once, not at each answer (in a busy
// Consul, writes anywhere answer it every second): a refused write each
// time would double what every such agent asks of Consul's leader.
func TestSeedRefusedIsNotTriedAgain(t *testing.T) {
	acl := servers.ACLConsul(t)
	prefix := "test/" + testutil.Unique(t)
	key := fleet.RecordsChangedKey(prefix, "app")
	policy := AgentPolicy(prefix, "web-1", "", []string{"app"})
	rule := fmt.Sprintf("key %q {\n  policy = \"write\"  # tells the hosts at rest that the breaker tripped\n}\n", key)
	if !strings.Contains(policy, rule) {
		t.Fatalf("no nudge rule in the policy:\n%s", policy)
	}
	policy = strings.Replace(policy, rule, "", 1)
	target, _ := url.Parse("http://" + acl.Addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var seeds, lists int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/v1/kv/"+key:
			seeds++
		case r.Method == http.MethodGet && r.URL.Path == "/v1/kv/"+fleet.PublishedPrefix(prefix):
			lists++
		}
		mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	client, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://"), Token: acl.Token(t, "web-1", policy)})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fleet{Client: client, Prefix: prefix, Node: "web-1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.WatchPublished(ctx, fleet.Watch{Services: []string{"app"}, Changed: func(fleet.Published) {}})
	}()
	defer func() { cancel(); srv.CloseClientConnections(); <-done }()
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return seeds, lists
	}
	admin := acl.Admin(t)
	// The folder empty again after each announcement taken back: a
	// watch of an empty folder, each time.
	other := fleet.PublishedPrefix(prefix) + "other"
	for range 3 {
		for _, put := range []bool{true, false} {
			_, before := count()
			var err error
			if put {
				_, err = admin.KV().Put(&api.KVPair{Key: other, Value: []byte("{}")}, nil)
			} else {
				_, err = admin.KV().Delete(other, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 20*time.Second, func() error {
				if _, n := count(); n < before+1 {
					return fmt.Errorf("the watch has not answered: %d lists", n)
				}
				return nil
			})
		}
	}
	if kv, _, err := admin.KV().Get(key, nil); err != nil || kv != nil {
		t.Fatalf("the older token wrote the seed: %v %v", kv, err)
	}
	if n, lists := count(); n != 1 {
		t.Fatalf("%d refused seeds over %d answers of the watch, want 1", n, lists)
	}
}

// The watch tells of a token that may not write its service's nudge
// (Watch.Refused) by a write that writes nothing: not of one that may.
func TestWatchTellsATokenThatMayNotNudge(t *testing.T) {
	acl := servers.ACLConsul(t)
	prefix := "test/" + testutil.Unique(t)
	key := fleet.RecordsChangedKey(prefix, "app")
	policy := AgentPolicy(prefix, "web-1", "", []string{"app"})
	rule := fmt.Sprintf("key %q {\n  policy = \"write\"  # tells the hosts at rest that the breaker tripped\n}\n", key)
	for _, tc := range []struct {
		policy  string
		refused bool
	}{{policy, false}, {strings.Replace(policy, rule, "", 1), true}} {
		client, err := api.NewClient(&api.Config{Address: acl.Addr, Token: acl.Token(t, "web-1", tc.policy)})
		if err != nil {
			t.Fatal(err)
		}
		f := &Fleet{Client: client, Prefix: prefix, Node: "web-1"}
		var refused []string
		up := make(chan struct{})
		var once sync.Once
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.WatchPublished(ctx, fleet.Watch{Services: []string{"app"}, Changed: func(fleet.Published) {},
				Refused: func(s string) { refused = append(refused, s) },
				Up:      func() { once.Do(func() { close(up) }) }})
		}()
		<-up
		cancel()
		<-done
		if got := len(refused) > 0; got != tc.refused {
			t.Errorf("refused %v, want %v", refused, tc.refused)
		}
	}
	// Neither wrote the key but by the seed of the empty folder.
	kv, _, err := acl.Admin(t).KV().Get(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if kv != nil {
		var n fleet.RecordsChanged
		if err := json.Unmarshal(kv.Value, &n); err != nil || n.What != seedWhat {
			t.Fatalf("the key holds %s", kv.Value)
		}
	}
}
