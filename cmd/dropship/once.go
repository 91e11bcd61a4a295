package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// onceLister is a fleet that keeps the records of run-once hooks.
type onceLister interface {
	OnceRecords(ctx context.Context, service string) ([]fleet.Once, error)
}

// onceShown is how many run-once records `fleet status` shows, newest.
const onceShown = 6

// printOnce shows the newest run-once hooks of service: where each ran,
// under which run id, and how it ended.
func printOnce(ctx context.Context, g *globals, p fleet.Fleet, service string) {
	ol, ok := p.(onceLister)
	if !ok {
		return
	}
	recs, err := ol.OnceRecords(ctx, service)
	if err != nil {
		fmt.Fprintf(g.stdout, "run-once hooks: %v\n", err)
		return
	}
	if len(recs) > onceShown {
		recs = recs[len(recs)-onceShown:]
	}
	for _, o := range recs {
		line := fmt.Sprintf("RUN-ONCE %s of %s: %s on %s, run %s", o.Hook, o.Checksum, o.Result, o.Node, o.RunID)
		if o.Runs > 1 {
			line += fmt.Sprintf(" (run %d times: a host died running it)", o.Runs)
		}
		line += " at " + o.Time.Format(time.RFC3339)
		if o.Error != "" {
			line += ": " + oneLine(o.Error)
		}
		fmt.Fprintln(g.stdout, line)
	}
}
