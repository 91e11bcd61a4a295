// Package fleet is what the hosts of a service share: the slots that let
// N of them update at once, each host's status, holds, and the breaker
// that stops a bad release at the first host. The agent uses Agent; the
// operators' commands and the dashboard use Operator. fleet/consul keeps
// both in Consul; fleet/local is a single host's Agent, with no records.
//
// Layout under the prefix (default "dropship"):
//
//	<prefix>/<service>/lock/...            the semaphore of dropship before the grants (consul/api)
//	<prefix>/<service>/nodes/<node>        NodeStatus
//	<prefix>/<service>/hold                Hold: no host starts an update
//	<prefix>/<service>/failed/<checksum>   Breaker: no host installs it
//	<prefix>/_published/<service>          Published: the nudge agents watch
//	<prefix>/_slots/<service>/grant/<node> a host's wait for a slot, or its grant (lock/consul)
//	<prefix>/_slots/<service>/coord        the coordinator of the grants (lock/consul)
//	<prefix>/<service>/audit/<node>/<time>-<rand>   Event: the audit log, a folder per writer
//	<prefix>/<service>/rollout/freeze      Freeze: no new waves
//	<prefix>/<service>/rollout/pins/<id>   Pin: hosts kept on a release
//	<prefix>/<service>/rollout/approve/<checksum>/<wave>   Approval
//	<prefix>/<service>/rollout/plan/<checksum>   the waves, fixed when the rollout started
package fleet

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/lock"
)

// Semaphore is one slot of a limited set shared by the hosts of a
// service: lock.Slot.
type Semaphore = lock.Slot

// Agent is what an agent needs of the fleet: a slot to update in, whether
// it may start, and telling the other hosts what it did. fleet/local is a
// single host's; fleet/consul the shared one.
type Agent interface {
	// Semaphore returns this host's claim on the update slots of service.
	Semaphore(service string, limit int) (Semaphore, error)
	// Blocked returns why service must not start installing checksum now
	// (a hold, or a breaker another host tripped), or "". An unreachable
	// store of records is an error: the caller starts nothing.
	Blocked(ctx context.Context, service, checksum string) (string, error)
	// Trip marks checksum as failed for the whole fleet.
	Trip(ctx context.Context, service string, b Breaker) error
	// Report writes this host's status after an attempt.
	Report(ctx context.Context, service string, st NodeStatus) error
	// Announce tells the hosts of p.Service that a release was published
	// (a no-op on a single host).
	Announce(ctx context.Context, p Published) error
	// Record appends ev to the audit log of service. The log keeps the
	// newest MaxEvents; appends from many hosts at once never lose one.
	Record(ctx context.Context, service string, ev Event) error
}

// Operator is the fleet's shared records as the operators' commands
// (`dropship hold|resume|fleet …`), the dashboard, and a rollout that
// plans its waves from them read and change them. A single host has none.
type Operator interface {
	Hold(ctx context.Context, service string, h Hold) error
	Resume(ctx context.Context, service string) error
	// Clear lifts the breaker of checksum; false if there was none.
	Clear(ctx context.Context, service, checksum string) (bool, error)
	// Services lists the services with records.
	Services(ctx context.Context) ([]string, error)
	Status(ctx context.Context, service string) (Status, error)

	// Rollouts (`dropship fleet freeze|unfreeze|pin|unpin|approve`).
	// SetFreeze writes f, or lifts the freeze when f is nil.
	SetFreeze(ctx context.Context, service string, f *Freeze) error
	// SetPin writes the pin of the hosts matching glob, or removes it when
	// p is nil; it says whether there was one.
	SetPin(ctx context.Context, service, glob string, p *Pin) (bool, error)
	Approve(ctx context.Context, service string, a Approval) error
	// Forget removes the record of a host that is gone for good, so that
	// waves stop waiting for it; false if there was none.
	Forget(ctx context.Context, service, node string) (bool, error)
	// FixPlan writes the plan of the rollout of checksum (which host in
	// which wave) unless one is written already: false then. Status
	// returns it from then on.
	FixPlan(ctx context.Context, service, checksum string, waves []PlanWave) (bool, error)

	// Log returns the audit log of service, oldest first, with the index
	// to pass next time. With since > 0 it blocks (up to a few minutes,
	// or until ctx ends) until the log has moved past since, and returns
	// only the events written after it.
	Log(ctx context.Context, service string, since uint64) ([]Event, uint64, error)
}

