package agent

import (
	"context"
	"sync"
	"time"
)

// A host at rest runs the release its store holds. With a rollout, what
// could still move it is in the fleet's records: a pin, a breaker on
// what it runs (a revert), its record forgotten (register again). Those
// changes write a nudge into the folder of announcements
// (fleet.RecordsChanged), which the agent watches anyway with one long
// poll for all its services: a host at rest neither reads its records at
// each check nor follows the rollout's document. Its check is the store
// alone; anything the store shows besides what runs here, and any nudge,
// trigger or gap in the watch, makes the next check read the records
// first, as every check did before.

// restRead is the longest a host at rest goes without reading its
// records: what covers a nudge that was not written (a writer of an
// older dropship, a token that may not write it, a crash between the
// change and its nudge).
const restRead = time.Hour

// watchState is the agent's watch of the announcements, as the hosts at
// rest rely on it.
type watchState struct {
	mu    sync.Mutex
	epoch uint64 // counts the watch's first answers, and its first after each outage
	up    bool
}

func (w *watchState) answered() {
	w.mu.Lock()
	w.epoch++
	w.up = true
	w.mu.Unlock()
}

func (w *watchState) down() {
	w.mu.Lock()
	w.up = false
	w.mu.Unlock()
}

// current is the watch's epoch, 0 while it does not answer.
func (w *watchState) current() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.up {
		return 0
	}
	return w.epoch
}

// rest is what a runner knows of whether its host may stay at rest.
type rest struct {
	mu        sync.Mutex
	watch     *watchState // the agent's watch, when it covers this service; nil: never at rest
	marks     uint64      // nudges and triggers of this service
	readMarks uint64      // marks when the last read of the records began
	readEpoch uint64      // the watch's epoch then (0: it did not answer)
	readAt    time.Time   // when that read began; zero: none yet
	// refused: the agent's token may not write the service's nudge, nor,
	// as a rule, may its peers': their breakers would not reach this
	// host at rest, which never rests then.
	refused bool
	// engage wakes the follower of the rollout's document, paused while
	// the host is at rest.
	engage chan struct{}
}

// refuse tells the runner that its nudges cannot be relied on: see
// rest.refused.
func (s *rest) refuse() {
	s.mu.Lock()
	s.refused = true
	s.mu.Unlock()
}

// mark tells the runner that something may concern a host at rest: a
// nudge, an announcement, a trigger. The next check reads the records.
func (s *rest) mark() {
	s.mu.Lock()
	s.marks++
	s.mu.Unlock()
}

// readMark is what a read of the records knew as it began.
type readMark struct {
	marks, epoch uint64
	at           time.Time
}

// begin notes what is known as a read of the records begins; read, once
// it succeeded, makes it the host's last.
func (s *rest) begin(now time.Time) readMark {
	m := readMark{at: now}
	if s.watch != nil {
		m.epoch = s.watch.current()
	}
	s.mu.Lock()
	m.marks = s.marks
	s.mu.Unlock()
	return m
}

func (s *rest) read(m readMark) {
	s.mu.Lock()
	s.readMarks, s.readEpoch, s.readAt = m.marks, m.epoch, m.at
	s.mu.Unlock()
}

// quiet says whether nothing can have changed in the records for this
// host since its last read: the watch has answered without a gap since
// before that read began, nothing marked the runner since, and the read
// is less than restRead old.
func (s *rest) quiet(now time.Time) bool {
	if s.watch == nil {
		return false
	}
	epoch := s.watch.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	return epoch != 0 && !s.refused && s.readEpoch == epoch && s.readMarks == s.marks &&
		!s.readAt.IsZero() && now.Sub(s.readAt) < restRead && now.Sub(s.readAt) >= 0
}

// mayRest says whether the host's rest can be relied on: the watch
// covers the service and answers, and the nudges can be written.
func (s *rest) mayRest() bool {
	if s.watch == nil || s.watch.current() == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.refused
}

// wake resumes the follower of the document, if it paused.
func (s *rest) wake() {
	select {
	case s.engage <- struct{}{}:
	default:
	}
}

// restLook is the check of a host whose records cannot have changed for
// it (rest.quiet): the store alone. It ends the check when the store
// holds what runs here; otherwise (false) the check goes on as any does,
// reading the records first.
func (r *Runner) restLook(ctx context.Context, st *State) (Outcome, bool) {
	if r.staged != nil {
		return Outcome{}, false
	}
	info, err := r.svc.Source.Stat(ctx)
	if err != nil {
		return Outcome{Result: ResultError, Phase: PhaseStat, Err: err}, true
	}
	if r.installed(st, info) {
		return Outcome{Result: ResultNoop, Checksum: info.Checksum(), Release: st.Release}, true
	}
	return Outcome{}, false
}
