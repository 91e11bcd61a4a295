// Package fleet holds the records hosts share in Consul: each host's
// status, holds, and the breaker that stops a bad release at the first
// host. Layout under the prefix (default "dropship"):
//
//	<prefix>/<service>/lock/...            the semaphore (consul/api)
//	<prefix>/<service>/nodes/<node>        NodeStatus
//	<prefix>/<service>/hold                Hold: no host starts an update
//	<prefix>/<service>/failed/<checksum>   Breaker: no host installs it
package fleet

import "time"

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

// Keys of a service under prefix.
func LockKey(prefix, service string) string  { return prefix + "/" + service + "/lock" }
func NodesKey(prefix, service string) string { return prefix + "/" + service + "/nodes/" }
func HoldKey(prefix, service string) string  { return prefix + "/" + service + "/hold" }
func FailedKey(prefix, service string) string {
	return prefix + "/" + service + "/failed/"
}
