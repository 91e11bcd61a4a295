// Package lock decides who may update: a fleet-wide semaphore (Consul) or
// a host-local one (flock).
package lock

import (
	"context"
	"errors"

	"github.com/hashicorp/hcl/v2"
)

// Semaphore is one slot of a limited set shared by the hosts of a service.
type Semaphore interface {
	// Acquire blocks until a slot is held or ctx ends. lost closes if the
	// slot is lost while held (a Consul session expired, say).
	Acquire(ctx context.Context) (lost <-chan struct{}, err error)
	Release(ctx context.Context) error
}

// Provider makes the semaphore of one service.
type Provider interface {
	Semaphore(service string, limit int) (Semaphore, error)
}

// ErrUnavailable: the lock service cannot be reached; updates that need
// it do not start (fail closed).
var ErrUnavailable = errors.New("lock service unavailable")

// Env is what a lock plugin may use while decoding its block.
type Env struct {
	BaseDir   string
	StatePath string
	NodeName  string
}

// Factory builds a Provider from a `lock "KIND"` block.
type Factory func(kind string, body hcl.Body, env Env) (Provider, hcl.Diagnostics)