// Fleet is a shared fleet (lock "consul"): both interfaces.
type Fleet interface {
	Agent
	Operator
}

// Shared returns a's shared records, or ErrSingleHost.
func Shared(a Agent) (Fleet, error) {
	if f, ok := a.(Fleet); ok {
		return f, nil
	}
	return nil, ErrSingleHost
}

var (
	// ErrUnavailable: the fleet's records cannot be reached; updates that
	// need them do not start (fail closed). It is lock's, so that the
	// slots' backends need not import fleet.
	ErrUnavailable = lock.ErrUnavailable
	// ErrSingleHost: the operation needs a shared store (lock "consul").
	ErrSingleHost = errors.New(`this agent runs on its own (no lock "consul" block): there is no fleet to show or change`)
	// ErrStatusWritten: a report wrote the host's node status, and the
	// error is about its audit events only (not all written, or the
	// log's trim after them failed). Whoever reported may count the
	// status as told.
	ErrStatusWritten = errors.New("the node status was written")
	// ErrEventsWritten: a report's audit events were written, and its
	// node status refused. Whoever reported may count the events as
	// told: telling them again would only repeat them in the log.
	ErrEventsWritten = errors.New("the events were written")
)

// NodeStatus is one host's view of a service, written after each attempt.
type NodeStatus struct {
	Node     string    `json:"node"`
	Checksum string    `json:"checksum"` // installed now
	Release  string    `json:"release"`
	Result   string    `json:"result"` // of the last attempt
	Attempt  string    `json:"attempt,omitempty"`
	Phase    string    `json:"phase,omitempty"`
	Error    string    `json:"error,omitempty"`
	Time     time.Time `json:"time"`
	// Tags are the host's node_tags; Policy the hash of its rollout block
	// ("" without one). Hosts whose policies differ stop advancing.
	Tags   []string `json:"tags,omitempty"`
	Policy string   `json:"policy,omitempty"`
	// Counted: the failure is the release's fault (it trips breakers and
	// counts toward a rollout's max_failed), not this host's trouble.
	Counted bool `json:"counted,omitempty"`
	// Reason is why the host waits: the application defers the update
	// of Attempt (Result "deferred").
	Reason string `json:"reason,omitempty"`
	// Watched is how long the host watched the installed release's
	// health after the switch, a window that closed without a failure
	// (checks with watch = "…"). A wave whose hosts all watched for the
	// rollout's bake has served its bake.
	Watched time.Duration `json:"watched,omitempty"`
}

// ServiceWatcher is a Fleet whose records of a service can be waited on.
type ServiceWatcher interface {
	// WaitService blocks until the records of service change past index
	// (or a few minutes pass, or ctx ends) and returns the new index.
	WaitService(ctx context.Context, service string, index uint64) (uint64, error)
}

// Freeze stops new waves of a rollout on every host (a revert still runs).
type Freeze struct {
	Reason string    `json:"reason"`
	Who    string    `json:"who"`
	Time   time.Time `json:"time"`
	Until  time.Time `json:"until,omitzero"` // zero: until unfrozen
}

// Pin keeps the hosts whose node names match Nodes (a glob) on one
// release, a checksum or a release id, and out of rollouts.
type Pin struct {
	Nodes  string    `json:"nodes"`
	Target string    `json:"target"`
	Who    string    `json:"who"`
	Time   time.Time `json:"time"`
}

