package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
)

// On a single host a run-once hook simply runs, at each install, with a
// run id; a rollback does not run it.
func TestOnceHookOnASingleHost(t *testing.T) {
	e := newEnv(t)
	cfg, diags := agent.Load(e.writeConfig("file", "", fmt.Sprintf(`before "script" {
    once    = "fleet"
    command = "echo \"before $DROPSHIP_RUN_ID\" >> %[1]s"
  }
  after "script" {
    once    = "fleet"
    command = "echo \"after $DROPSHIP_RUN_ID\" >> %[1]s"
  }`, e.log)), registry(), slog.New(slog.DiscardHandler))
	if diags.HasErrors() || len(diags) != 2 || !strings.Contains(diags[0].Detail, "this host runs the hook itself") {
		t.Fatalf("want two warnings that say what once does here: %v", diags)
	}
	r := e.runner(cfg)
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	e.check(r, agent.ResultInstalled)
	if _, err := r.Rollback(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(e.hookLog()), "\n")
	if len(lines) != 4 || e.current() != "v1" {
		t.Fatalf("running %q, hooks ran:\n%s", e.current(), e.hookLog())
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) != 2 || len(f[1]) != 16 {
			t.Fatalf("a run-once hook without its run id: %q", l)
		}
	}
}

// awayFleet is a fleet whose records cannot be reached.
type awayFleet struct{ recordingFleet }

func (*awayFleet) RunOnce(context.Context, string, string, string, func(context.Context, string) error) (fleet.Once, bool, error) {
	return fleet.Once{}, false, fmt.Errorf("%w: consul is away", fleet.ErrUnavailable)
}

// A run-once hook that cannot reach its fleet fails the check as this
// host's trouble: nothing installed, nothing counted, no breaker.
func TestOnceHookWithTheFleetAwayIsNotTheRelease(t *testing.T) {
	e := newEnv(t)
	ff := &awayFleet{}
	r := e.runner(e.deferConfig(ff, fmt.Sprintf(`before "script" {
    once    = "fleet"
    command = "echo ran >> %s"
  }`, e.log)))
	e.publish("v1")
	out := e.check(r, agent.ResultError)
	if !errors.Is(out.Err, fleet.ErrUnavailable) || e.current() != "" || e.hookLog() != "" {
		t.Fatalf("%v; running %q; hooks %q", out.Err, e.current(), e.hookLog())
	}
	if len(ff.trips) != 0 || e.state_(r).Failures[out.Checksum] != nil {
		t.Fatalf("counted as the release's failure: trips %v", ff.trips)
	}
}
