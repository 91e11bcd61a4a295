// Package dashboard serves the fleet on one page: every service, the
// release on each host, holds, breakers, the audit log, kept live over
// Server-Sent Events fed by Consul blocking queries. Pages are rendered on
// the server from embedded templates: no CDN, no build step, and they
// work offline and without JavaScript (live updates and actions need it).
//
// It is read-only unless built with an Actor and tokens: then hold,
// resume and clear are accepted as POSTs carrying a bearer token (no
// cookies, so another site cannot make a browser act), and each is
// written to the audit log with the token's identity.
package dashboard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/blocking"
)

// Store is what the dashboard reads: fleet/consul's Fleet.
type Store interface {
	Services(ctx context.Context) ([]string, error)
	Status(ctx context.Context, service string) (fleet.Status, error)
	Log(ctx context.Context, service string, since uint64) ([]fleet.Event, uint64, error)
	// Wait blocks until a record changes after index (or a while passes)
	// and returns the new index.
	Wait(ctx context.Context, index uint64) (uint64, error)
}

// Actor is what the dashboard changes when actions are allowed.
type Actor interface {
	Hold(ctx context.Context, service string, h fleet.Hold) error
	Resume(ctx context.Context, service string) error
	Clear(ctx context.Context, service, checksum string) (bool, error)
	Approve(ctx context.Context, service string, a fleet.Approval) error
	SetFreeze(ctx context.Context, service string, f *fleet.Freeze) error
	Record(ctx context.Context, service string, ev fleet.Event) error
}

// Options configure a Server.
type Options struct {
	Store Store
	// Actor and Tokens (token -> identity) allow actions; nil: read-only.
	Actor  Actor
	Tokens map[string]string
	// ReadTokens (token -> identity), when given, are needed to read
	// anything but /healthz and the static assets: the pages show hook
	// output and operators' addresses. An action token reads too.
	ReadTokens map[string]string
	Logger     *slog.Logger
	// Events is how many of each service's newest events are kept in
	// memory and shown (default 200).
	Events int
	// Debounce gathers a burst of writes into one read (default 50ms).
	Debounce time.Duration
	// MaxStreams bounds the event streams open at once (default 256):
	// each holds a connection and renders its page on every change. One
	// more is answered 503.
	MaxStreams int
	// MaxStreamsPerClient bounds the event streams of one client (its
	// identity when it gave a token, else its address; default 8), so
	// that one client cannot take every stream and lock the others out.
	MaxStreamsPerClient int
	// StreamWriteTimeout is how long a write to an event stream may take
	// (default 30s): a client that stops reading is let go, not kept
	// with its goroutine and buffers for as long as it stays connected.
	StreamWriteTimeout time.Duration
	// Policies are the rollout blocks of the services in the config the
	// dashboard runs with: their waves are shown.
	Policies map[string]*rollout.Policy

	sleep func(context.Context, time.Duration) bool // tests: the blocking queries' waits
	gap   time.Duration                             // tests: the least time between two; 0: watchGap
}

// Server watches the fleet and serves it.
type Server struct {
	store      Store
	actor      Actor
	tokens     map[string]string
	log        *slog.Logger
	keep       int
	debounce   time.Duration
	deciders   map[string]*rollout.Decider
	streams    chan struct{} // a token per open event stream
	readTokens map[string]string
	perMax     int
	writeMax   time.Duration
	sleep      func(context.Context, time.Duration) bool // the blocking queries' waits; nil: a timer
	gap        time.Duration                             // the least time from one to the next

	snap    atomic.Pointer[Fleet]
	failing atomic.Bool // a read of the fleet failed and none succeeded since

	mu      sync.Mutex
	events  map[string][]fleet.Event      // newest last, at most keep
	logging map[string]context.CancelFunc // services whose log is followed: how to stop
	subs    map[chan struct{}]struct{}
	perOpen map[string]int // open event streams by client
	changed chan struct{}  // a log follower saw new events
}

