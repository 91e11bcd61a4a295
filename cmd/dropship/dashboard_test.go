package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// browser is headless Chromium driven over the DevTools protocol on
// --remote-debugging-pipe: JSON messages ended by NUL on fds 3 and 4, so
// no WebSocket library is needed.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       *os.File
	mu      sync.Mutex
	next    int
	pending map[int]chan cdpReply
	session string
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI: %v (run `make rig`)", err)
		}
		t.Skipf("chromium not installed (%v); run `make rig`", err)
	}
	toChrome, chromeIn, _ := os.Pipe()
	chromeOut, fromChrome, _ := os.Pipe()
	b := &browser{t: t, w: chromeIn, pending: map[int]chan cdpReply{}}
	b.cmd = exec.Command(path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	b.cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fds 3 and 4
	// Its own process group: Chromium's helper processes write to the
	// profile too, and must be gone before the test's directory is removed.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	toChrome.Close()
	fromChrome.Close()
	t.Cleanup(func() {
		b.w.Close()
		pgid := b.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGKILL)
		b.cmd.Wait()
		testutil.Wait(10*time.Second, func() error {
			if syscall.Kill(-pgid, 0) == nil {
				return errors.New("a process of the group is left")
			}
			return nil
		})
	})
	go b.read(bufio.NewReader(chromeOut))
	var target struct{ TargetID string }
	b.call("Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var att struct{ SessionID string }
	b.call("Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	b.session = att.SessionID
	b.call("Page.enable", nil, nil)
	return b
}

func (b *browser) read(r *bufio.Reader) {
	for {
		msg, err := r.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var m struct {
			ID int `json:"id"`
			cdpReply
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
			continue // events: not used
		}
		b.mu.Lock()
		ch := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m.cdpReply
		}
	}
}

// call sends one command to the page (or the browser before attaching).
func (b *browser) call(method string, params, result any) {
	b.t.Helper()
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpReply, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if params == nil {
		msg["params"] = map[string]any{}
	}
	if b.session != "" {
		msg["sessionId"] = b.session
	}
	body, _ := json.Marshal(msg)
	if _, err := b.w.Write(append(body, 0)); err != nil {
		b.t.Fatalf("chromium %s: %v", method, err)
	}
	select {
	case r, ok := <-ch:
		switch {
		case !ok:
			b.t.Fatalf("chromium %s: the browser went away", method)
		case r.Error != nil:
			b.t.Fatalf("chromium %s: %s", method, r.Error.Message)
		case result != nil:
			json.Unmarshal(r.Result, result)
		}
	case <-time.After(30 * time.Second):
		b.t.Fatalf("chromium %s: no answer in 30s", method)
	}
}

func (b *browser) navigate(url string) {
	b.t.Helper()
	b.call("Page.navigate", map[string]any{"url": url}, nil)
	// Right after Page.navigate the old document (about:blank) may still
	// be the one asked: no element yet is "not loaded", not an error.
	b.waitJS("page loaded", `document.readyState === "complete" && (c => c && c.dataset.state === "live")(document.getElementById("conn"))`)
}

// eval runs JavaScript in the page and decodes its value into out.
func (b *browser) eval(js string, out any) {
	b.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": js, "returnByValue": true, "awaitPromise": true}, &r)
	if r.ExceptionDetails != nil {
		b.t.Fatalf("javascript %s: %s", js, r.ExceptionDetails.Text)
	}
	if out != nil {
		json.Unmarshal(r.Result.Value, out)
	}
}

// waitJS polls a JavaScript condition until it holds (bounded).
func (b *browser) waitJS(what, cond string) {
	b.t.Helper()
	testutil.Eventually(b.t, 60*time.Second, func() error {
		var ok bool
		if b.eval("!!("+cond+")", &ok); ok {
			return nil
		}
		var text string
		b.eval(`document.body ? document.body.innerText : ""`, &text)
		return fmt.Errorf("the page does not show %s; it shows:\n%s", what, text)
	})
}