// Approval lets a wave of a rollout start.
type Approval struct {
	Checksum string    `json:"checksum"`
	Wave     string    `json:"wave"`
	Who      string    `json:"who"`
	Time     time.Time `json:"time"`
}

// Hold stops every host from starting an update of a service.
type Hold struct {
	Reason string    `json:"reason"`
	Who    string    `json:"who"`
	Time   time.Time `json:"time"`
}

// Breaker records the host on which a checksum failed.
type Breaker struct {
	Checksum string    `json:"checksum"`
	Node     string    `json:"node"`
	Phase    string    `json:"phase"`
	Error    string    `json:"error"`
	Time     time.Time `json:"time"`
}

// Status is the fleet's view of one service.
type Status struct {
	Service  string
	Nodes    []NodeStatus
	Holders  []string // nodes holding a slot now
	Limit    int
	Hold     *Hold
	Breakers []Breaker
	// Published is the last release announced for the service, if any.
	Published *Published
	// Rollouts.
	Freeze    *Freeze
	Pins      []Pin
	Approvals []Approval
	// Cleared is when `fleet clear` lifted a checksum's breaker: failures
	// before it no longer count.
	Cleared map[string]time.Time
	// Plans are the plans of rollouts, fixed when each started, by
	// checksum.
	Plans map[string][]PlanWave
	// Ignored are operators' records not acted on (with operator_keys:
	// unsigned, signed by another key, or copied), and why.
	Ignored []Ignored `json:",omitempty"`
}

// Ignored is an operator's record that agents do not act on.
type Ignored struct {
	Key    string `json:"key"` // under the service's folder: "hold", "rollout/pins/…"
	Reason string `json:"reason"`
}

// PlanWave is one wave of a fixed plan: its name and its hosts.
type PlanWave struct {
	Name  string   `json:"name"`
	Nodes []string `json:"nodes"`
}

// MaxPlans is how many fixed plans a service keeps (the newest).
const MaxPlans = 4

// Breaker returns the breaker of checksum, or nil.
func (s Status) Breaker(checksum string) *Breaker {
	for i := range s.Breakers {
		if s.Breakers[i].Checksum == checksum {
			return &s.Breakers[i]
		}
	}
	return nil
}

// ClockSkew is how far ahead of a reader's clock a record's time may be
// and still be taken as it is. Past it, the writer's clock runs ahead (or
// the record was edited): rollouts count the record as of when they first
// saw it, and `fleet status` names the host.
const ClockSkew = time.Minute

// Ahead says whether t, read from a record, is ahead of the clock now by
// more than ClockSkew.
func Ahead(t, now time.Time) bool { return t.After(now.Add(ClockSkew)) }

// MaxErrorText bounds the error text a host writes into shared records
// (node status, breaker): hook output can be long and may hold more than
// the fleet should see. The full text stays in the host's own log.
const MaxErrorText = 512

// Clip shortens an error text to MaxErrorText bytes, keeping its start
// (what failed) and marking the cut.
func Clip(s string) string {
	if len(s) <= MaxErrorText {
		return s
	}
	cut := MaxErrorText - len(" …[cut]")
	for cut > 0 && s[cut]&0xC0 == 0x80 { // not inside a UTF-8 sequence
		cut--
	}
	return s[:cut] + " …[cut]"
}

// Env is what a fleet plugin may use while decoding its `lock` block.
type Env struct {
	BaseDir   string
	StatePath string
	NodeName  string
}

// Factory builds the fleet of a `lock "KIND"` block.
type Factory func(kind string, body hcl.Body, env Env) (Agent, hcl.Diagnostics)

// MaxEvents is how many events the audit log keeps per service.
const MaxEvents = 1000

