// Package fleet is what the hosts of a service share: the semaphore that
// lets N of them update at once, each host's status, holds, and the
// breaker that stops a bad release at the first host. One interface,
// Fleet, is what the agent and the CLI use; fleet/consul keeps it in
// Consul, fleet/local on one host.
//
// Layout under the prefix (default "dropship"):
//
//	<prefix>/<service>/lock/...            the semaphore (consul/api)
//	<prefix>/<service>/nodes/<node>        NodeStatus
//	<prefix>/<service>/hold                Hold: no host starts an update
//	<prefix>/<service>/failed/<checksum>   Breaker: no host installs it
//	<prefix>/_published/<service>          Published: the nudge agents watch
package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Semaphore is one slot of a limited set shared by the hosts of a service.
type Semaphore interface {
	// Acquire blocks until a slot is held or ctx ends. lost closes if the
	// slot is lost while held (a Consul session expired, say).
	Acquire(ctx context.Context) (lost <-chan struct{}, err error)
	Release(ctx context.Context) error
}

// Fleet is the hosts of every service, as one host sees them.
type Fleet interface {
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

	// Operators: `dropship hold|resume|fleet status|fleet clear`.
	Hold(ctx context.Context, service string, h Hold) error
	Resume(ctx context.Context, service string) error
	// Clear lifts the breaker of checksum; false if there was none.
	Clear(ctx context.Context, service, checksum string) (bool, error)
	// Services lists the services with records.
	Services(ctx context.Context) ([]string, error)
	Status(ctx context.Context, service string) (Status, error)
}

var (
	// ErrUnavailable: the fleet's records cannot be reached; updates that
	// need them do not start (fail closed).
	ErrUnavailable = errors.New("fleet records unavailable")
	// ErrSingleHost: the operation needs a shared store (lock "consul").
	ErrSingleHost = errors.New(`this agent runs on its own (no lock "consul" block): there is no fleet to show or change`)
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
}

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

// Factory builds a Fleet from a `lock "KIND"` block.
type Factory func(kind string, body hcl.Body, env Env) (Fleet, hcl.Diagnostics)

// Keys of a service under prefix.
func LockKey(prefix, service string) string  { return prefix + "/" + service + "/lock" }
func NodesKey(prefix, service string) string { return prefix + "/" + service + "/nodes/" }
func HoldKey(prefix, service string) string  { return prefix + "/" + service + "/hold" }
func FailedKey(prefix, service string) string {
	return prefix + "/" + service + "/failed/"
}