// New returns a server; Run feeds it.
func New(o Options) (*Server, error) {
	if o.Store == nil {
		return nil, errors.New("dashboard: no fleet store")
	}
	if o.Actor != nil && len(o.Tokens) == 0 {
		return nil, errors.New("dashboard: actions need at least one token")
	}
	s := &Server{store: o.Store, actor: o.Actor, tokens: o.Tokens, log: o.Logger, keep: o.Events, debounce: o.Debounce,
		events: map[string][]fleet.Event{}, logging: map[string]context.CancelFunc{}, subs: map[chan struct{}]struct{}{},
		changed: make(chan struct{}, 1), deciders: map[string]*rollout.Decider{}, sleep: o.sleep, gap: o.gap,
		readTokens: o.ReadTokens, perMax: o.MaxStreamsPerClient, perOpen: map[string]int{}}
	for name, p := range o.Policies {
		if p != nil {
			s.deciders[name] = rollout.NewDecider(p)
		}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.keep <= 0 {
		s.keep = 200
	}
	if s.debounce <= 0 {
		s.debounce = 50 * time.Millisecond
	}
	if s.gap <= 0 {
		s.gap = watchGap
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 256
	}
	s.streams = make(chan struct{}, o.MaxStreams)
	if s.perMax <= 0 {
		s.perMax = 8
	}
	if s.writeMax = o.StreamWriteTimeout; s.writeMax <= 0 {
		s.writeMax = 30 * time.Second
	}
	s.snap.Store(&Fleet{Services: []Service{}, Error: "reading the fleet…"})
	return s, nil
}

// Fleet is the body of GET /api/v1/fleet.
type Fleet struct {
	Generated time.Time `json:"generated"`
	Index     uint64    `json:"index"` // Consul's, of the records shown
	Services  []Service `json:"services"`
	// Error: the last read failed; what is shown is as of Generated.
	Error string `json:"error,omitempty"`
}

// Service is one service as the page shows it; the body of
// GET /api/v1/services/NAME (with Events).
type Service struct {
	Name string `json:"name"`
	// Newest is the checksum rolling out: the newest published or
	// attempted anywhere.
	Newest   string             `json:"newest_checksum,omitempty"`
	OnNewest int                `json:"hosts_on_newest"`
	Groups   []Group            `json:"groups"`
	Nodes    []fleet.NodeStatus `json:"nodes"`
	Updating []string           `json:"updating"` // hosts holding a slot now
	Limit    int                `json:"limit"`
	Hold     *fleet.Hold        `json:"hold,omitempty"`
	Breakers []fleet.Breaker    `json:"breakers"`
	Failed   []string           `json:"failed"` // hosts whose last attempt failed
	// Rollouts: the freeze, the pins, and, for a service with a rollout
	// block in the dashboard's config, the waves of the release rolling
	// out and what each waits on.
	Freeze *fleet.Freeze `json:"freeze,omitempty"`
	Pins   []fleet.Pin   `json:"pins,omitempty"`
	// Ignored: operators' records the agents do not act on (unsigned
	// with operator_keys set), and why.
	Ignored   []fleet.Ignored     `json:"ignored,omitempty"`
	RolloutOf string              `json:"rollout_of,omitempty"`
	Waves     []rollout.WaveState `json:"waves,omitempty"`
	Events    []fleet.Event       `json:"events,omitempty"`
}

// Group is the hosts on one checksum.
type Group struct {
	Checksum string   `json:"checksum"`
	Hosts    []string `json:"hosts"`
	Newest   bool     `json:"newest"`
}

// State says in a word where the service stands.
func (s Service) State() string {
	switch {
	case s.Hold != nil:
		return "on hold"
	case s.Freeze != nil:
		return "frozen"
	case len(s.Breakers) > 0:
		return "breaker tripped"
	case len(s.Failed) > 0:
		return "failed"
	case len(s.Updating) > 0 || (s.Newest != "" && s.OnNewest < len(s.Nodes)):
		return "rolling out"
	}
	return "steady"
}

// Snapshot returns the fleet as last read.
func (s *Server) Snapshot() *Fleet { return s.snap.Load() }

// Run watches the fleet until ctx ends: one blocking query on the whole
// prefix, a read of every service's records after each change, and a
// follower per service for its audit log.
func (s *Server) Run(ctx context.Context) error {
	var idx uint64
	s.refresh(ctx, 0)
	wake := make(chan uint64, 1)
	// One warning per outage, not one per retry: the snapshot says the
	// read failed meanwhile.
	loop := s.loop(func(err error) { s.fail(err) }, nil)
	go loop.Run(ctx, 0, func(ctx context.Context, i uint64) (uint64, error) {
		n, err := s.store.Wait(ctx, i)
		if err != nil {
			return i, err
		}
		if next := blocking.Next(i, n); next != i {
			// The newest index replaces one not taken yet. Not a blocking
			// receive: the refresh loop may take it between a full
			// buffer seen and the receive, which would block this loop
			// for good (the dashboard no longer following changes). Only
			// this loop sends, so once drained the send cannot block.
			select {
			case <-wake:
			default:
			}
			wake <- next
		}
		return n, nil
	})
	for {
		// A rollout also moves with the clock (a bake ends, a window
		// opens): read again then, though Consul did not change.
		timer := time.NewTimer(time.Until(s.Snapshot().nextTime()))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case idx = <-wake:
		case <-s.changed:
		case <-timer.C:
		}
		timer.Stop()
		// Writes come in bursts (slot, status, event): read once after.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.debounce):
		}
		s.refresh(ctx, idx)
	}
}

