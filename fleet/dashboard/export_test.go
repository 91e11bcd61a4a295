package dashboard

import (
	"context"
	"time"
)

// WithSleep has the dashboard's blocking queries wait with sleep, which
// the test controls, rather than a timer.
func WithSleep(o *Options, sleep func(context.Context, time.Duration) bool) { o.sleep = sleep }

// WithGap sets the least time from the start of one blocking query to the
// start of the next: a query answered sooner is followed by a wait.
func WithGap(o *Options, gap time.Duration) { o.gap = gap }
