package rollout

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong in a rollout's settings, with the key of the
// rollout block it is about, so that a config loader can point at it.
type Problem struct {
	Key string // waves, canary, max_failed, on_failure, approve, days, hours, timezone
	Msg string // the whole message, starting with the key
}

func (p Problem) Error() string { return p.Msg }

// problem is the Problem about key: "key: " and the formatted message.
func problem(key, format string, args ...any) Problem {
	return Problem{Key: key, Msg: key + ": " + fmt.Sprintf(format, args...)}
}

// Problems is every problem Validate found; nil when there is none.
type Problems []Problem

// Error is the problems one a line.
func (ps Problems) Error() string {
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Msg
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find each Problem.
func (ps Problems) Unwrap() []error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errs
}