// refresh reads every service and publishes a new snapshot.
func (s *Server) refresh(ctx context.Context, idx uint64) {
	names, err := s.store.Services(ctx)
	if err != nil {
		s.fail(err)
		return
	}
	f := &Fleet{Generated: time.Now().UTC(), Index: idx, Services: make([]Service, 0, len(names))}
	s.unfollow(names)
	for _, name := range names {
		st, err := s.store.Status(ctx, name)
		if err != nil {
			s.fail(err)
			return
		}
		s.follow(ctx, name)
		f.Services = append(f.Services, s.summarize(ctx, st))
	}
	s.failing.Store(false)
	s.snap.Store(f)
	s.notify()
}

func (s *Server) fail(err error) {
	if !s.failing.Swap(true) { // one warning per outage, whichever read meets it first
		s.log.Warn("could not read the fleet", "error", err)
	}
	old := s.snap.Load()
	f := *old
	f.Error = err.Error()
	s.snap.Store(&f)
	s.notify()
}

// unfollow stops the log readers of services no longer in the fleet, and
// forgets their events: names come and go (anyone who can write the
// prefix can make up thousands), and each reader holds a blocking query.
func (s *Server) unfollow(names []string) {
	keep := make(map[string]bool, len(names))
	for _, n := range names {
		keep[n] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, stop := range s.logging {
		if !keep[name] {
			stop()
			delete(s.logging, name)
			delete(s.events, name)
		}
	}
}

// follow starts, once per service, a blocking reader of its audit log.
func (s *Server) follow(ctx context.Context, service string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logging[service] != nil {
		return
	}
	ctx, stop := context.WithCancel(ctx)
	s.logging[service] = stop
	loop := s.loop(func(err error) {
		s.log.Warn("could not read the audit log; retrying with back-off", "service", service, "error", err)
	}, nil)
	go loop.Run(ctx, 0, func(ctx context.Context, idx uint64) (uint64, error) {
		evs, n, err := s.store.Log(ctx, service, idx)
		if err != nil {
			return idx, err
		}
		if idx == 0 || n < idx { // a full read (Log starts over when the index went back)
			s.mu.Lock()
			if ctx.Err() == nil {
				s.events[service] = nil
			}
			s.mu.Unlock()
		}
		if len(evs) == 0 {
			return n, nil
		}
		for i := range evs {
			evs[i] = clipEvent(evs[i])
		}
		s.mu.Lock()
		if ctx.Err() != nil { // unfollowed meanwhile: keep nothing
			s.mu.Unlock()
			return n, nil
		}
		all := append(s.events[service], evs...)
		if len(all) > s.keep {
			all = append([]fleet.Event(nil), all[len(all)-s.keep:]...)
		}
		s.events[service] = all
		s.mu.Unlock()
		select {
		case s.changed <- struct{}{}:
		default:
		}
		return n, nil
	})
}

// loop is how the dashboard follows a blocking query: the rules of the
// agent's watch, with back-off up to 30 s while Consul is away, and
// queries a quarter of a second apart rather than a second: one
// dashboard is no thundering herd, and a page should show an install in
// a blink, not a second later (50 hosts changing without pause: about 4
// queries a second).
func (s *Server) loop(down func(error), up func()) blocking.Loop {
	return blocking.Loop{MinGap: s.gap, Down: down, Up: up, Sleep: s.sleep}
}

const watchGap = 250 * time.Millisecond

// Events returns the newest events of service, newest first.
func (s *Server) Events(service string) []fleet.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	evs := s.events[service]
	out := make([]fleet.Event, len(evs))
	for i, ev := range evs {
		out[len(evs)-1-i] = ev
	}
	return out
}

