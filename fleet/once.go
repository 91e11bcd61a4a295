package fleet

import (
	"fmt"
	"time"
)

// Once is the record of a run-once hook (once = "fleet") for one release:
// which host runs it, under which run id, and how it ended.
//
//	<prefix>/<service>/once/<checksum>/<hook>/lock     held by the runner's session
//	<prefix>/<service>/once/<checksum>/<hook>/record   Once
type Once struct {
	Checksum string    `json:"checksum"`
	Hook     string    `json:"hook"` // "before-1": the chain and the hook's place in it
	RunID    string    `json:"run_id"`
	Node     string    `json:"node"`   // the host that ran it last
	Result   string    `json:"result"` // running, success or failure
	Runs     int       `json:"runs"`   // 2: the first runner died and it ran again
	Error    string    `json:"error,omitempty"`
	Time     time.Time `json:"time"`
}

// Results of a run-once hook.
const (
	OnceRunning = "running"
	OnceSuccess = "success"
	OnceFailure = "failure"
)

// EventOnce: a run-once hook ran (or failed) for the fleet.
const EventOnce = "once"

// OnceKey is the folder of the run-once records of service.
func OnceKey(prefix, service string) string { return prefix + "/" + service + "/once/" }

// Err is the hook's failure as the hosts that waited for it see it; nil
// unless it failed.
func (o Once) Err() error {
	if o.Result != OnceFailure {
		return nil
	}
	return fmt.Errorf("the run-once %s hook failed on %s (run %s): %s", o.Hook, o.Node, o.RunID, o.Error)
}
