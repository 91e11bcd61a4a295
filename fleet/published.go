package fleet

import (
	"context"
	"strings"
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
	// Records, if set, is told that service's records changed in what
	// a host at rest acts on: see RecordsChanged.
	Records func(service string)
	// Services are the services watched, if known: a watch of an empty
	// folder writes the nudge key of the first (RecordsChangedKey), or
	// any write to Consul would wake it.
	Services []string
	// Refused, if set, is told at the watch's first answer of each of
	// Services whose nudge this watcher's token may not write (a token
	// of an older policy): the tokens of its peers, of the same policy
	// as a rule, may not either, and their breakers reach no host at
	// rest.
	Refused func(service string)
	Up      func()      // the watch answers (again, or from a Consul that lost its data)
	Down    func(error) // it stopped answering; retried with back-off
}

// RecordsChanged is the nudge written after each change of a service's
// records that a host at rest (one that runs the release its store
// holds) acts on: a pin, a breaker, a forgotten host (see
// RecordsChangedKey). Holds, freezes, approvals and clears concern only
// hosts that are not at rest, whose checks read the records. Like an
// announcement it is a hint only: a host it wakes reads the records, and
// trusts only those.
type RecordsChanged struct {
	Service string    `json:"service"`
	What    string    `json:"what"` // pin, breaker, forget
	Who     string    `json:"who,omitempty"`
	Time    time.Time `json:"time"`
}

// RecordsChangedKey is where the nudge of service's records is written:
// in the folder of announcements, which every agent watches with one
// long poll, so that an agent at rest need not read its service's
// records at each check nor follow the rollout's document to learn of a
// pin, a breaker or a hold. Service names never begin with "_".
func RecordsChangedKey(prefix, service string) string {
	return PublishedPrefix(prefix) + recordsFolder + service
}

// recordsFolder is the folder of the nudges inside the announcements'.
const recordsFolder = "_records/"

// RecordsChangedService says which service key's nudge is for, if it is
// one (key as listed under PublishedPrefix(prefix)).
func RecordsChangedService(prefix, key string) (string, bool) {
	return strings.CutPrefix(key, PublishedPrefix(prefix)+recordsFolder)
}

// PublishedPrefix is the folder of announcements under a prefix: one
// folder for every service, so that one blocking query per agent sees
// them all, and no other write (node status, semaphore) wakes it.
func PublishedPrefix(prefix string) string { return prefix + "/_published/" }