// summarize groups a service's hosts by checksum and finds the one
// rolling out.
func (s *Server) summarize(ctx context.Context, st fleet.Status) Service {
	shown := clipStatus(st) // the decider reads the records as they are
	out := Service{Name: st.Service, Nodes: shown.Nodes, Updating: clipAll(st.Holders), Limit: st.Limit, Hold: shown.Hold,
		Breakers: shown.Breakers, Groups: []Group{}, Failed: []string{}, Freeze: shown.Freeze, Pins: shown.Pins, Ignored: shown.Ignored}
	if d := s.deciders[st.Service]; d != nil {
		if out.RolloutOf = rollout.Rolling(st); out.RolloutOf != "" {
			// Describe may ask the gates: bounded, so a slow Prometheus
			// does not hold the page back.
			gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			out.Waves = clipWaves(d.Describe(gctx, out.RolloutOf, st, time.Now()))
			cancel()
			out.RolloutOf = fleet.Clip(out.RolloutOf)
		}
	}
	if out.Nodes == nil {
		out.Nodes = []fleet.NodeStatus{}
	}
	if out.Updating == nil {
		out.Updating = []string{}
	}
	if out.Breakers == nil {
		out.Breakers = []fleet.Breaker{}
	}
	var at time.Time
	for _, n := range shown.Nodes {
		sum := n.Attempt
		if sum == "" {
			sum = n.Checksum
		}
		if sum != "" && n.Time.After(at) {
			out.Newest, at = sum, n.Time
		}
		if n.Result == "failed" {
			out.Failed = append(out.Failed, n.Node)
		}
	}
	s.mu.Lock()
	for _, ev := range s.events[st.Service] {
		if ev.Kind == fleet.EventPublish && ev.Checksum != "" && ev.Time.After(at) {
			out.Newest, at = ev.Checksum, ev.Time
		}
	}
	s.mu.Unlock()
	groups := map[string][]string{}
	for _, n := range shown.Nodes {
		groups[n.Checksum] = append(groups[n.Checksum], n.Node)
		if n.Checksum == out.Newest {
			out.OnNewest++
		}
	}
	for sum, hosts := range groups {
		out.Groups = append(out.Groups, Group{Checksum: sum, Hosts: hosts, Newest: sum == out.Newest})
	}
	sort.Slice(out.Groups, func(i, j int) bool {
		a, b := out.Groups[i], out.Groups[j]
		if len(a.Hosts) != len(b.Hosts) {
			return len(a.Hosts) > len(b.Hosts)
		}
		return a.Checksum < b.Checksum
	})
	return out
}

// subscribe returns a channel told (without blocking) of every new
// snapshot, and its cancel.
func (s *Server) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

