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

import "context"

// Slot is one host's claim on the update slots of a service.
type Slot interface {
	// Acquire blocks until a slot is held or ctx ends. lost closes if the
	// slot is lost while held (a Consul session expired, say).
	Acquire(ctx context.Context) (lost <-chan struct{}, err error)
	Release(ctx context.Context) error
}
