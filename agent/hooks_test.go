package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var servers rig.Servers

// graphiteServer starts graphite-web and carbon once for the package.
func graphiteServer(t *testing.T) *rig.Graphite { return servers.Graphite(t) }

func graphiteEvents(t *testing.T, base, tag string) []map[string]any {
	t.Helper()
	resp, err := http.Get(base + "/events/get_data?tags=" + url.QueryEscape(tag))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []map[string]any
	json.NewDecoder(resp.Body).Decode(&events)
	return events
}

func TestFailedHealthCheckRollsBackAndReports(t *testing.T) {
	g := graphiteServer(t)
	e := newEnv(t)
	tag := "rb-" + strings.ToLower(strings.ReplaceAll(testutil.Unique(t), "/", "-")) // with -count, a run of its own
	cfg := e.config(fmt.Sprintf(`
  after "script" { command = "echo start $(cat VERSION) >> %[1]s" }
  after "graphite-event" {
    host = %[2]q
    tags = %[3]q
    what = "{{.Phase}} {{.Name}} {{.Hash}}: {{.Result}}"
  }
  check "script" {
    command  = "test $(cat VERSION) = v1"
    retries  = 3
    interval = "10ms"
  }
`, e.log, g.URL, tag))
	var logs bytes.Buffer
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.publish("v1")
	v1 := e.check(r, agent.ResultInstalled)
	e.publish("v2")
	out := e.check(r, agent.ResultFailed)
	if out.Phase != "check" || !strings.Contains(out.Err.Error(), "failed 3 of 3") {
		t.Fatalf("phase %s err %v", out.Phase, out.Err)
	}
	if e.current() != "v1" {
		t.Fatalf("current = %q, want v1 again", e.current())
	}
	// v1 was started again by the after hooks.
	if !strings.HasSuffix(e.hookLog(), "start v1\nstart v2\nstart v1\n") {
		t.Fatalf("hooks:\n%s", e.hookLog())
	}
	st := e.state_(r)
	if f := st.Failures[out.Checksum]; f == nil || f.Phase != "check" || st.Checksum != v1.Checksum {
		t.Fatalf("state %+v", st)
	}
	if !strings.Contains(logs.String(), "update failed") || !strings.Contains(logs.String(), "phase=check") {
		t.Fatalf("log:\n%s", logs.String())
	}
	var whats []string
	for _, ev := range graphiteEvents(t, g.URL, tag) {
		whats = append(whats, fmt.Sprint(ev["what"]))
	}
	want := []string{"after app " + v1.Checksum + ": success", "rollback app " + v1.Checksum + ": rollback"}
	if strings.Join(whats, "|") != strings.Join(want, "|") && strings.Join(whats, "|") != want[1]+"|"+want[0] {
		t.Fatalf("graphite events %q, want %q", whats, want)
	}
}

func TestGraphiteDownDoesNotFailTheUpdate(t *testing.T) {
	e := newEnv(t)
	port, _ := rig.FreePort()
	r := e.runner(e.config(fmt.Sprintf(`
  after "graphite-event" {
    host    = "http://127.0.0.1:%d"
    timeout = "1s"
  }
  after "graphite-metric" { address = "127.0.0.1:%d" }`, port, port)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	if e.current() != "v1" {
		t.Fatal("not installed")
	}
}
