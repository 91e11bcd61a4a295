package agent

import (
	"testing"
	"time"
)

// A host rests on its last read of the records only while nothing can
// have changed them unseen: the watch answered before that read began
// and without a gap since, nothing marked the runner, and the read is
// less than restRead old.
func TestRestIsQuietOnlyOnAFreshReadUnderAnUnbrokenWatch(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	var ws watchState
	s := &rest{watch: &ws}
	read := func(at time.Time) { s.read(s.begin(at)) }

	read(now)
	if s.quiet(now) {
		t.Fatal("quiet on a read made before the watch answered")
	}
	ws.answered()
	if s.quiet(now) {
		t.Fatal("quiet on a read made before the watch answered, once it has")
	}
	read(now)
	if !s.quiet(now.Add(time.Minute)) {
		t.Fatal("not quiet on a read under the watch")
	}
	if s.quiet(now.Add(restRead)) {
		t.Fatalf("quiet on a read %s old", restRead)
	}
	if s.quiet(now.Add(-time.Minute)) {
		t.Fatal("quiet on a read dated ahead of the clock (set back)")
	}

	s.mark()
	if s.quiet(now.Add(time.Minute)) {
		t.Fatal("quiet after a nudge")
	}
	// A nudge during the read: the read may have missed it.
	m := s.begin(now)
	s.mark()
	s.read(m)
	if s.quiet(now.Add(time.Minute)) {
		t.Fatal("quiet after a nudge that came during the read")
	}
	read(now)
	if !s.quiet(now.Add(time.Minute)) {
		t.Fatal("not quiet after a read that followed the nudge")
	}

	ws.down()
	if s.quiet(now.Add(time.Minute)) {
		t.Fatal("quiet while the watch does not answer")
	}
	ws.answered()
	if s.quiet(now.Add(time.Minute)) {
		t.Fatal("quiet on a read made before the watch's outage")
	}
	read(now)
	if !s.quiet(now.Add(time.Minute)) {
		t.Fatal("not quiet after a read under the watch come back")
	}

	if (&rest{}).quiet(now) {
		t.Fatal("quiet without a watch")
	}

	// A token that may not write the nudge: never at rest.
	s.refuse()
	read(now)
	if s.quiet(now.Add(time.Minute)) || s.mayRest() {
		t.Fatal("at rest on a token that may not write the nudge")
	}
}

// Hosts that got in line together at a release start following the
// coordinator at moments spread over 20 s, not in the same instant.
func TestFollowInLineSpreads(t *testing.T) {
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range 200 {
		d := FollowInLine()
		if d < 20*time.Second || d >= 40*time.Second {
			t.Fatalf("FollowInLine() = %v, outside [20 s, 40 s)", d)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < 5*time.Second {
		t.Fatalf("200 hosts all follow within %v of each other", hi-lo)
	}
}
