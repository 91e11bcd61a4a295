package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
)

// Each agent counts its own updates in progress (the count that keeps
// memory trimming out of an update): an update of one agent shows in its
// count and in no other agent's of the same process.
func TestUpdatesAreCountedPerAgent(t *testing.T) {
	e := newEnv(t)
	marker := filepath.Join(e.dir, "in-before")
	cfg := e.config(fmt.Sprintf(`
  before "script" { command = "touch %s; sleep 60" }
`, marker))
	busy, err := agent.New(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	other, err := agent.New(e.config(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e.publish("v1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	checked := make(chan agent.Outcome, 1)
	go func() { checked <- busy.Runners()[0].Check(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the update never reached its before hook")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, m := busy.Updating(), other.Updating(); n != 1 || m != 0 {
		t.Fatalf("during one update: the updating agent counts %d, the other %d; want 1 and 0", n, m)
	}
	cancel()
	<-checked
	if n := busy.Updating(); n != 0 {
		t.Fatalf("after the update: %d in progress", n)
	}
}
