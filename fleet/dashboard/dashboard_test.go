package dashboard_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/fleet/dashboard"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Consul: true}) }

// start runs a dashboard over a fresh prefix in the real Consul.
func start(t *testing.T, actions bool) (*consul.Fleet, *httptest.Server) {
	t.Helper()
	return startWith(t, func(o *dashboard.Options) {
		if actions {
			o.Actor, o.Tokens = o.Store.(*consul.Fleet), map[string]string{"s3cret-token-0123456789": "alice"}
		}
	}, nil)
}

// startWith is start with options of the test's own, served on ln if
// not nil.
func startWith(t *testing.T, opts func(*dashboard.Options), ln net.Listener) (*consul.Fleet, *httptest.Server) {
	t.Helper()
	c, _ := api.NewClient(&api.Config{Address: servers.Consul(t).Addr})
	p := &consul.Fleet{Client: c, Prefix: "test/" + testutil.Unique(t), Node: "dash", SessionTTL: 10 * time.Second}
	o := dashboard.Options{Store: p}
	if opts != nil {
		opts(&o)
	}
	s, err := dashboard.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	hs := httptest.NewUnstartedServer(s.Handler())
	if ln != nil {
		hs.Listener.Close()
		hs.Listener = ln
	}
	hs.Start()
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); cancel() })
	return p, hs
}

func report(t *testing.T, p *consul.Fleet, node, sum, result string) {
	t.Helper()
	host := *p // Report writes under the fleet's own node name
	host.Node = node
	if err := host.Report(context.Background(), "app", fleet.NodeStatus{Node: node, Checksum: sum, Attempt: sum, Release: "r-" + sum,
		Result: result, Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
}

func getFleet(t *testing.T, hs *httptest.Server) dashboard.Fleet {
	t.Helper()
	resp, err := http.Get(hs.URL + "/api/v1/fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f dashboard.Fleet
	json.NewDecoder(resp.Body).Decode(&f)
	return f
}

// waitService waits (bounded) until the dashboard shows a service.
func waitService(t *testing.T, hs *httptest.Server) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		if len(getFleet(t, hs).Services) == 0 {
			return errors.New("the dashboard shows no service")
		}
		return nil
	})
}

func TestFleetAPIGroupsHostsByChecksum(t *testing.T) {
	p, hs := start(t, false)
	report(t, p, "host-0", "aaaa", "installed")
	report(t, p, "host-1", "aaaa", "installed")
	report(t, p, "host-2", "bbbb", "installed")
	var f dashboard.Fleet
	testutil.Eventually(t, 30*time.Second, func() error {
		if f = getFleet(t, hs); len(f.Services) != 1 || len(f.Services[0].Nodes) != 3 {
			return fmt.Errorf("the dashboard shows %+v, not 3 hosts", f)
		}
		return nil
	})
	s := f.Services[0]
	if s.Newest != "bbbb" || s.OnNewest != 1 || len(s.Groups) != 2 || len(s.Groups[0].Hosts) != 2 || s.Groups[0].Checksum != "aaaa" || !s.Groups[1].Newest {
		t.Fatalf("service %+v", s)
	}
	resp, err := http.Get(hs.URL + "/services/app")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := new(strings.Builder)
	bufio.NewReader(resp.Body).WriteTo(b)
	for _, want := range []string{"2 hosts on", "1 host on", `data-node="host-2"`, "rolling out"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the service page lacks %q", want)
		}
	}
	if resp, _ := http.Get(hs.URL + "/api/v1/services/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown service: %s", resp.Status)
	}
}

// A change in Consul reaches an open event stream without a reload.
func TestEventStreamPushesAFailure(t *testing.T) {
	p, hs := start(t, false)
	report(t, p, "host-0", "aaaa", "installed")
	resp, err := http.Get(hs.URL + "/events?service=app")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	updates := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var ev strings.Builder
		for sc.Scan() {
			line := sc.Text()
			if line == "" {
				updates <- ev.String()
				ev.Reset()
				continue
			}
			ev.WriteString(strings.TrimPrefix(line, "data: ") + "\n")
		}
		close(updates)
	}()
	if err := p.Trip(context.Background(), "app", fleet.Breaker{Checksum: "bbbb", Node: "host-1", Phase: "check", Error: "exit status 1"}); err != nil {
		t.Fatal(err)
	}
	report(t, p, "host-1", "aaaa", "failed")
	timeout := time.After(10 * time.Second)
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				t.Fatal("the stream ended")
			}
			if strings.Contains(u, `data-node="host-1"`) && strings.Contains(u, "failed") && strings.Contains(u, "BREAKER") {
				return
			}
		case <-timeout:
			t.Fatal("the failure never reached the event stream")
		}
	}
}

