package agent

import (
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet/rollout"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// A host following the coordinator's document is told when a wave may
// open (a bake's end, a window's opening) by the coordinator's clock. Once
// that time has passed on this host's clock (the coordinator has not
// written its next decision yet, or the clocks differ), the host waits
// for the document, not 10 ms at a time: a wave of hosts checking 100
// times a second, each reading Consul and the store, until the next
// decision or for as long as the clocks differ.
func TestCoordinatedHostDoesNotSpinOnATimePassed(t *testing.T) {
	r := &Runner{svc: &Service{Rollout: &rollout.Policy{}}, coord: &lockconsul.Slots{}, now: time.Now}
	for _, until := range []time.Time{time.Now().Add(-time.Hour), time.Now().Add(-time.Second), time.Now()} {
		if w := r.rolloutWait(Outcome{Until: until, rollout: true}); w < followGap {
			t.Errorf("a host waiting on a time %s ago looks again after %s", time.Since(until).Round(time.Millisecond), w)
		}
	}
	// A time still to come is kept to.
	if w := r.rolloutWait(Outcome{Until: time.Now().Add(20 * time.Second), rollout: true}); w > 21*time.Second || w < 19*time.Second {
		t.Errorf("a host waiting on a time 20 s away looks again after %s", w)
	}
}