// screenshot writes a PNG of the page, width × height CSS pixels, into
// $DROPSHIP_SCREENSHOTS (the README's pictures come from here).
func (b *browser) screenshot(name string, width, height int) {
	dir := os.Getenv("DROPSHIP_SCREENSHOTS")
	if dir == "" {
		return
	}
	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil)
	var shot struct{ Data string }
	b.call("Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	png, _ := base64.StdEncoding.DecodeString(shot.Data)
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// startDashboard runs `dropship fleet serve` with the config of a fleet
// host, actions allowed for one token, and waits until it answers.
func startDashboard(t *testing.T, cfg, token string) string {
	t.Helper()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("alice "+token+"\n"), 0o600)
	var log syncBuffer
	cmd := exec.Command(bin, "fleet", "serve", "--listen", addr, "--allow-actions", "--token-file", tokens, "-c", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	url := "http://" + addr + "/"
	testutil.Eventually(t, 30*time.Second, func() error {
		if err := httpOK(url + "healthz"); err != nil {
			return fmt.Errorf("fleet serve is not healthy (%v):\n%s", err, log.String())
		}
		return nil
	})
	return url
}

// httpOK is nil when a GET of url answers 200.
func httpOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// waitService waits until the dashboard at url knows service: its page
// is a 404 until a host of it has registered and the dashboard has read it.
func waitService(t *testing.T, url, service string) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		if err := httpOK(url + "api/v1/services/" + service); err != nil {
			return fmt.Errorf("the dashboard does not know service %s: %w", service, err)
		}
		return nil
	})
}

func nodeStatus(t *testing.T, c *api.Client, prefix string) map[string]fleet.NodeStatus {
	t.Helper()
	pairs, _, err := c.KV().List(fleet.NodesKey(prefix, "app"), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]fleet.NodeStatus{}
	for _, kv := range pairs {
		var n fleet.NodeStatus
		json.Unmarshal(kv.Value, &n)
		out[n.Node] = n
	}
	return out
}

