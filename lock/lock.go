// Package lock is how the hosts of a service take turns: a slot of a
// limited set (`concurrency`) held while a host updates.
//
// lock/consul keeps the slots in Consul as grants: each waiting host
// writes one key of its own, held by its own session, and waits on it;
// one coordinator per service, elected among the waiting agents with a
// Consul session lock, turns at most `concurrency` of those keys into
// grants. A host's work does not grow with the fleet: it never reads the
// other hosts' keys. lock/local is the single host's flock(2).
package lock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrUnavailable: the shared store that keeps the slots and the fleet's
// records cannot be reached; updates that need it do not start (fail
// closed). fleet.ErrUnavailable is the same value.
var ErrUnavailable = errors.New("fleet records unavailable")

// Slot is one host's claim on the update slots of a service.
type Slot interface {
	// Acquire blocks until a slot is held or ctx ends. lost closes if the
	// slot is lost while held (a Consul session expired, say).
	Acquire(ctx context.Context) (lost <-chan struct{}, err error)
	Release(ctx context.Context) error
}

// Rollout is the compact document the coordinator of a service with a
// rollout writes for the waiting hosts: the release rolling out and the
// state of each wave. Its size grows with the waves, never with the fleet:
// a host learns its own wave from a key of its own.
type Rollout struct {
	Checksum string      `json:"checksum"`
	Waves    []WaveState `json:"waves"`
	// WaitingOn is a host the rollout waits on (the first of the first
	// wave not done), for operators.
	WaitingOn string `json:"waiting_on,omitempty"`
	// Hold, Freeze and Trip say why nothing opens, if so.
	Hold   string `json:"hold,omitempty"`
	Freeze string `json:"freeze,omitempty"`
	Trip   string `json:"trip,omitempty"`
	// Pins are the node globs pinned, and Breakers the checksums refused:
	// a host following the document acts on them without reading more.
	Pins     []string `json:"pins,omitempty"`
	Breakers []string `json:"breakers,omitempty"`
	// Again, if set, is when the coordinator should decide again at the
	// latest (a gate to ask mid-bake). Not written.
	Again time.Time `json:"-"`
	// Done: every planned host has the release.
	Done bool      `json:"done,omitempty"`
	By   string    `json:"by"`
	Time time.Time `json:"time"`
}

// WaveState is one wave of a Rollout.
type WaveState struct {
	Name  string `json:"name"`
	Hosts int    `json:"hosts"`
	Done  int    `json:"done"` // hosts on the release
	Open  bool   `json:"open,omitempty"`
	// Queue: closed only until an earlier wave is done. Its hosts wait
	// for their grant in line, and the coordinator grants them as soon
	// as it opens.
	Queue  bool      `json:"queue,omitempty"`
	Reason string    `json:"reason,omitempty"` // why it is not open
	Until  time.Time `json:"until,omitzero"`   // when to look again
}

// Wave returns the state of the wave named name, or nil.
func (r *Rollout) Wave(name string) *WaveState {
	if r == nil {
		return nil
	}
	for i := range r.Waves {
		if r.Waves[i].Name == name {
			return &r.Waves[i]
		}
	}
	return nil
}

// ErrMoved ends a host's wait for a grant of a release when the rollout
// moved on: another release, a breaker, a pin of the host.
var ErrMoved = errors.New("the rollout moved on")

// Planner decides a rollout for the coordinator: it reads the fleet's
// records (the coordinator calls it at most once a second), fixes the
// plan of checksum and decides each wave. It returns the document and
// every planned host's wave.
type Planner interface {
	Plan(ctx context.Context, checksum string) (Rollout, map[string]string, error)
}

// SoonPlanner is a Planner that can decide at once when a wave's last
// host is done, reading afresh only the records that can have changed
// since its last decision (not every host's).
type SoonPlanner interface {
	Planner
	PlanSoon(ctx context.Context, checksum string) (Rollout, map[string]string, error)
}

// LinePlanner is a Planner that, when it fixes the plan of a release,
// can take the canary among the hosts waiting in line for it: they are
// granted as the rollout starts.
type LinePlanner interface {
	Planner
	PlanLine(ctx context.Context, checksum string, inLine []string) (Rollout, map[string]string, error)
}

// Coordinated is a Slot whose coordinator can decide a rollout: the
// agent of a service with a rollout block reads the coordinator's
// document and its own wave rather than every host's record.
type Coordinated interface {
	Slot
	// SetPlanner makes this host's coordinator, whenever it is elected,
	// decide the waves with p and grant only hosts whose wave is open.
	SetPlanner(p Planner)
	// Want sets the release the next Acquire waits to install ("" for a
	// slot outside any rollout: a revert, a pin).
	Want(checksum string)
	// Rollout reads the document and this host's wave of checksum (""
	// when not placed yet). It asks for checksum to be rolled out when
	// the document is about another release, and starts a coordinator
	// when none runs.
	Rollout(ctx context.Context, checksum string) (*Rollout, string, error)
	// WaitRollout blocks until the document changes past index (or a
	// few minutes pass) and returns it (nil when there is none) and the
	// new index.
	WaitRollout(ctx context.Context, index uint64) (*Rollout, uint64, error)
}

// ActState is what a waiting host acts on in a document, as one string
// to compare: the reasons aside, which change with every host done. ""
// for no document.
func (r *Rollout) ActState() string {
	if r == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%s|%s|%v|%v", r.Checksum, r.Hold, r.Freeze, r.Trip, r.Pins, r.Breakers)
	for _, w := range r.Waves {
		fmt.Fprintf(&b, "|%s %v %d %s", w.Name, w.Open, w.Hosts, w.Until.Format(time.RFC3339Nano))
	}
	return b.String()
}
