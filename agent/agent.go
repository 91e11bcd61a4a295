// Package agent runs dropship: it loads the configuration, runs one loop
// per service, and carries out each update as one transaction that either
// completes or leaves the previous release in place.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/trim"
)

// maxErrorBackoff caps the wait after repeated errors (store or lock down).
const maxErrorBackoff = 5 * time.Minute

// Observer is told what the agent does, for metrics. Its methods must
// not block.
type Observer interface {
	Checked(service string, out Outcome)
	Downloaded(service string, bytes int64)
}

// Agent runs every configured service.
type Agent struct {
	cfg      *Config
	runners  []*Runner
	logger   *slog.Logger
	triggers map[string]chan bool // true: forced
	obs      Observer
	// updating counts this agent's updates in progress: memory is
	// given back only while it is zero.
	updating atomic.Int32

	mu     sync.Mutex
	nudges map[string]*nudge // by service
	// ws is the watch of the announcements, which hosts at rest rely on
	// (rest.go).
	ws watchState
}

// New builds the runners of cfg. obs may be nil.
func New(cfg *Config, obs Observer, logger *slog.Logger) (*Agent, error) {
	a := &Agent{cfg: cfg, logger: logger, triggers: map[string]chan bool{}, obs: obs, nudges: map[string]*nudge{}}
	for _, svc := range cfg.Services {
		r, err := NewRunner(cfg, svc, logger)
		if err != nil {
			return nil, err
		}
		r.obs, r.updating = obs, &a.updating
		a.runners = append(a.runners, r)
		a.triggers[svc.Name] = make(chan bool, 1)
	}
	return a, nil
}

// Config is the configuration the agent runs.
func (a *Agent) Config() *Config { return a.cfg }

// Runners returns the runners, one per service.
func (a *Agent) Runners() []*Runner { return a.runners }

// Trigger asks for a check of service now; false if it is unknown. A
// service backing off after errors (its store or Consul down) keeps its
// back-off.
func (a *Agent) Trigger(service string) bool { return a.trigger(service, false) }

// trigger with force skips the error back-off too.
func (a *Agent) trigger(service string, force bool) bool {
	ch, ok := a.triggers[service]
	if !ok {
		return false
	}
	for _, r := range a.runners {
		if r.svc.Name == service {
			r.rest.mark() // whatever asked for it, this check reads the records
		}
	}
	select {
	case ch <- force:
	default:
	}
	return true
}

// Once checks every service once, one after another, and returns an
// error if any check or update failed.
func (a *Agent) Once(ctx context.Context) error {
	var errs []error
	for _, r := range a.runners {
		if c, ok := r.coord.(interface{ AskAtOnce() }); ok {
			c.AskAtOnce() // no later in which to ask for a release (lock/consul)
		}
		out := r.Check(ctx)
		for deadline := time.Now().Add(onceCoordWait); out.Reason == reasonSettle ||
			coordinating(out) && time.Now().Before(deadline); {
			if ctx.Err() != nil {
				break
			}
			// Registered just now: a run from cron waits the few
			// seconds the fleet is given, then decides, rather than
			// exiting without installing every time. So too while the
			// coordinator plans the rollout.
			a.log(r, out)
			sleep(ctx, time.Until(out.Until))
			out = r.Check(ctx)
		}
		if c, ok := r.coord.(interface{ Close() }); ok {
			c.Close() // the coordinator, if this run was it, gives its lock back
		}
		a.log(r, out)
		if out.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.svc.Name, out.Err))
		}
	}
	return errors.Join(errs...)
}

// Run runs every service's loop until ctx ends. An update that has
// switched finishes its after hooks before Run returns. With no services
// it waits for ctx (a reload may bring some).
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if len(a.runners) == 0 {
		<-ctx.Done()
		return nil
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(trimInterval)
		defer t.Stop()
		trimWhileIdle(ctx, t.C, func() bool { return a.updating.Load() == 0 }, trim.Idle)
	}()
	if w, ok := a.cfg.Fleet.(fleet.Watcher); ok && a.watching() {
		for _, r := range a.runners {
			if r.svc.Watch {
				r.rest.watch = &a.ws // its host may rest on the watch
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watch(ctx, w)
		}()
	}
	for _, r := range a.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.loop(ctx, r)
		}()
		if r.coord != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.followDoc(ctx, r)
			}()
		} else if w, ok := a.cfg.Fleet.(fleet.ServiceWatcher); ok && r.decider != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.follow(ctx, r, w)
			}()
		}
	}
	wg.Wait()
	for _, r := range a.runners {
		// A coordinator decides with this config's policy: it gives its
		// lock back, and another agent (or this one, reloaded) takes over.
		if c, ok := r.coord.(interface{ Close() }); ok {
			c.Close()
		}
	}
	return nil
}

// trimInterval is how often an idle agent gives free memory back.
const trimInterval = 30 * time.Second

// trimWhileIdle gives memory back to the system (free: the heap's free
// pages and the program's code not in use, see trim.Idle) at each tick
// when idle says no update runs. Between updates the agent only checks,
// and the Go runtime otherwise keeps what the checks freed for a while; a
// forced collection of its small heap costs a millisecond or two.
func trimWhileIdle(ctx context.Context, tick <-chan time.Time, idle func() bool, free func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if idle() {
				free()
			}
		}
	}
}