// TestDashboardInABrowser: four agents as separate processes, a real
// Consul, `dropship fleet serve`, and headless Chromium reading the page.
func TestDashboardInABrowser(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	b := startBrowser(t)
	f := newFleet(t, 4, 1, c)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	client.KV().DeleteTree(f.prefix+"/", nil) // a fresh fleet, also with -count
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	const token = "browser-test-token-0123456789"
	url := startDashboard(t, f.hosts[0].cfg, token)

	// Each host's release, as the host itself has it, is on the page.
	b.navigate(url)
	for _, h := range f.hosts {
		link, err := os.Readlink(h.dest)
		if err != nil {
			t.Fatal(err)
		}
		release := filepath.Base(link)
		b.waitJS(h.name+" on release "+release,
			fmt.Sprintf(`(r => r && r.querySelector(".release").textContent === %q)(document.querySelector('tr[data-node=%q]'))`, release, h.name))
	}
	b.screenshot("dashboard-overview.png", 1000, 560)

	// A publish shows live: note when each row first changes checksum,
	// without reloading the page.
	b.eval(`(() => {
		window.__old = {}; window.__seen = {};
		document.querySelectorAll("tr[data-node]").forEach(r => { __old[r.dataset.node] = r.dataset.checksum; });
		new MutationObserver(() => {
			document.querySelectorAll("tr[data-node]").forEach(r => {
				const n = r.dataset.node;
				if (!(n in __seen) && __old[n] && r.dataset.checksum !== __old[n]) __seen[n] = Date.now();
			});
		}).observe(document.getElementById("live"), {childList: true, subtree: true});
		window.__loaded = performance.timeOrigin;
	})()`, nil)
	var loadedAt float64
	b.eval(`window.__loaded`, &loadedAt)
	f.publish("v2", false)
	// Mid-rollout, for the README: some hosts on v2, the rest still on v1.
	b.waitJS("a rollout in progress", `document.querySelector('[data-state="rolling out"]') && Object.keys(__seen).length >= 1`)
	b.screenshot("dashboard-rollout.png", 1000, 560)
	b.waitJS("every host on the new checksum", `Object.keys(__seen).length === 4`)
	f.waitAll(f.hosts, "v2", 60*time.Second)
	var loadedNow float64
	b.eval(`window.__loaded`, &loadedNow)
	if loadedNow != loadedAt {
		t.Fatal("the page reloaded; the update was to arrive live")
	}
	var seen map[string]int64
	b.eval(`__seen`, &seen)
	var worst time.Duration
	for node, st := range nodeStatus(t, client, f.prefix) {
		lag := time.UnixMilli(seen[node]).Sub(st.Time)
		worst = max(worst, lag)
		t.Logf("install on %s at %s, on the page %s later", node, st.Time.Format("15:04:05.000"), lag.Round(time.Millisecond))
	}
	t.Logf("install -> page: at most %s", worst.Round(time.Millisecond))

	// A failing release shows as failed, in words, with the breaker.
	f.publish("bad", true)
	b.waitJS("a failed host", `(r => r && /failed in check/.test(r.querySelector(".result").textContent))(document.querySelector('tr[data-result="failed"]'))`)
	b.waitJS("the breaker", `/BREAKER/.test(document.getElementById("live").textContent) && document.querySelector('[data-state="breaker tripped"]')`)
	b.screenshot("dashboard-failed.png", 1000, 640)

	// The service page has the history; an action without the token is
	// refused, one with it is done and logged under its identity.
	b.navigate(url + "services/app")
	b.waitJS("install and failure events", `document.querySelector('tr[data-kind="install"]') && document.querySelector('tr[data-kind="failure"]') && document.querySelector('tr[data-kind="rollback"]')`)
	var status int
	b.eval(`fetch("../api/v1/services/app/hold", {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"reason": "no token"}'}).then(r => r.status)`, &status)
	if status != http.StatusUnauthorized {
		t.Fatalf("a hold without a token got %d, want 401", status)
	}
	b.eval(`fetch("../api/v1/services/app/hold", {method: "POST", headers: {"Content-Type": "application/json", "Authorization": "Bearer wrong-token-0123456789"}, body: '{"reason": "bad token"}'}).then(r => r.status)`, &status)
	if status != http.StatusUnauthorized {
		t.Fatalf("a hold with a wrong token got %d, want 401", status)
	}
	if st := nodeStatus(t, client, f.prefix); len(st) != 4 {
		t.Fatalf("%d node records", len(st))
	}
	if kv, _, _ := client.KV().Get(fleet.HoldKey(f.prefix, "app"), nil); kv != nil {
		t.Fatalf("a refused action left a hold: %s", kv.Value)
	}
	b.eval(fmt.Sprintf(`(() => {
		document.getElementById("token").value = %q;
		const form = document.querySelector('form[data-action="hold"]');
		form.querySelector('input[name="reason"]').value = "checking the bad release";
		form.requestSubmit();
	})()`, token), nil)
	b.waitJS("the hold, live", `/ON HOLD/.test(document.getElementById("live").textContent) && /hold: done/.test(document.getElementById("action-result").textContent)`)
	b.waitJS("the hold in the history", `[...document.querySelectorAll('tr[data-kind="hold"]')].some(r => /alice \(dashboard on host-0\)/.test(r.textContent))`)

	// The same history from the command line.
	out, errOut, code := run(t, "fleet", "log", "app", "-c", f.hosts[0].cfg)
	if code != 0 {
		t.Fatalf("fleet log: %d %s", code, errOut)
	}
	t.Logf("fleet log app:\n%s", out)
	for _, want := range []string{"install  on host-", "failure  on host-", "rollback on host-", "hold     by alice (dashboard on host-0): checking the bad release"} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet log lacks %q:\n%s", want, out)
		}
	}
}

// TestFleetLogFollow: `fleet log --follow` prints an event written after
// it started, from a blocking query.
func TestFleetLogFollow(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	client.KV().DeleteTree(f.prefix+"/", nil)
	var out syncBuffer
	cmd := exec.Command(bin, "fleet", "log", "app", "--follow", "-c", f.hosts[0].cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	_, errOut, code := run(t, "hold", "app", "--reason", "followed", "-c", f.hosts[0].cfg)
	if code != 0 {
		t.Fatalf("hold: %s", errOut)
	}
	wait := func(want string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			if !strings.Contains(out.String(), want) {
				return fmt.Errorf("fleet log --follow has not printed %q:\n%s", want, out.String())
			}
			return nil
		})
	}
	// Once the hold is printed, its first read is done: the resume can
	// only come through the blocking query.
	wait("hold     by")
	run(t, "resume", "app", "-c", f.hosts[0].cfg)
	wait("resume   by")
}

