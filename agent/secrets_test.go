package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/hooks/webhook"
)

func withWebhook() agent.Registry {
	reg := registry()
	reg.Announcers["http"] = webhook.Factory
	return reg
}

// configWith is env.config through reg.
func (e *env) configWith(reg agent.Registry, extra string) *agent.Config {
	e.t.Helper()
	src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
service "app" {
  check_interval = "1s"
  artifact "file" {
    path        = %q
    destination = %q
  }
%s
}
`, e.state, e.store, e.dest, extra)
	path := filepath.Join(e.dir, "dropship.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cfg, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		e.t.Fatalf("config: %v", diags)
	}
	return cfg
}

// TestSecretsStayOutOfLogs runs a deploy whose webhooks, Graphite event
// and health check all fail with secrets in their URLs, and greps the
// agent's log, the outcome and every state file for them.
func TestSecretsStayOutOfLogs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String() // nothing listens there once closed
	l.Close()

	secrets := []string{"SLACKPATHSECRET", "QUERYTOKEN", "HOOKPASSWORD", "GRAPHITEPASSWORD", "CHECKTOKEN"}
	e := newEnv(t)
	cfg := e.configWith(withWebhook(), `
  after "http" { url = "`+srv.URL+`/services/T000/SLACKPATHSECRET?token=QUERYTOKEN" }
  after "http" { url = "http://bot:HOOKPASSWORD@`+closed+`/services/SLACKPATHSECRET" }
  after "graphite-event" { host = "http://graphite:GRAPHITEPASSWORD@`+closed+`" }
  check "http" {
    url     = "`+srv.URL+`/health?token=CHECKTOKEN"
    retries = 1
  }
`)
	var logs bytes.Buffer
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.publish("v1")
	out := e.check(r, agent.ResultFailed)
	// The failures were logged, with their hosts: the test sees them.
	for _, want := range []string{srv.URL, "http://" + closed, "status 500"} {
		if !strings.Contains(logs.String()+out.Err.Error(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs.String())
		}
	}
	texts := map[string]string{"log": logs.String(), "outcome": out.Err.Error()}
	filepath.WalkDir(e.state, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			texts[p] = string(b)
		}
		return nil
	})
	for where, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s holds the secret %s:\n%s", where, s, text)
			}
		}
	}
}

// A failing script hook is named by its place in the config, never by
// its command line, which may carry secrets: not in the outcome, the
// state file or the status (what /v1/status, Consul and the audit log
// are given).
func TestHookErrorNamesTheConfigLineNotTheCommand(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(`  before "script" {
    command = "curl -s -H 'Authorization: Bearer SCRIPTSECRET' http://127.0.0.1:1/ >/dev/null; exit 3"
  }`)
	r := e.runner(cfg)
	e.publish("v1")
	out := e.check(r, agent.ResultFailed)
	// The hook's block opens on line 11 of the file env.config writes.
	for _, want := range []string{"before hook 1", "dropship.hcl:11,", "exited with status 3"} {
		if !strings.Contains(out.Err.Error(), want) {
			t.Fatalf("error %q lacks %q", out.Err, want)
		}
	}
	status, _ := json.Marshal(r.Status())
	texts := map[string]string{"outcome": out.Err.Error(), "status": string(status)}
	filepath.WalkDir(e.state, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			texts[p] = string(b)
		}
		return nil
	})
	if !strings.Contains(texts[filepath.Join(r.Dir(), "state.json")], "exited with status 3") {
		t.Fatalf("the state does not record the failure:\n%s", texts[filepath.Join(r.Dir(), "state.json")])
	}
	for where, text := range texts {
		if strings.Contains(text, "SCRIPTSECRET") || strings.Contains(text, "curl") {
			t.Errorf("%s quotes the hook's command:\n%s", where, text)
		}
	}
}
