// Package trim gives memory the agent does not need at rest back to the
// system.
package trim

import "runtime/debug"

// Heap returns the Go heap's free pages to the system.
func Heap() { debug.FreeOSMemory() }

// Idle returns the heap's free pages and drops the program's own code and
// read-only data from its resident set (see Text); for an agent between
// updates.
func Idle() {
	debug.FreeOSMemory()
	Text()
}