func TestActions(t *testing.T) {
	post := func(hs *httptest.Server, path, token, body string) int {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ro, roHS := start(t, false)
	report(t, ro, "host-0", "aaaa", "installed")
	if code := post(roHS, "/api/v1/services/app/hold", "s3cret-token-0123456789", `{"reason":"x"}`); code != http.StatusForbidden {
		t.Errorf("read-only dashboard: hold got %d, want 403", code)
	}

	p, hs := start(t, true)
	report(t, p, "host-0", "aaaa", "installed")
	waitService(t, hs)
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		if code := post(hs, "/api/v1/services/app/hold", tok, `{"reason":"x"}`); code != http.StatusUnauthorized {
			t.Errorf("token %q: hold got %d, want 401", tok, code)
		}
	}
	if code := post(hs, "/api/v1/services/app/hold", "s3cret-token-0123456789", `{"reason":"db migration"}`); code != http.StatusOK {
		t.Fatalf("hold with the token: %d", code)
	}
	st, _ := p.Status(context.Background(), "app")
	if st.Hold == nil || st.Hold.Reason != "db migration" || !strings.Contains(st.Hold.Who, "alice") {
		t.Fatalf("hold in Consul: %+v", st.Hold)
	}
	evs, _, _ := p.Log(context.Background(), "app", 0)
	if len(evs) != 1 || evs[0].Kind != fleet.EventHold || evs[0].Who != "alice" || evs[0].Via != "dashboard" || evs[0].From == "" {
		t.Fatalf("audit log after the hold: %+v", evs)
	}
	if code := post(hs, "/api/v1/services/app/clear", "s3cret-token-0123456789", `{"checksum":"none"}`); code != http.StatusNotFound {
		t.Errorf("clear of a checksum with no breaker: %d, want 404", code)
	}
	if code := post(hs, "/api/v1/services/app/resume", "s3cret-token-0123456789", ""); code != http.StatusOK {
		t.Errorf("resume: %d", code)
	}
	if st, _ := p.Status(context.Background(), "app"); st.Hold != nil {
		t.Errorf("still on hold after resume: %+v", st.Hold)
	}
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ body, err string }{
		{"# ops\nalice s3cret-token-0123456789\n\nbob other-token-0123456789\n", ""},
		{"alice\n", "line 1: want `IDENTITY TOKEN`"},
		{"alice short\n", "shorter than 16"},
		{"a s3cret-token-0123456789\nb s3cret-token-0123456789\n", "given twice"},
		{"# nothing\n", "no tokens"},
	} {
		path := filepath.Join(dir, "tokens")
		os.WriteFile(path, []byte(c.body), 0o600)
		toks, err := dashboard.LoadTokens(path)
		switch {
		case c.err == "" && (err != nil || toks["s3cret-token-0123456789"] != "alice" || len(toks) != 2):
			t.Errorf("%q: %v, %v", c.body, toks, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want %q", c.body, err, c.err)
		}
	}
}

// sseEvent is one event of a stream, parsed as a browser does.
type sseEvent struct {
	Type, Data, ID string
	Retry          bool // the stream set the reconnection time
}

// readSSE parses body as the EventSource of a browser would: CR, LF and
// CRLF all end a line; a blank line dispatches the event.
func readSSE(body io.Reader) <-chan sseEvent {
	out := make(chan sseEvent, 100)
	go func() {
		defer close(out)
		br := bufio.NewReader(body)
		var ev sseEvent
		var data []string
		var line strings.Builder
		for {
			c, err := br.ReadByte()
			if err != nil {
				return
			}
			if c != '\r' && c != '\n' {
				line.WriteByte(c)
				continue
			}
			if c == '\r' {
				if next, err := br.Peek(1); err == nil && next[0] == '\n' {
					br.ReadByte()
				}
			}
			l := line.String()
			line.Reset()
			if l == "" {
				if data != nil {
					ev.Data = strings.Join(data, "\n")
					if ev.Type == "" {
						ev.Type = "message"
					}
					out <- ev
				}
				ev, data = sseEvent{ID: ev.ID}, nil
				continue
			}
			field, value, _ := strings.Cut(l, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				ev.Type = value
			case "data":
				data = append(data, value)
			case "id":
				ev.ID = value
			case "retry":
				ev.Retry = true
			}
		}
	}()
	return out
}