// TestFleetLogFollowPrintsEachEventOnce: when Consul's index goes
// backwards (a restored snapshot, a restarted agent), `fleet log
// --follow` does not print the log again. A proxy in front of Consul
// answers one blocking read of the log at once with index 1.
func TestFleetLogFollowPrintsEachEventOnce(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c)
	target, _ := neturl.Parse("http://" + c.Addr)
	var back, answered atomic.Bool
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			q := r.Out.URL.Query()
			if q.Get("index") != "" && q.Get("index") != "0" && strings.Contains(r.In.URL.Path, "/audit/") && back.Load() {
				q.Del("index")
				q.Del("wait")
				r.Out.URL.RawQuery = q.Encode()
				r.Out.Header.Set("X-Backwards", "1")
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if resp.Request.Header.Get("X-Backwards") != "" && back.CompareAndSwap(true, false) {
				resp.Header.Set("X-Consul-Index", "1")
				answered.Store(true)
			}
			return nil
		},
	}
	proxy := httptest.NewServer(rp)
	defer proxy.Close()
	cfgText, err := os.ReadFile(f.hosts[0].cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(f.dir, "via-proxy.hcl")
	os.WriteFile(cfg, []byte(strings.Replace(string(cfgText), c.Addr, proxy.Listener.Addr().String(), 1)), 0o644)
	var out syncBuffer
	cmd := exec.Command(bin, "fleet", "log", "app", "--follow", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	wait := func(cond func() bool, what string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			if !cond() {
				return fmt.Errorf("fleet log --follow: not yet %s:\n%s", what, out.String())
			}
			return nil
		})
	}
	printed := func(s string) func() bool { return func() bool { return strings.Contains(out.String(), s) } }
	if _, errOut, code := run(t, "hold", "app", "--reason", "first", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("hold: %s", errOut)
	}
	wait(printed("by"), "printed the hold")
	back.Store(true)
	// The blocking read waiting now ends with the resume; the next is
	// answered with the index gone back.
	run(t, "resume", "app", "-c", f.hosts[0].cfg)
	wait(answered.Load, "read the log with the index gone back")
	run(t, "hold", "app", "--reason", "second", "-c", f.hosts[0].cfg)
	wait(printed(": second"), "printed the second hold")
	for _, s := range []string{": first", "resume   by"} {
		if n := strings.Count(out.String(), s); n != 1 {
			t.Errorf("%q printed %d times:\n%s", s, n, out.String())
		}
	}
}

