package rollout

import (
	"errors"
	"slices"
	"testing"
)

// Validate names the key of each problem, in a type a loader reads without
// guessing from the message; a sound policy has none.
func TestValidateNamesTheKeyOfEachProblem(t *testing.T) {
	bad := Policy{Waves: []Wave{{Percent: 50}}, Canary: -1, MaxFailed: 0, OnFailure: "rewind", Approve: []string{"9"}}
	ps := bad.Validate()
	var keys []string
	for _, p := range ps {
		keys = append(keys, p.Key)
		if p.Error() != p.Msg || len(p.Msg) <= len(p.Key)+2 || p.Msg[:len(p.Key)+2] != p.Key+": " {
			t.Errorf("problem %+v: its message does not start with its key", p)
		}
	}
	if want := []string{"waves", "canary", "max_failed", "on_failure", "approve"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	var err error = ps
	var first Problem
	if !errors.As(err, &first) || first.Key != "waves" {
		t.Fatalf("errors.As through Problems: %+v", first)
	}

	good := Policy{Waves: []Wave{{Percent: 100}}, MaxFailed: 1, OnFailure: OnFailureStop}
	if ps := good.Validate(); ps != nil {
		t.Fatalf("a sound policy: %v", ps)
	}
}

// ParseWindow's error names the key at fault.
func TestParseWindowNamesTheKey(t *testing.T) {
	for _, c := range []struct{ days, hours, tz, key string }{
		{"Mon-Fry", "09:00-16:00", "UTC", "days"},
		{"Mon-Fri", "9-16", "UTC", "hours"},
		{"Mon-Fri", "09:00-16:00", "Local", "timezone"},
		{"Mon-Fri", "09:00-16:00", "Mars/Olympus", "timezone"},
	} {
		_, err := ParseWindow(c.days, c.hours, c.tz)
		var p Problem
		if !errors.As(err, &p) || p.Key != c.key {
			t.Errorf("%+v: %v (key %q)", c, err, p.Key)
		}
	}
}