// A host writes what it likes into its record. Text with carriage
// returns (a line end to an EventSource) must not end the update early,
// start an event of the host's making, or set the stream's fields.
func TestEventStreamKeepsHostileTextInsideTheUpdate(t *testing.T) {
	p, hs := start(t, false)
	report(t, p, "host-0", "aaaa", "installed")
	evil := *p
	evil.Node = "evil"
	forged := "\r\revent: update\rid: 999999\rretry: 86400000\rdata: all hosts steady\r\r"
	if err := evil.Report(context.Background(), "app", fleet.NodeStatus{Node: "evil" + forged, Checksum: "bbbb" + forged,
		Release: "r" + forged, Result: "failed", Phase: "check", Error: "boom" + forged, Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(hs.URL + "/events?service=app")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := readSSE(resp.Body)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			if ev.Type != "update" || ev.Retry || ev.ID == "999999" || !strings.HasSuffix(strings.TrimSpace(ev.Data), "</section>") {
				t.Fatalf("the stream carries an event the host made up or cut short: type %q, id %q, retry %v, data %q", ev.Type, ev.ID, ev.Retry, ev.Data)
			}
			if strings.Contains(ev.Data, "data-node=\"evil") {
				return
			}
		case <-timeout:
			t.Fatal("the hostile host never showed on the stream")
		}
	}
}

// smallBuffers accepts connections whose send buffer is small, so that a
// client that does not read blocks the server's writes soon.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	return c, err
}