// Kinds of events in the audit log.
const (
	EventPublish  = "publish"  // an artifact was uploaded
	EventInstall  = "install"  // a host installed a release
	EventFailure  = "failure"  // a host failed to install a release
	EventRollback = "rollback" // a host went back (operator, or automatic after a failure)
	EventHold     = "hold"
	EventResume   = "resume"
	EventClear    = "clear"    // a breaker lifted
	EventRevert   = "revert"   // a host went back because the fleet's breaker tripped
	EventGate     = "gate"     // a rollout gate failed and stopped the rollout
	EventApprove  = "approve"  // a wave approved
	EventFreeze   = "freeze"   // new waves stopped
	EventUnfreeze = "unfreeze" // new waves allowed again
	EventPin      = "pin"      // hosts pinned to a release
	EventUnpin    = "unpin"
	EventForget   = "forget" // a host's record removed
	EventDefer    = "defer"  // the application deferred an update on a host
)

// Event is one entry of the audit log: who did what to which service,
// where and when.
type Event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Service  string    `json:"service"`
	Who      string    `json:"who"`            // user@host, a host's node name, or a dashboard identity
	Via      string    `json:"via,omitempty"`  // "agent", "cli" or "dashboard"
	From     string    `json:"from,omitempty"` // the client address of a dashboard action
	Node     string    `json:"node,omitempty"` // the host it happened on
	Checksum string    `json:"checksum,omitempty"`
	Release  string    `json:"release,omitempty"`
	Phase    string    `json:"phase,omitempty"`
	Detail   string    `json:"detail,omitempty"` // a reason, or an error (clipped)
	// Writer is the folder of the log the event was written in (the node
	// name of its writer's config), set on read when it is not Who's or
	// Node's: an operator's desk, the dashboard's host, or a host that
	// wrote an event in another's name (its token may write only there).
	Writer string `json:"writer,omitempty"`
	// Index orders events as the store wrote them (Consul's modify
	// index); set on read.
	Index uint64 `json:"index,omitempty"`
}

// OutcomeEvents are the audit events of one attempt as a host reported
// it: an install, a failure (and, when the release had been switched, the
// automatic rollback that followed), or an operator's rollback.
func OutcomeEvents(st NodeStatus) []Event {
	ev := Event{Time: st.Time, Who: st.Node, Via: "agent", Node: st.Node,
		Checksum: st.Attempt, Release: st.Release, Phase: st.Phase, Detail: Clip(st.Error)}
	switch st.Result {
	case "installed":
		ev.Kind = EventInstall
		return []Event{ev}
	case "reverted":
		ev.Kind, ev.Detail = EventRevert, strings.TrimSpace("fleet revert "+ev.Detail)
		return []Event{ev}
	case "rolledback":
		ev.Kind, ev.Detail = EventRollback, strings.TrimSpace("operator rollback "+ev.Detail)
		return []Event{ev}
	case "deferred":
		ev.Kind, ev.Release, ev.Detail = EventDefer, "", Clip(st.Reason)
		return []Event{ev}
	case "failed":
		ev.Kind, ev.Release = EventFailure, ""
		out := []Event{ev}
		switch st.Phase {
		case "switch", "after", "check": // the release was live: the host switched back
			back := ev
			back.Kind, back.Checksum, back.Release = EventRollback, st.Checksum, st.Release
			back.Detail = "automatic: " + st.Attempt + " failed in " + st.Phase
			out = append(out, back)
		}
		return out
	}
	return nil
}

// Keys of a service under prefix.
func LockKey(prefix, service string) string  { return prefix + "/" + service + "/lock" }
func NodesKey(prefix, service string) string { return prefix + "/" + service + "/nodes/" }
func HoldKey(prefix, service string) string  { return prefix + "/" + service + "/hold" }
func FailedKey(prefix, service string) string {
	return prefix + "/" + service + "/failed/"
}
func AuditKey(prefix, service string) string   { return prefix + "/" + service + "/audit/" }
func RolloutKey(prefix, service string) string { return prefix + "/" + service + "/rollout/" }