func (s *Server) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // it has one pending: it will read the newest
		}
	}
}

// service returns the named service of the snapshot.
// nextTime is when a rollout shown waits until (the earliest), or an hour
// from now.
func (f *Fleet) nextTime() time.Time {
	next := time.Now().Add(time.Hour)
	for _, svc := range f.Services {
		for _, w := range svc.Waves {
			if !w.Until.IsZero() && w.Until.Before(next) {
				next = w.Until
			}
		}
	}
	return next
}

func (f *Fleet) service(name string) (Service, bool) {
	for _, s := range f.Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	if sum == "" {
		return "none"
	}
	return sum
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// clipStatus bounds the text of records as read. Agents clip what they
// write, but anyone who can write the prefix can write half a megabyte
// into a field, and every open page would get it on every change.
func clipStatus(st fleet.Status) fleet.Status {
	c := fleet.Clip
	nodes := make([]fleet.NodeStatus, len(st.Nodes))
	for i, n := range st.Nodes {
		n.Node, n.Checksum, n.Release, n.Result, n.Attempt, n.Phase, n.Error, n.Policy =
			c(n.Node), c(n.Checksum), c(n.Release), c(n.Result), c(n.Attempt), c(n.Phase), c(n.Error), c(n.Policy)
		n.Reason = c(n.Reason)
		if len(n.Tags) > 64 {
			n.Tags = n.Tags[:64]
		}
		tags := make([]string, len(n.Tags))
		for j, t := range n.Tags {
			tags[j] = c(t)
		}
		n.Tags = tags
		nodes[i] = n
	}
	st.Nodes = nodes
	breakers := make([]fleet.Breaker, len(st.Breakers))
	for i, b := range st.Breakers {
		b.Checksum, b.Node, b.Phase, b.Error = c(b.Checksum), c(b.Node), c(b.Phase), c(b.Error)
		breakers[i] = b
	}
	st.Breakers = breakers
	if h := st.Hold; h != nil {
		st.Hold = &fleet.Hold{Reason: c(h.Reason), Who: c(h.Who), Time: h.Time}
	}
	if f := st.Freeze; f != nil {
		st.Freeze = &fleet.Freeze{Reason: c(f.Reason), Who: c(f.Who), Time: f.Time, Until: f.Until}
	}
	pins := make([]fleet.Pin, len(st.Pins))
	for i, p := range st.Pins {
		p.Nodes, p.Target, p.Who = c(p.Nodes), c(p.Target), c(p.Who)
		pins[i] = p
	}
	st.Pins = pins
	ignored := make([]fleet.Ignored, len(st.Ignored))
	for i, ig := range st.Ignored {
		ignored[i] = fleet.Ignored{Key: c(ig.Key), Reason: c(ig.Reason)}
	}
	st.Ignored = ignored
	return st
}

func clipEvent(ev fleet.Event) fleet.Event {
	c := fleet.Clip
	ev.Kind, ev.Who, ev.Via, ev.From, ev.Node, ev.Checksum, ev.Release, ev.Phase, ev.Detail, ev.Writer =
		c(ev.Kind), c(ev.Who), c(ev.Via), c(ev.From), c(ev.Node), c(ev.Checksum), c(ev.Release), c(ev.Phase), c(ev.Detail), c(ev.Writer)
	return ev
}

func clipAll(ss []string) []string {
	if ss == nil {
		return nil
	}
	out := make([]string, len(ss))
	for i, v := range ss {
		out[i] = fleet.Clip(v)
	}
	return out
}

func clipWaves(ws []rollout.WaveState) []rollout.WaveState {
	for i, w := range ws {
		w.Name, w.Reason = fleet.Clip(w.Name), fleet.Clip(w.Reason)
		w.Nodes, w.Done, w.Failed, w.Running, w.Waiting = clipAll(w.Nodes), clipAll(w.Done), clipAll(w.Failed), clipAll(w.Running), clipAll(w.Waiting)
		ws[i] = w
	}
	return ws
}