// The event streams are bounded, and a client that connects and never
// reads does not keep its stream (and its goroutine) once the server's
// writes to it block.
func TestEventStreamsAreBoundedAndAStalledReaderIsLetGo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, hs := startWith(t, func(o *dashboard.Options) {
		o.MaxStreams, o.StreamWriteTimeout = 1, 200*time.Millisecond
	}, smallBuffers{ln})
	// Hosts with long errors: each update of the page is some 40 kB.
	change := func(round int) {
		for i := range 40 {
			host := *p
			host.Node = fmt.Sprintf("host-%02d", i)
			if err := host.Report(context.Background(), "app", fleet.NodeStatus{Node: host.Node, Checksum: "aaaa", Result: "failed",
				Error: fmt.Sprintf("round %d: %s", round, strings.Repeat("x", 500)), Time: time.Now().UTC()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	change(0)
	// The stalled client: it asks for the stream and reads nothing.
	stalled, err := net.Dial("tcp", hs.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(stalled, "GET /events?service=app HTTP/1.1\r\nHost: dashboard\r\n\r\n")
	// Its stream is open once its status line comes: read that, and
	// nothing more (a loaded machine may take a while to admit it).
	status := make([]byte, len("HTTP/1.1 200"))
	if _, err := io.ReadFull(stalled, status); err != nil || string(status) != "HTTP/1.1 200" {
		t.Fatalf("the stalled client's stream: %q, %v", status, err)
	}

	// While it holds the only stream, one more is refused; once its
	// writes block long enough, the stream is free again.
	sawRefusal := false
	round := 0
	testutil.Eventually(t, 60*time.Second, func() error {
		resp, err := http.Get(hs.URL + "/events?service=app")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			ev, ok := <-readSSE(resp.Body)
			resp.Body.Close()
			if !ok || ev.Type != "update" {
				t.Fatalf("the stream admitted sent %+v", ev)
			}
			return nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("a stream beyond the bound: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
		}
		sawRefusal = true
		round++
		change(round) // more to write to it
		return fmt.Errorf("after %d rounds, the client that reads nothing keeps its stream", round)
	})
	if !sawRefusal {
		t.Fatal("a second stream was admitted while the first was open: the bound is not kept")
	}
}

// A hold or breaker written by hand as plain text (`consul kv put
// dropship/app/hold "db migration"`) stops every host, which cannot read
// it: the dashboard shows it rather than a steady service.
func TestUnreadableHoldAndBreakerShow(t *testing.T) {
	p, hs := start(t, false)
	report(t, p, "host-0", "aaaa", "installed")
	for key, value := range map[string]string{fleet.HoldKey(p.Prefix, "app"): "db migration", fleet.FailedKey(p.Prefix, "app") + "bbbb": "bad"} {
		if _, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if reason, err := p.Blocked(context.Background(), "app", "aaaa"); err == nil {
		t.Fatalf("hosts are not stopped by the hold (%q): the test shows nothing", reason)
	}
	// The dashboard may show the host before it has read the hold and the
	// breaker written after it: it is judged once it has all three, or at
	// the deadline.
	testutil.Eventually(t, 30*time.Second, func() error {
		f := getFleet(t, hs)
		if len(f.Services) != 1 || len(f.Services[0].Nodes) != 1 {
			return fmt.Errorf("the dashboard does not show the service: %+v", f)
		}
		s := f.Services[0]
		held := s.Hold != nil && strings.Contains(s.Hold.Reason, "unreadable") && s.State() == "on hold"
		broken := len(s.Breakers) == 1 && s.Breakers[0].Checksum == "bbbb" && strings.Contains(s.Breakers[0].Error, "unreadable")
		if !held || !broken {
			return fmt.Errorf("hosts are held but the dashboard shows %q, hold %+v, breakers %+v", s.State(), s.Hold, s.Breakers)
		}
		return nil
	})
}

// Anyone who can write the prefix can put half a megabyte into a field
// of a record (agents clip what they write; a hostile or old writer need
// not). The dashboard shows it clipped, not to every page on every change.
func TestHugeFieldsAreClippedOnRead(t *testing.T) {
	p, hs := start(t, false)
	huge := strings.Repeat("x", 80<<10) // five of them: Consul takes values up to 512 kB
	st := fleet.NodeStatus{Node: "host-" + huge, Checksum: "aaaa" + huge, Release: huge, Result: "failed", Phase: huge, Error: huge, Time: time.Now().UTC()}
	b, _ := json.Marshal(st)
	if _, err := p.Client.KV().Put(&api.KVPair{Key: fleet.NodesKey(p.Prefix, "app") + "host-0", Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	ev, _ := json.Marshal(fleet.Event{Kind: "failure", Who: huge, Node: huge, Detail: huge, Time: time.Now().UTC()})
	if _, err := p.Client.KV().Put(&api.KVPair{Key: fleet.AuditKey(p.Prefix, "app") + "1-host-0-x", Value: ev}, nil); err != nil {
		t.Fatal(err)
	}
	var body []byte
	var s dashboard.Service
	testutil.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(hs.URL + "/api/v1/services/app")
		if err != nil {
			return err
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		s = dashboard.Service{}
		json.Unmarshal(body, &s)
		if len(s.Nodes) != 1 || len(s.Events) != 1 {
			return fmt.Errorf("the dashboard shows %d nodes, %d events; want the host and its event", len(s.Nodes), len(s.Events))
		}
		return nil
	})
	if len(body) > 64<<10 {
		t.Fatalf("the service's JSON is %d bytes", len(body))
	}
	if n := s.Nodes[0]; len(n.Error) > fleet.MaxErrorText || !strings.HasSuffix(n.Error, "[cut]") || len(n.Node) > fleet.MaxErrorText {
		t.Fatalf("node shown with a %d-byte error and a %d-byte name", len(n.Error), len(n.Node))
	}
	resp, err := http.Get(hs.URL + "/services/app")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(page) > 64<<10 {
		t.Fatalf("the service page: %s, %d bytes", resp.Status, len(page))
	}
}

// Every answer says it is not to be framed, sniffed or given a base.
func TestEveryAnswerCarriesTheSecurityHeaders(t *testing.T) {
	p, hs := start(t, false)
	report(t, p, "host-0", "aaaa", "installed")
	waitService(t, hs)
	for _, path := range []string{"/", "/services/app", "/services/nope", "/api/v1/fleet", "/static/live.js", "/nothing", "/healthz"} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || !strings.Contains(h.Get("Content-Security-Policy"), "base-uri 'none'") ||
			h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: %s, headers %v", path, resp.Status, h)
		}
	}
}

// The scheme of an Authorization header is case-insensitive.
func TestBearerSchemeInAnyCase(t *testing.T) {
	p, hs := start(t, true)
	report(t, p, "host-0", "aaaa", "installed")
	waitService(t, hs)
	for header, want := range map[string]int{
		"bearer s3cret-token-0123456789":   http.StatusOK,
		"BEARER  s3cret-token-0123456789 ": http.StatusOK,
		"Basic s3cret-token-0123456789":    http.StatusUnauthorized,
		"Bearer":                           http.StatusUnauthorized,
		"s3cret-token-0123456789":          http.StatusUnauthorized,
	} {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/services/app/resume", nil)
		req.Header.Set("Authorization", header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Authorization: %q: %s, want %d", header, resp.Status, want)
		}
	}
}

// A service's name is a folder in Consul, which may hold what a path
// does not ("?", "#", "%"): its link still leads to its page.
func TestOddServiceNamesLinkToTheirPage(t *testing.T) {
	p, hs := start(t, true)
	const name = "a?b#c%zz"
	host := *p
	host.Node = "host-0"
	if err := host.Report(context.Background(), name, fleet.NodeStatus{Node: "host-0", Checksum: "aaaa", Result: "installed", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	waitService(t, hs)
	get := func(u string) string {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s: %s", u, resp.Status, b)
		}
		return string(b)
	}
	page := get(hs.URL + "/")
	m := regexp.MustCompile(`<h2><a href="([^"]*)">`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no link to the service on %s", page)
	}
	base, _ := url.Parse(hs.URL + "/")
	link, err := base.Parse(html.UnescapeString(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	svc := get(link.String())
	if !strings.Contains(svc, `data-service="a?b#c%zz"`) {
		t.Fatalf("%s (from %q) is not the page of the service", link, m[1])
	}
	// The actions post to the service's own path.
	m = regexp.MustCompile(`data-api="([^"]*)"`).FindStringSubmatch(svc)
	if m == nil {
		t.Fatal("no actions on the page")
	}
	api, err := link.Parse(html.UnescapeString(m[1]) + "resume")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, api.String(), nil)
	req.Header.Set("Authorization", "Bearer s3cret-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resume at %s: %s", api, resp.Status)
	}
}

// An approval from the page names one of the waves the page shows; any
// other name is refused, never written.
func TestApproveOnlyAWaveShown(t *testing.T) {
	const token = "s3cret-token-0123456789"
	pol := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 100}}, Approve: []string{"1"}, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	p, hs := startWith(t, func(o *dashboard.Options) {
		o.Actor, o.Tokens = o.Store.(*consul.Fleet), map[string]string{token: "alice"}
		o.Policies = map[string]*rollout.Policy{"app": pol}
	}, nil)
	report(t, p, "host-0", "aaaa", "installed")
	report(t, p, "host-1", "", "registered")
	var sum string
	testutil.Eventually(t, 30*time.Second, func() error {
		f := getFleet(t, hs)
		if len(f.Services) == 0 || len(f.Services[0].Waves) == 0 || f.Services[0].RolloutOf == "" {
			return fmt.Errorf("the rollout does not show: %+v", f)
		}
		sum = f.Services[0].RolloutOf
		return nil
	})
	approve := func(wave string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/services/app/approve", strings.NewReader(fmt.Sprintf(`{"wave":%q,"checksum":%q}`, wave, sum)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, w := range []string{"7", "cnary", "1/../canary"} {
		if code, body := approve(w); code != http.StatusBadRequest || !strings.Contains(body, "its waves: canary, 1") {
			t.Errorf("approve wave %q: %d %s", w, code, body)
		}
	}
	st, err := p.Status(context.Background(), "app")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Approvals) != 0 {
		t.Fatalf("refused approvals were written: %+v", st.Approvals)
	}
	if code, body := approve("1"); code != http.StatusOK {
		t.Fatalf("approve wave 1: %d %s", code, body)
	}
}

// With read tokens, nothing but /healthz and the static assets is shown
// without one; a browser is asked for it (Basic, the token as password),
// an API client sends it as a bearer token, and a read token cannot act.
func TestReadTokenGuardsEveryRead(t *testing.T) {
	const readTok, actTok = "reader-token-0123456789", "s3cret-token-0123456789"
	p, hs := startWith(t, func(o *dashboard.Options) {
		o.Actor, o.Tokens = o.Store.(*consul.Fleet), map[string]string{actTok: "alice"}
		o.ReadTokens = map[string]string{readTok: "bob"}
	}, nil)
	report(t, p, "host-0", "aaaa", "installed")
	get := func(path string, auth func(*http.Request)) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		if auth != nil {
			auth(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	bearerOf := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	for _, path := range []string{"/", "/services/app", "/api/v1/fleet", "/api/v1/services/app", "/events"} {
		resp := get(path, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("GET %s without a token: %s, WWW-Authenticate %q", path, resp.Status, resp.Header.Get("WWW-Authenticate"))
		}
		if resp := get(path, bearerOf("wrong-token-0123456789")); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %s", path, resp.Status)
		}
	}
	for _, path := range []string{"/healthz", "/static/live.js"} {
		if resp := get(path, nil); resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("GET %s needs a token: load balancers and the prompt's page cannot give one", path)
		}
	}
	for name, auth := range map[string]func(*http.Request){
		"bearer read token":   bearerOf(readTok),
		"basic read token":    func(r *http.Request) { r.SetBasicAuth("anyone", readTok) },
		"bearer action token": bearerOf(actTok),
	} {
		if resp := get("/api/v1/fleet", auth); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", name, resp.Status)
		}
	}
	// A read token, or any token sent the way a browser resends it, acts on nothing.
	for name, auth := range map[string]func(*http.Request){
		"bearer read token":  bearerOf(readTok),
		"basic action token": func(r *http.Request) { r.SetBasicAuth("alice", actTok) },
	} {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/services/app/resume", nil)
		auth(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("resume with a %s: %s, want 401", name, resp.Status)
		}
	}
}

// One client cannot hold every event stream: past its own bound it is
// refused while another client still gets one.
func TestOneClientCannotTakeEveryStream(t *testing.T) {
	const a, b = "client-a-token-0123456789", "client-b-token-0123456789"
	_, hs := startWith(t, func(o *dashboard.Options) {
		o.ReadTokens = map[string]string{a: "a", b: "b"}
		o.MaxStreams, o.MaxStreamsPerClient = 4, 2
	}, nil)
	open := func(tok string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for i := range 2 {
		if resp := open(a); resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d of client a: %s", i, resp.Status)
		}
	}
	if resp := open(a); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a third stream of client a: %s, Retry-After %q; want 429 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if resp := open(b); resp.StatusCode != http.StatusOK {
		t.Fatalf("client b locked out by client a: %s", resp.Status)
	}
}

// The dashboard's server closes a connection that stays idle, and one
// that never finishes its request.
func TestServerLetsIdleConnectionsGo(t *testing.T) {
	s, err := dashboard.New(dashboard.Options{Store: &consul.Fleet{}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := dashboard.HTTPServer(s.Handler(), 300*time.Millisecond)
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: dashboard\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Kept alive, then idle: the server must hang up (EOF), well before
	// this test's own bound.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle kept-alive connection was not closed by the server: %v", err)
	}
}

// With operator_keys, an operator's record no key signed is not shown as
// in force: the dashboard lists it as ignored, and why, on the API and
// the service's page.
func TestUnsignedOperatorRecordsShowAsIgnored(t *testing.T) {
	pub, _, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, hs := startWith(t, func(o *dashboard.Options) {
		o.Store.(*consul.Fleet).OperatorKeys = []consul.OperatorKey{{Name: "alice", Key: pub}}
	}, nil)
	report(t, p, "host-0", "aaaa", "installed")
	writer := *p
	writer.OperatorKeys = nil
	if err := writer.Hold(context.Background(), "app", fleet.Hold{Reason: "forged", Who: "alice"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		f := getFleet(t, hs)
		if len(f.Services) != 1 || len(f.Services[0].Ignored) != 1 {
			return fmt.Errorf("the dashboard does not list the unsigned hold as ignored: %+v", f)
		}
		if s := f.Services[0]; s.Hold != nil || s.Ignored[0].Key != "hold" || !strings.Contains(s.Ignored[0].Reason, "not signed") {
			return fmt.Errorf("hold %+v, ignored %+v", s.Hold, s.Ignored)
		}
		return nil
	})
	resp, err := http.Get(hs.URL + "/services/app")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(page), "IGNORED</b> operator record <code>hold</code>: not signed by an operator key") {
		t.Errorf("the service's page does not say the hold is ignored:\n%s", page)
	}
}
