package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// The defer command's text may carry a secret (a token in an argument),
// as a hook's may: the reason a host defers, which goes to its status,
// its node record and the audit log, never quotes it.
func TestDeferReasonDoesNotQuoteTheCommand(t *testing.T) {
	const secret = "s3cr3t-t0ken-4242"
	e := newEnv(t)
	ff := &recordingFleet{}
	r := e.runner(e.deferConfig(ff, fmt.Sprintf(`defer {
    command  = "test ! -f %s/busy || exit 75 # --token=%s"
    interval = "100ms"
  }`, e.dir, secret)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	os.WriteFile(filepath.Join(e.dir, "busy"), nil, 0o644)
	e.publish("v2")
	out := e.check(r, agent.ResultDeferred)
	if !strings.Contains(out.Reason, "exited 75") {
		t.Fatalf("reason %q", out.Reason)
	}
	var told []string
	told = append(told, out.Reason, r.Status().Deferred)
	ff.mu.Lock()
	for _, n := range ff.st.Nodes {
		told = append(told, n.Reason, n.Error)
	}
	for _, ev := range ff.events {
		told = append(told, ev.Detail)
	}
	ff.mu.Unlock()
	for _, s := range told {
		if strings.Contains(s, secret) {
			t.Fatalf("the defer command's text was told: %q", s)
		}
	}
}
