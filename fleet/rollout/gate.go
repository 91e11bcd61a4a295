package rollout

import (
	"context"
	"time"
)

// Verdict is a gate's judgement of a time range.
type Verdict struct {
	OK     bool
	Detail string
}

// Gate judges the fleet's health over a time range.
type Gate interface {
	Name() string
	Check(ctx context.Context, from, to time.Time) (Verdict, error)
}
