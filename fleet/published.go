package fleet

import (
	"context"
	"time"
)

// Published is the release `dropship publish` announced for a service: a
// nudge for the agents watching, never trusted as the release itself.
// Each agent still stats the store and verifies the bytes.
type Published struct {
	Service   string    `json:"service"`
	Key       string    `json:"key"`      // where: s3://bucket/key, …
	Checksum  string    `json:"checksum"` // as an agent's Stat would report it
	Size      int64     `json:"size"`
	VersionID string    `json:"version_id,omitempty"`
	Signed    bool      `json:"signed"`
	Publisher string    `json:"publisher"`
	Time      time.Time `json:"time"`
}

// Watcher is a Fleet that can tell an agent at once when a release is
// published, so that polling can be slow.
type Watcher interface {
	// WatchPublished calls w.Changed with each announcement made after the
	// watch started, until ctx ends. It returns only when ctx ends; lost
	// connections are retried with back-off, since polling covers for a
	// watch that is down.
	WatchPublished(ctx context.Context, w Watch) error
}

// Watch is what a watcher tells its user.
type Watch struct {
	Changed func(Published)
	Up      func()      // the watch answers (again)
	Down    func(error) // it stopped answering; retried with back-off
}

// PublishedPrefix is the folder of announcements under a prefix: one
// folder for every service, so that one blocking query per agent sees
// them all, and no other write (node status, semaphore) wakes it.
func PublishedPrefix(prefix string) string { return prefix + "/_published/" }