func (a *Agent) loop(ctx context.Context, r *Runner) {
	interval := r.svc.CheckInterval
	errs := 0
	// Start spread out, so a fleet restarted at once does not poll at once;
	// a new host with nothing installed yet starts within seconds.
	next := jitter(interval) / 4
	if st, err := LoadState(r.lay.dir, r.svc.Name); err == nil && st.Release == "" {
		next = rand.N(newHostStart)
	}
	for {
		r.setNext(time.Now().Add(next))
		timer := time.NewTimer(next)
	wait:
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case force := <-a.triggers[r.svc.Name]:
			if errs > 0 && !force {
				a.logger.Info("check asked for during the error back-off; it waits (force it on the status socket)",
					"service", r.svc.Name, "next", time.Until(r.Status().NextCheck).Round(time.Second))
				goto wait
			}
			timer.Stop()
		}
		out := r.Check(ctx)
		if ctx.Err() != nil {
			return
		}
		a.log(r, out)
		if out.Result != ResultNoop {
			// Not at rest: the next check reads the records (they may not
			// have heard this one: a report refused, a Consul gone), and
			// the rollout's document is followed again.
			r.rest.mark()
			r.rest.wake()
		}
		if out.Result == ResultInstalled || out.Result == ResultFailed {
			// The agent idles between updates: give the buffers of this
			// one, and the code it ran, back now rather than at the next trim.
			trim.Idle()
		}
		if out.Result == ResultError {
			errs++
			next = min(interval<<min(errs, 10), max(maxErrorBackoff, interval))
			next = jitter(next)
			continue
		}
		errs = 0
		next = jitter(interval)
		if soon, ok := a.nudged(r.svc.Name, out); ok {
			next = min(soon, next)
		}
		if out.rollout {
			next = min(next, r.rolloutWait(out))
		}
		if out.Result == ResultDeferred && !out.Until.IsZero() {
			next = min(next, max(time.Until(out.Until), 10*time.Millisecond))
		}
	}
}

// newHostStart bounds the first check of a service with nothing installed.
const newHostStart = 2 * time.Second

// nudge is a release announced for a service that the store has not
// shown yet (stores may be eventually consistent): the service is looked
// at again soon, a few times, then left to the poll.
type nudge struct {
	checksum string
	tries    int
}

const maxNudgeTries = 4 // looks after 1, 2, 4 and 8 s

func (a *Agent) watching() bool {
	for _, r := range a.runners {
		if r.svc.Watch {
			return true
		}
	}
	return false
}

// watch turns the fleet's announcements into checks of the services that
// watch. The announcement is a hint: the check still stats the store and
// verifies the bytes, and polling stays the fallback.
func (a *Agent) watch(ctx context.Context, w fleet.Watcher) {
	byName := map[string]*Runner{}
	for _, r := range a.runners {
		if r.svc.Watch {
			byName[r.svc.Name] = r
		}
	}
	changed := func(p fleet.Published) {
		r := byName[p.Service]
		if r == nil || (p.Checksum != "" && p.Checksum == r.Status().Checksum) {
			return
		}
		a.logger.Info("release announced; checking now", "service", p.Service, "checksum", p.Checksum,
			"publisher", p.Publisher, "published", p.Time)
		a.mu.Lock()
		a.nudges[p.Service] = &nudge{checksum: p.Checksum}
		a.mu.Unlock()
		a.Trigger(p.Service)
	}
	var names []string
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	records := func(service string) {
		if byName[service] == nil {
			return
		}
		a.logger.Info("the fleet's records changed; checking now", "service", service)
		a.Trigger(service)
	}
	w.WatchPublished(ctx, fleet.Watch{
		Changed:  changed,
		Records:  records,
		Services: names,
		Refused: func(service string) {
			if r := byName[service]; r != nil {
				r.rest.refuse()
				a.logger.Warn("this agent's Consul token may not write the nudge of the fleet's records (a token of an older `dropship fleet acl-policy agent`?): nor, likely, may its peers', whose breakers would not reach a host at rest; the host reads its records at every check",
					"service", service)
			}
		},
		Up: func() {
			a.ws.answered()
			a.logger.Info("watching for announced releases", "services", len(byName))
		},
		Down: func(err error) {
			a.ws.down()
			a.logger.Warn("the watch for announced releases stopped answering; polling meanwhile", "error", err)
		},
	})
}

// nudged says, after a check, when to look again for an announced release
// the check did not find.
func (a *Agent) nudged(service string, out Outcome) (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.nudges[service]
	if n == nil {
		return 0, false
	}
	if n.checksum == "" || out.Checksum == n.checksum {
		delete(a.nudges, service)
		return 0, false
	}
	if n.tries >= maxNudgeTries {
		a.logger.Info("announced release not in the store; leaving it to the poll", "service", service,
			"announced", n.checksum, "store", out.Checksum)
		delete(a.nudges, service)
		return 0, false
	}
	n.tries++
	return time.Second << (n.tries - 1), true
}

// jitter returns d ± 10%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread))
}

func (a *Agent) log(r *Runner, out Outcome) {
	attrs := []any{"service", r.svc.Name, "result", out.Result, "checksum", out.Checksum}
	if out.Release != "" {
		attrs = append(attrs, "release", out.Release)
	}
	switch {
	case out.Err != nil:
		a.logger.Error("check", append(attrs, "phase", out.Phase, "error", out.Err)...)
	case out.Result == ResultSkipped || out.Result == ResultDeferred:
		a.logger.Info("check", append(attrs, "reason", out.Reason)...)
	case out.Result == ResultNoop:
		a.logger.Debug("check", attrs...)
	default:
		a.logger.Info("check", attrs...)
	}
}