// TestGrafanaDashboard checks examples/grafana/dropship.json against a
// running agent: every metric its panels name is in the agent's /metrics,
// and each annotation's tags find, in a real graphite-web, the events
// the graphite-event hook sends with its default settings, and only
// those of its kind.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	g := servers.Graphite(t)
	raw, err := os.ReadFile("../../examples/grafana/dropship.json")
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Annotations struct {
			List []struct {
				Name   string `json:"name"`
				Target *struct {
					Tags []string `json:"tags"`
				} `json:"target"`
			} `json:"list"`
		} `json:"annotations"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &board); err != nil {
		t.Fatalf("examples/grafana/dropship.json: %v", err)
	}

	// An agent that installs, fails a release, and is rolled back, with
	// a graphite-event hook left at its defaults.
	d := newDaemon(t, "")
	d.write(d.service("app", fmt.Sprintf(`  after "graphite-event" { host = %q }`, g.URL)))
	d.publish("v1")
	d.start()
	d.waitFor("v1", func() bool { return d.version() == "v1" })
	d.publish("v2")
	d.waitFor("v2", func() bool { return d.version() == "v2" })
	// Not an archive: refused before anything is switched, a "failure".
	testutil.WriteFile(t, d.store, []byte("this is not a tarball"))
	later := time.Now().Add(time.Second)
	os.Chtimes(d.store, later, later)
	d.waitFor("the failure", func() bool { return strings.Contains(d.log.String(), "update failed") })
	if _, errOut, code := run(t, "rollback", "app", "-c", d.cfg); code != 0 {
		t.Fatalf("rollback: %s", errOut)
	}

	// Metrics.
	resp, err := d.client().Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	named := 0
	for _, p := range board.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				named++
				fam := fams[m]
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(m, suffix); fam == nil && ok && fams[base] != nil && fams[base].GetType() == dto.MetricType_HISTOGRAM {
						fam = fams[base]
					}
				}
				if fam == nil || len(fam.GetMetric()) == 0 {
					t.Errorf("panel %q names %s, which the agent's /metrics does not have", p.Title, m)
				}
			}
		}
	}
	if named < 6 {
		t.Fatalf("only %d metric names found in the panels", named)
	}

	// Annotations: query graphite-web as Grafana does, tags joined by spaces.
	wantKind := map[string]string{"Deploys": "success", "Failures": "failure", "Rollbacks": "rollback"}
	found := 0
	for _, a := range board.Annotations.List {
		if a.Target == nil {
			continue
		}
		found++
		var tags []string
		for _, tag := range a.Target.Tags {
			tags = append(tags, strings.ReplaceAll(tag, "$service", "app"))
		}
		var evs []struct {
			Tags []string `json:"tags"`
			What string   `json:"what"`
		}
		want := 1
		if a.Name == "Deploys" {
			want = 2 // the 2 installs
		}
		testutil.Eventually(t, 30*time.Second, func() error {
			evs = nil
			resp, err := http.Get(g.URL + "/events/get_data?from=-1h&until=now&tags=" + strings.ReplaceAll(strings.Join(tags, " "), " ", "%20"))
			if err != nil {
				return err
			}
			json.NewDecoder(resp.Body).Decode(&evs)
			resp.Body.Close()
			if len(evs) < want {
				return fmt.Errorf("annotation %q (tags %v) finds %d events the agent sent, want %d", a.Name, tags, len(evs), want)
			}
			return nil
		})
		for _, ev := range evs {
			if !slices.Contains(ev.Tags, wantKind[a.Name]) || !slices.Contains(ev.Tags, "app") {
				t.Errorf("annotation %q finds event %q tagged %v", a.Name, ev.What, ev.Tags)
			}
		}
	}
	if found != 3 {
		t.Fatalf("%d Graphite annotations in the dashboard, want Deploys, Failures, Rollbacks", found)
	}
}

var metricName = regexp.MustCompile(`\bdropship_[a-z_]+\b`)

// BenchmarkDashboard50Hosts runs `dropship fleet serve` against a Consul
// holding 50 hosts of a service, through a proxy that counts its
// requests, with one browser's event stream open. Each iteration is one
// host reporting a new release and the stream carrying it. Reported: the
// server's resident memory, and Consul requests per minute during it.
func BenchmarkDashboard50Hosts(b *testing.B) {
	c := servers.Consul(b)
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	prefix := "bench/dashboard50"
	client.KV().DeleteTree(prefix+"/", nil)
	put := func(node int, sum string) {
		st := fleet.NodeStatus{Node: fmt.Sprintf("node-%02d", node), Checksum: sum, Attempt: sum, Release: "20260101T000000Z-" + sum,
			Result: "installed", Time: time.Now().UTC()}
		v, _ := json.Marshal(st)
		if _, err := client.KV().Put(&api.KVPair{Key: fleet.NodesKey(prefix, "app") + st.Node, Value: v}, nil); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 50 {
		put(i, "0d7eb95f8ce65386a83c4b8caadd6259")
	}

	var requests atomic.Int64
	target, _ := neturl.Parse("http://" + c.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()

	dir := b.TempDir()
	cfg := filepath.Join(dir, "dash.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_path = %q\nnode_name = \"dash\"\nlock \"consul\" {\n  address = %q\n  prefix = %q\n}\n",
		filepath.Join(dir, "state"), strings.TrimPrefix(proxy.URL, "http://"), prefix)), 0o644)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "fleet", "serve", "--listen", addr, "-c", cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	var resp *http.Response
	testutil.Eventually(b, 30*time.Second, func() error {
		var err error
		if resp, err = http.Get("http://" + addr + "/events"); err != nil {
			return fmt.Errorf("fleet serve does not answer: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return fmt.Errorf("fleet serve answers %s", resp.Status)
		}
		return nil
	})
	defer resp.Body.Close()
	updates := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		var ev strings.Builder
		for sc.Scan() {
			if sc.Text() == "" {
				updates <- ev.String()
				ev.Reset()
				continue
			}
			ev.WriteString(sc.Text())
		}
		close(updates)
	}()
	waitFor := func(want string) {
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					b.Fatal("the event stream ended")
				}
				if strings.Contains(u, want) {
					return
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("the stream never carried %q", want)
			}
		}
	}
	waitFor("50 hosts")
	before, start := requests.Load(), time.Now()
	b.ResetTimer()
	for i := range b.N {
		sum := fmt.Sprintf("%032x", i+1)
		put(i%50, sum)
		waitFor(`data-checksum="` + sum + `"`)
	}
	b.StopTimer()
	elapsed := time.Since(start)
	b.ReportMetric(float64(requests.Load()-before)/elapsed.Minutes(), "consul-req/min")
	b.ReportMetric(float64(b.N)/elapsed.Minutes(), "changes/min")
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			b.ReportMetric(kb/1024, "rss-MB")
		}
	}
}
