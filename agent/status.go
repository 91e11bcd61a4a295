package agent

import "time"

// Status is a service's live status, as the status endpoint shows it.
type Status struct {
	Service     string    `json:"service"`
	Checksum    string    `json:"checksum,omitempty"`
	Release     string    `json:"release,omitempty"`
	LastCheck   time.Time `json:"last_check,omitzero"`
	LastResult  Result    `json:"last_result,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextCheck   time.Time `json:"next_check,omitzero"`
	Waiting     bool      `json:"waiting_for_slot"`
	RolloutWait string    `json:"rollout_wait,omitempty"` // why the rollout holds this host back
	Holding     bool      `json:"holding_slot"`
	// Staged is the checksum of the release downloaded, verified and
	// unpacked ahead of its slot (stage = "ahead"), "" when none.
	Staged string `json:"staged,omitempty"`
	// Deferred is why the application holds the update back, since
	// DeferredSince (defer block); "" when it does not.
	Deferred      string    `json:"deferred,omitempty"`
	DeferredSince time.Time `json:"deferred_since,omitzero"`
	// WatchUntil is when the watch of the release just switched to ends.
	WatchUntil time.Time `json:"watch_until,omitzero"`
}

// Status returns a copy of the runner's live status.
func (r *Runner) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// noteCheck records a check's outcome; st is the state it left, or nil
// when it did not get as far as reading it.
func (r *Runner) noteCheck(o Outcome, st *State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastCheck = r.now().UTC()
	r.status.LastResult = o.Result
	r.status.RolloutWait = ""
	if o.rollout {
		r.status.RolloutWait = o.Reason
	}
	if o.Result != ResultDeferred {
		r.status.Deferred, r.status.DeferredSince = "", time.Time{}
		if o.Result != ResultError {
			r.deferral = deferring{}
		}
	}
	r.status.LastError = ""
	if o.Err != nil {
		r.status.LastError = o.Err.Error()
	}
	if st == nil {
		st, _ = LoadState(r.lay.dir, r.svc.Name)
	}
	if st != nil {
		r.status.Checksum, r.status.Release = st.Checksum, st.Release
	}
}

// rolloutWaiting says whether the last check waits on the rollout.
func (r *Runner) rolloutWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.RolloutWait != ""
}

func (r *Runner) setNext(t time.Time) {
	r.mu.Lock()
	r.status.NextCheck = t.UTC()
	r.mu.Unlock()
}

// inLine says whether this host waits in line for a slot now.
func (r *Runner) inLine() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.Waiting
}

func (r *Runner) setWaiting(b bool) {
	r.mu.Lock()
	r.status.Waiting = b
	r.mu.Unlock()
}

func (r *Runner) setHolding(b bool) {
	r.mu.Lock()
	r.status.Holding = b
	r.mu.Unlock()
}

func (r *Runner) setDeferred(reason string, since time.Time) {
	r.mu.Lock()
	r.status.Deferred, r.status.DeferredSince = reason, since.UTC()
	if since.IsZero() {
		r.status.DeferredSince = time.Time{}
	}
	r.mu.Unlock()
}

func (r *Runner) setWatching(until time.Time) {
	r.mu.Lock()
	r.status.WatchUntil = until.UTC()
	if until.IsZero() {
		r.status.WatchUntil = time.Time{}
	}
	r.mu.Unlock()
}
