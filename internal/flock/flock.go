// Package flock is an exclusive lock on one file with flock(2): the
// kernel frees it when its holder dies. lock/local's slots are made of
// it, and the agent holds one per service so that two agents on one host
// never install the same service at once.
package flock

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// lockFileMode: readable by the agent alone, so no other user can open
// the file to flock it.
const lockFileMode = 0o600

// PollInterval: flock cannot be interrupted, so Acquire retries it.
const PollInterval = 50 * time.Millisecond

// Lock is an exclusive lock on one file.
type Lock struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// New returns the lock on path; the file is created on Acquire.
func New(path string) *Lock { return &Lock{path: path} }

// TryAcquire takes the lock if it is free.
func (l *Lock) TryAcquire() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return false, fmt.Errorf("lock %s: already held by this process", l.path)
	}
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	// Only root's agent may hold the file open: with a mode others could
	// read, any local user could flock it and stall every update. A link
	// put in its place is refused, never followed.
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, lockFileMode)
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	// A lock file made by an older version kept its 0644.
	if fi, err := f.Stat(); err != nil || fi.Mode().Perm() != lockFileMode {
		if err := f.Chmod(lockFileMode); err != nil {
			f.Close()
			return false, fmt.Errorf("lock %s: %w", l.path, err)
		}
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	l.f = f
	return true, nil
}

// Acquire waits for the lock. A local lock is never lost while held.
func (l *Lock) Acquire(ctx context.Context) (<-chan struct{}, error) {
	for {
		ok, err := l.TryAcquire()
		if err != nil {
			return nil, err
		}
		if ok {
			return make(chan struct{}), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock %s: %w", l.path, context.Cause(ctx))
		case <-time.After(PollInterval):
		}
	}
}

// Release frees the lock.
func (l *Lock) Release(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close() // closing drops the flock
	l.f = nil
	return err
}
