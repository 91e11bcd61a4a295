package agent_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/local"
)

// unwritableLog is the host's own fleet with an audit log that refuses
// every append.
type unwritableLog struct{ local.Fleet }

func (unwritableLog) Record(context.Context, string, fleet.Event) error {
	return errors.New("audit log: 503 service unavailable")
}

// An audit log that cannot be written is logged with the event it lost;
// the update it tells of is installed all the same.
func TestUnrecordedEventIsLogged(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("")
	cfg.Fleet = unwritableLog{local.Fleet{Dir: cfg.StatePath}}
	var logs bytes.Buffer
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.publish("v1")
	out := e.check(r, agent.ResultInstalled)
	var line string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "could not record the event in the audit log") {
			line = l
		}
	}
	for _, want := range []string{"level=WARN", "kind=" + fleet.EventInstall, "checksum=" + out.Checksum, "503 service unavailable"} {
		if !strings.Contains(line, want) {
			t.Fatalf("no %q in the log line of the lost event %q\n%s", want, line, logs.String())
		}
	}
	if e.current() != "v1" {
		t.Fatalf("current %q", e.current())
	}
}
