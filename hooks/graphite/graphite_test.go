package graphite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/graphite"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Graphite: true}) }

func body(t *testing.T, src string) hcl.Body {
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

// GraphiteEvents returns the events graphite-web has with tag.
func GraphiteEvents(t *testing.T, base, tag string) []map[string]any {
	t.Helper()
	resp, err := http.Get(base + "/events/get_data?tags=" + url.QueryEscape(tag))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&events); err != nil {
		t.Fatal(err)
	}
	return events
}

func TestEventReachesGraphite(t *testing.T) {
	h, diags := graphite.EventFactory("graphite-event", body(t, fmt.Sprintf(`
host = %q
tags = "deploy production"
what = "deployed {{.Name}} to {{.Hostname}}"
data = "{{.Hash}} after {{.PreviousHash}} in {{.Duration}}"
`, servers.Graphite(t).URL)), hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	name := strings.ToLower(testutil.Unique(t)) // with -count, a run of its own
	ev := hooks.Event{Name: name, Hostname: "web-1", Hash: "abc", PreviousHash: "def", Result: "success", Duration: 1500 * time.Millisecond}
	if err := h.Announce(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	events := GraphiteEvents(t, servers.Graphite(t).URL, name)
	if len(events) != 1 {
		t.Fatalf("%d events", len(events))
	}
	e := events[0]
	tags := fmt.Sprint(e["tags"])
	if e["what"] != "deployed "+name+" to web-1" || e["data"] != "abc after def in 1.5s" ||
		!strings.Contains(tags, "deploy") || !strings.Contains(tags, "production") || !strings.Contains(tags, "success") {
		t.Fatalf("event %v", e)
	}
}

func TestMetricReachesCarbon(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			h, diags := graphite.MetricFactory("graphite-metric", body(t, fmt.Sprintf(`
address  = %q
protocol = %q
prefix   = "deploys"
`, servers.Graphite(t).CarbonAddr, proto)), hooks.Env{})
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			svc := "svc-" + proto
			ev := hooks.Event{Name: svc, Hostname: "web.1", Result: "success", Duration: 2500 * time.Millisecond, Time: time.Now()}
			if err := h.Announce(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			target := "deploys.web_1." + svc + ".deploy.duration_seconds"
			// carbon writes within about a second; poll, bounded.
			testutil.Eventually(t, 30*time.Second, func() error {
				if got := lastValue(t, servers.Graphite(t).URL, target); got != 2.5 {
					return fmt.Errorf("%s = %v, want 2.5", target, got)
				}
				return nil
			})
		})
	}
}

func lastValue(t *testing.T, base, target string) float64 {
	resp, err := http.Get(base + "/render?format=json&from=-5min&target=" + url.QueryEscape(target))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var series []struct {
		Datapoints [][2]*float64 `json:"datapoints"`
	}
	json.NewDecoder(resp.Body).Decode(&series)
	for _, s := range series {
		for i := len(s.Datapoints) - 1; i >= 0; i-- {
			if v := s.Datapoints[i][0]; v != nil {
				return *v
			}
		}
	}
	return 0
}

func TestGraphiteDownIsAnErrorNotAHang(t *testing.T) {
	port, _ := rig.FreePort()
	h, diags := graphite.EventFactory("graphite-event", body(t, fmt.Sprintf(`host = "http://127.0.0.1:%d"
timeout = "1s"`, port)), hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if err := h.Announce(context.Background(), hooks.Event{Name: "x"}); err == nil {
		t.Fatal("no error with graphite down")
	}
	if _, gating := h.(hooks.Hook); gating {
		t.Fatal("graphite-event must only announce, never gate a chain")
	}
}

func TestTemplateErrorsAtLoad(t *testing.T) {
	for _, src := range []string{
		`host = "http://g"
what = "{{.Nmae}}"`,
		`host = "http://g"
data = "{{.Hash"`,
		`host = "not a url"`,
	} {
		_, diags := graphite.EventFactory("graphite-event", body(t, src), hooks.Env{})
		if !diags.HasErrors() || diags[0].Subject == nil || diags[0].Subject.Start.Line < 1 {
			t.Errorf("%q: diags %v", src, diags)
		}
	}
}
