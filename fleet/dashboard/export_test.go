package dashboard

import (
	"context"
	"time"
)

// WithSleep has the dashboard's blocking queries wait with sleep, which
// the test controls, rather than a timer.
func WithSleep(o *Options, sleep func(context.Context, time.Duration) bool) { o.sleep = sleep }
