// Package consul keeps a service's update slots in Consul as grants.
//
// Layout under <prefix>/_slots/<service>/:
//
//	grant/<node>   one per waiting or updating host, held by that host's
//	               session (behavior "delete"): {"state":"want"} while it
//	               waits, {"state":"granted"} once the coordinator let it
//	               start. A host that dies loses its key, and its slot,
//	               when its session expires.
//	coord          held by the coordinator's session: who coordinates,
//	               since when, and the limit it applies.
//
// A waiting host makes one blocking query at a time, on its own key: a
// grant to another host never wakes it. The coordinator is whichever
// waiting agent took the coord key first; it reads the grant folder (at
// most once per ListGap), turns the oldest wants into grants while fewer
// than the limit are granted, and watches each grant it made so that the
// next host starts as soon as one finishes. Every grant is written in one
// transaction with a check that the coordinator still holds the coord
// key: a coordinator that lost its lock (its session expired) can grant
// nothing, and a new one counts the live grants before it grants any.
package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/blocking"
	"github.com/dropshipd/dropship/lock"
)

// States of a grant key.
const (
	StateWant    = "want"
	StateGranted = "granted"
	// StateMoved: the coordinator ended the wait, the rollout moved on
	// (another release, a breaker, a pin, a wave that no longer opens by
	// itself): the host's next check decides afresh.
	StateMoved = "moved"
)

// Grant is the value of a host's grant key.
type Grant struct {
	Node  string    `json:"node"`
	State string    `json:"state"`
	Limit int       `json:"limit"`        // the host's concurrency
	Since time.Time `json:"since"`        // when it started waiting
	By    string    `json:"by,omitempty"` // the coordinator that granted it
	At    time.Time `json:"at,omitzero"`  // when
	// Session is the host's: the coordinator takes the older
	// dropship's semaphore slot with it too (see legacy.go).
	Session string `json:"session,omitempty"`
	// Checksum is the release the host waits to install, when its
	// service has a rollout: it is granted only while its wave is open.
	Checksum string `json:"checksum,omitempty"`
}

// Doc is the value of the coord key.
type Doc struct {
	Node  string    `json:"node"`
	Since time.Time `json:"since"`
	Limit int       `json:"limit"`
}

// Tunables; tests and the bench shorten some.
var (
	// ListGap is the least time between two reads of the grant folder
	// by the coordinator: the only read whose size grows with the fleet.
	ListGap = time.Second
	// CheckCoordinator is how long a waiting host blocks on its key
	// before it looks whether a coordinator is still there (up to half
	// as long again, at random: inLineCheck).
	CheckCoordinator = 10 * time.Second
	// A host in line for a wave of a rollout looks for the coordinator
	// every inLineChecks × CheckCoordinator (see Acquire).
	// ElectionSpread bounds the random wait of a host that found no
	// coordinator before it looks again and tries to become it.
	ElectionSpread = 200 * time.Millisecond
	// IdleResign is how long a coordinator with nobody waiting and
	// nothing granted keeps its lock before giving it up.
	IdleResign = 30 * time.Second
)

// inLineChecks: see CheckCoordinator.
const inLineChecks = 6

// inLineCheck is how long a host in line waits on its key before it
// looks for the coordinator, for a check of d: d to 1.5 d, at random.
func inLineCheck(d time.Duration) time.Duration {
	return d + rand.N(max(d/2, 1))
}

// SlotsPrefix, GrantPrefix, GrantKey and CoordKey name the keys of
// service under prefix. They live outside the service's own folder, which
// agents with a rollout follow: the traffic of grants wakes none of them.
func SlotsPrefix(prefix, service string) string { return prefix + "/_slots/" + service + "/" }
func GrantPrefix(prefix, service string) string { return SlotsPrefix(prefix, service) + "grant/" }
func GrantKey(prefix, service, node string) string {
	return GrantPrefix(prefix, service) + node
}
func CoordKey(prefix, service string) string { return SlotsPrefix(prefix, service) + "coord" }

// Slots is one host's claim on the update slots of one service.
type Slots struct {
	Client  *api.Client
	Prefix  string
	Service string
	Node    string
	TTL     time.Duration
	Limit   int
	Logger  *slog.Logger
	// Waiting, if set, is called once this host's wait is written: from
	// then on a free slot can be granted to it (bench-scale measures the
	// hand-off from it).
	Waiting func()

	mu      sync.Mutex
	held    *session // while waiting or holding
	coord   *coordinator
	planner lock.Planner
	want    string // the release the next Acquire waits for
	// seen is when this host last saw a coordinator alive (its session
	// on the rollout's document): it need not look again for a while.
	seen time.Time
	// docHeld: the document, as this host's follower (WaitRollout) read
	// it last, is held by a coordinator's session. Its release wakes the
	// follower, so it stays true only while a coordinator lives.
	docHeld bool
	// following counts the follower's queries in flight; followed is
	// when the last ended. docHeld counts only while the follower runs.
	following int
	followed  time.Time
	// looked: the keys of Rollout as a read of the host's records
	// brought them (Looked), and when.
	looked   api.KVPairs
	lookedAt time.Time
	// lookedDoc: the document as this host's last look at the rollout
	// read it, which the follower takes when the host leaves the line
	// rather than asking Consul again (WaitRollout).
	lookedDoc *api.KVPair
	// followFails counts the failures of the follower's reads;
	// lookedFails is its count when the keys of looked were read. A look
	// whose keys were read before the follower's last failure may be of
	// a Consul that has gone since: its document is not kept.
	followFails, lookedFails uint64
	// electing: an election waits its random time in the background.
	electing bool
	// deferred: the release this host found not asked for and left to
	// the pick to ask for (asksAtOnce), first at deferredAt.
	deferred      string
	deferredAt    time.Time
	deferredIndex uint64 // the release key's index at that first look
	// askAlways: this host asks at once for any release it finds not
	// asked for, picked or not (AskAtOnce).
	askAlways bool
	// starting counts the startCoordinator calls in flight: until they
	// end, the lock held by this host's place in line is theirs to move.
	starting int
	// closed: Close ran. An election still waiting in the background
	// (its context outlives the check that started it) takes no lock:
	// the agent stops, or runs another config (a reload).
	closed bool
}

// New returns node's claim on the limit slots of service.
func New(c *api.Client, prefix, service, node string, ttl time.Duration, limit int) *Slots {
	return &Slots{Client: c, Prefix: prefix, Service: service, Node: node, TTL: ttl, Limit: max(limit, 1)}
}

func (s *Slots) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Slots) unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s (%s/%s): %v", lock.ErrUnavailable, what, s.Prefix, s.Service, err)
}

// session is a Consul session renewed until it is ended or lost.
type session struct {
	id   string
	lost chan struct{} // closed when Consul no longer knows it
	stop chan struct{}
	done chan struct{}
	// renewed is when the last renewal that Consul answered was sent
	// (the creation's, at first): Consul ends the session no sooner than
	// twice its TTL after.
	mu      sync.Mutex
	renewed time.Time
}

// fresh says whether the session was renewed less than ttl ago, by this
// host's monotonic clock (which runs on while the process is stopped).
func (se *session) fresh(ttl time.Duration) bool {
	se.mu.Lock()
	defer se.mu.Unlock()
	return time.Since(se.renewed) < ttl
}

// newSession creates a session whose keys are deleted (behavior delete)
// or released with it, and renews it every TTL/2 (the first time
// sooner: firstRenewal).
func newSession(ctx context.Context, c *api.Client, name string, ttl time.Duration, behavior string) (*session, error) {
	sent := time.Now()
	id, _, err := c.Session().Create(&api.SessionEntry{
		Name: name, TTL: ttl.String(), Behavior: behavior,
		// A key of a dead session may be taken again at once: the
		// coordinator's check of its own lock in every grant, not
		// Consul's lock delay, is what keeps two coordinators apart.
		LockDelay: time.Millisecond,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	se := &session{id: id, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{}), renewed: sent}
	go se.renew(c, ttl)
	return se, nil
}

// firstRenewal is when a session is first renewed: at a random moment
// between a quarter and half of its TTL, then every half TTL. A fleet
// that gets in line at a release creates its sessions together; renewed
// in step, they would all reach Consul in the same instant, every half
// TTL, while it grants.
func firstRenewal(ttl time.Duration) time.Duration {
	return ttl/4 + rand.N(max(ttl/4, 1))
}

func (se *session) renew(c *api.Client, ttl time.Duration) {
	defer close(se.done)
	t := time.NewTimer(firstRenewal(ttl))
	defer t.Stop()
	deadline := time.Now().Add(ttl)
	for {
		select {
		case <-se.stop:
			return
		case <-t.C:
		}
		t.Reset(ttl / 2)
		sent := time.Now()
		ent, _, err := c.Session().Renew(se.id, nil)
		switch {
		case err == nil && ent == nil:
			close(se.lost) // expired
			return
		case err == nil:
			deadline = time.Now().Add(ttl)
			se.mu.Lock()
			se.renewed = sent
			se.mu.Unlock()
		case time.Now().After(deadline):
			close(se.lost) // Consul unreachable for a whole TTL
			return
		}
	}
}

// end stops renewing and destroys the session (its keys go with it).
func (se *session) end(c *api.Client) error {
	close(se.stop)
	<-se.done
	_, err := c.Session().Destroy(se.id, nil)
	return err
}

// abandon stops renewing without destroying: the session expires by its
// TTL, as a host's that was killed. Tests only.
func (se *session) abandon() {
	close(se.stop)
	<-se.done
}

// Acquire writes this host's want and blocks (one blocking query on its
// own key) until the coordinator grants it, or ctx ends. When no agent
// coordinates the service, this one starts to.
func (s *Slots) Acquire(ctx context.Context) (<-chan struct{}, error) {
	s.mu.Lock()
	sum := s.want
	s.mu.Unlock()
	key := GrantKey(s.Prefix, s.Service, s.Node)
	se, err := newSession(ctx, s.Client, "dropship "+s.Node+" "+s.Service, s.TTL, api.SessionBehaviorDelete)
	if err != nil {
		return nil, s.unavailable("create a session to wait for a slot", err)
	}
	fail := func(err error) (<-chan struct{}, error) {
		se.end(s.Client)
		return nil, err
	}
	want, _ := json.Marshal(Grant{Node: s.Node, State: StateWant, Limit: s.Limit, Since: time.Now().UTC(), Session: se.id, Checksum: sum})
	// The key may still be held by this host's previous process, whose
	// session outlives it by its TTL: wait for it.
	var index uint64
	for {
		// The wait written and read back in one request: its index is
		// where the blocking query on it starts.
		ok, resp, _, err := s.Client.Txn().Txn(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: key, Value: want, Session: se.id}},
			{KV: &api.KVTxnOp{Verb: api.KVGet, Key: key}},
		}, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fail(s.unavailable("write the wait for a slot", err))
		}
		if ok {
			if len(resp.Results) > 1 && resp.Results[1].KV != nil {
				index = resp.Results[1].KV.ModifyIndex
			}
			break
		}
		_, meta, err := s.Client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: s.TTL}).WithContext(ctx))
		if err != nil {
			return fail(waitErr(ctx, s.unavailable("wait for an older session's key", err)))
		}
		index = meta.LastIndex
	}
	s.mu.Lock()
	s.held = se
	s.mu.Unlock()
	if s.Waiting != nil {
		s.Waiting()
	}
	s.mu.Lock()
	electing := s.electing
	s.mu.Unlock()
	if !electing { // else this host's look at the rollout just started an election
		s.ensureCoordinator(ctx)
	}
	for {
		check := CheckCoordinator
		s.mu.Lock()
		followed := s.following > 0 && s.docHeld
		s.mu.Unlock()
		if s.planner != nil && sum != "" && followed {
			// In line for a wave of a rollout, the coordinator's document
			// seen held, and followed now: its release says at once
			// when the coordinator is gone (WaitRollout); this look is
			// the backstop. Not when nothing follows it (an agent at
			// rest paused its follower): the document seen held then
			// says nothing of the coordinator now.
			check = inLineChecks * CheckCoordinator
		}
		// Hosts that got in line together would all look for the
		// coordinator in the same instant, every check: spread them.
		check = inLineCheck(check)
		kv, meta, err := s.Client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: check}).WithContext(ctx))
		if err != nil {
			s.Release(context.WithoutCancel(ctx))
			return nil, waitErr(ctx, s.unavailable("wait for a slot", err))
		}
		if kv == nil || kv.Session != se.id {
			s.Release(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("%w: the wait for a slot of %s ended: this host's session expired", lock.ErrUnavailable, s.Service)
		}
		var g Grant
		if json.Unmarshal(kv.Value, &g) == nil && g.State == StateGranted {
			return se.lost, nil
		}
		if g.State == StateMoved {
			s.Release(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("%w: no longer waiting for a slot to install %s", lock.ErrMoved, sum)
		}
		if meta.LastIndex == index {
			s.ensureCoordinator(ctx) // a long quiet: is somebody still coordinating?
		}
		index = meta.LastIndex
	}
}

// Held says whether the slot Acquire gave is still this host's, by its
// own clock: not lost, and its session renewed less than a TTL ago
// (Consul ends it no sooner than twice its TTL after). The channel
// Acquire returned says when the slot is lost, but only once the
// renewal notices: an agent stopped past its TTL (SIGSTOP, a frozen VM)
// and resumed would take its next step first, while the coordinator has
// given its slot to another host. Asked before each step that changes
// what is installed.
func (s *Slots) Held() bool {
	s.mu.Lock()
	se := s.held
	s.mu.Unlock()
	if se == nil {
		return false
	}
	select {
	case <-se.lost:
		return false
	default:
	}
	return se.fresh(s.TTL)
}

func waitErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("waiting for a slot: %w", context.Cause(ctx))
	}
	return err
}

// Release gives the slot (or the place in line) back: the session ends
// and its key with it, so the coordinator grants the next host at once.
func (s *Slots) Release(context.Context) error {
	s.mu.Lock()
	se := s.held
	s.held = nil
	s.mu.Unlock()
	if se == nil {
		return nil
	}
	if err := se.end(s.Client); err != nil {
		return s.unavailable("release the slot", err)
	}
	return nil
}

// Kill drops this host's session without destroying it, and stops its
// coordinator the same way, as `kill -9` would. Tests only.
func (s *Slots) Kill() {
	s.mu.Lock()
	se, c := s.held, s.coord
	s.held, s.coord = nil, nil
	s.mu.Unlock()
	if se != nil {
		se.abandon()
	}
	if c != nil {
		c.kill()
	}
}

// Close stops this agent's coordinator, if it runs one, giving its lock
// back, and keeps this agent from becoming one again (an election still
// waiting in the background included). Waiting hosts elect another.
func (s *Slots) Close() {
	s.mu.Lock()
	s.closed = true
	c := s.coord
	s.mu.Unlock()
	if c != nil {
		c.cancel()
		<-c.done
	}
}

// Coordinating says whether this agent coordinates the service now.
func (s *Slots) Coordinating() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.coord != nil
}

// ensureCoordinator starts a coordinator here when the service has none
// (no coord key, or one no session holds).
func (s *Slots) ensureCoordinator(ctx context.Context) {
	s.elect(ctx, true, ElectionSpread)
}

// elect becomes the coordinator if nobody is: look (unless the caller
// just did), wait a random moment up to spread, and look again before
// trying.
func (s *Slots) elect(ctx context.Context, look bool, spread time.Duration) {
	alive := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.coord != nil || s.followedHeld()
	}
	s.mu.Lock()
	running := s.coord != nil || look && (s.followedHeld() || time.Since(s.seen) < seenFor)
	s.mu.Unlock()
	if running {
		return
	}
	free := func() bool {
		kv, _, err := s.Client.KV().Get(CoordKey(s.Prefix, s.Service), (&api.QueryOptions{}).WithContext(ctx))
		return err == nil && (kv == nil || kv.Session == "" || s.stranded(kv.Session))
	}
	if look && !free() {
		return
	}
	// Hosts that start waiting together would all find no coordinator and
	// all try: spread them, and look again first.
	t := time.NewTimer(rand.N(max(spread, time.Millisecond)))
	select {
	case <-ctx.Done():
		t.Stop()
		return
	case <-t.C:
	}
	if spread > 0 {
		s.mu.Lock()
		seen := time.Since(s.seen) < seenFor
		s.mu.Unlock()
		if seen {
			return
		}
	}
	// Without a wait, the caller's look (it just read the key) stands.
	if !alive() && (!look && spread <= 0 || free()) {
		s.startCoordinator()
	}
}

// followedHeld says whether this host's follower of the document (s.mu
// held) runs and saw it held by a coordinator's session last.
func (s *Slots) followedHeld() bool {
	return s.docHeld && (s.following > 0 || time.Since(s.followed) < seenFor)
}

// stranded says whether session, holding the coordinator's lock, is this
// host's place in line with no coordinator here nor one starting: an
// election took the lock with it and could not move it to a
// coordinator's session, nor give it back (Consul did not answer, or
// the process stopped between the two). It lives as long as the host
// waits, and every host sees the lock held: this host takes it again
// (the same session acquires again) and moves it.
func (s *Slots) stranded(session string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held != nil && s.held.id == session && s.coord == nil && s.starting == 0
}

func (s *Slots) startCoordinator() {
	s.mu.Lock()
	closed := s.closed
	s.starting++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.starting--
		s.mu.Unlock()
	}()
	if closed {
		return
	}
	key := CoordKey(s.Prefix, s.Service)
	doc, _ := json.Marshal(Doc{Node: s.Node, Since: time.Now().UTC(), Limit: s.Limit})
	s.mu.Lock()
	mine := s.held
	s.mu.Unlock()
	if mine != nil {
		// The lock tried with the session this host holds already (its
		// place in line): a host that loses it creates no session, and
		// many may try at once when a coordinator dies.
		ok, _, err := s.Client.KV().Acquire(&api.KVPair{Key: key, Value: doc, Session: mine.id}, nil)
		if err != nil || !ok {
			return // another agent was quicker
		}
	}
	se, err := newSession(context.Background(), s.Client, "dropship coordinator "+s.Node+" "+s.Service, s.TTL, api.SessionBehaviorRelease)
	if err != nil {
		if mine != nil {
			s.Client.KV().Release(&api.KVPair{Key: key, Session: mine.id}, nil)
		}
		return
	}
	if mine != nil {
		// The lock handed to the coordinator's own session in one
		// transaction: it outlives this host's place in line.
		ok, _, _, err := s.Client.Txn().Txn(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVUnlock, Key: key, Value: doc, Session: mine.id}},
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: key, Value: doc, Session: se.id}},
		}, nil)
		if err != nil || !ok {
			s.Client.KV().Release(&api.KVPair{Key: key, Session: mine.id}, nil)
			se.end(s.Client)
			return
		}
	} else {
		ok, _, err := s.Client.KV().Acquire(&api.KVPair{Key: key, Value: doc, Session: se.id}, nil)
		if err != nil || !ok {
			se.end(s.Client) // another agent was quicker
			return
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	planner := s.planner
	s.mu.Unlock()
	c := &coordinator{s: s, se: se, cancel: cancel, done: make(chan struct{}), held: map[string]heldGrant{}, planner: planner,
		gone: map[string]int{}, urgent: make(chan struct{}, 1), relist: make(chan struct{}, 1), hungry: make(chan struct{}, 1),
		placed: map[string]placedKey{}, lined: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.coord != nil || s.closed { // another, or Close ran meanwhile
		s.mu.Unlock()
		cancel()
		se.end(s.Client) // the lock goes with the session
		return
	}
	s.coord = c
	s.mu.Unlock()
	s.logger().Info("coordinating the fleet's slots", "service", s.Service, "limit", s.Limit)
	go func() {
		defer close(c.done)
		c.run(ctx)
		s.mu.Lock()
		if s.coord == c {
			s.coord = nil
		}
		s.mu.Unlock()
	}()
}

// coordinator hands out grants while it holds the coord key.
type coordinator struct {
	s      *Slots
	se     *session
	cancel context.CancelFunc
	done   chan struct{}
	killed bool

	held   map[string]heldGrant // by node
	queue  []want
	legacy *legacyLock // the older semaphore's record, as last written or read
	// lastLen is how many keys the last listing of the folder had.
	lastLen int
	// planner decides the service's rollout, if it has one; plan is its
	// last decision.
	planner lock.Planner
	plan    *planned
	// gone counts the grants released since the last decision, by wave;
	// urgent asks for a decision at once: a wave's last host is done.
	gone map[string]int
	// asked is the release asked for, as the decisions read it last.
	asked   atomic.Value
	goneLog []goneHost
	// wantSeen: when each want (key@index) was first listed.
	wantSeen map[string]time.Time
	urgent   chan struct{}
	relist   chan struct{} // asks the listing of the grant folder to come now
	// doc is a decision's document to write with the next grants, in
	// their transaction (see decide).
	doc *lock.Rollout
	// hungry asks for it once ListGap has passed: fewer hosts known to
	// wait for an open wave than there are slots.
	hungry chan struct{}
	// bg counts the goroutines of the run's decisions and placement.
	bg sync.WaitGroup
	// placed is each host's wave key as written last, by node; placing
	// is set while the hosts of open waves and waves in line are placed
	// in the background (see decide).
	placedMu sync.Mutex
	placed   map[string]placedKey
	placing  bool
	// line is the hosts granted or in line for each release, as the run
	// loop knew them last (granted first, then in the order they got in
	// line); lined is poked each time it is set.
	lineMu sync.Mutex
	line   map[string][]string
	lined  chan struct{}
}

// heldGrant is a live grant: the modify index of its key as granted, and
// the host's session.
type heldGrant struct {
	index    uint64
	session  string
	checksum string // the release it was asked for
}

type want struct {
	checksum      string
	node          string
	key           string
	session       string
	modify, order uint64
}

type grantRef struct {
	node  string
	index uint64
}

type listing struct {
	pairs api.KVPairs
	index uint64
}

// kill stops the coordinator without giving its lock back. Tests only.
func (c *coordinator) kill() {
	c.killed = true
	c.cancel()
	<-c.done
}

var errNotCoordinator = errors.New("no longer the coordinator")

func (c *coordinator) run(ctx context.Context) {
	s := c.s
	defer func() {
		if c.killed {
			c.se.abandon()
			return
		}
		s.Client.KV().Release(&api.KVPair{Key: CoordKey(s.Prefix, s.Service), Session: c.se.id}, nil)
		c.se.end(s.Client)
	}()
	// The decisions and the background placement end with the run (its
	// context cancelled first): a stopped coordinator leaves nothing
	// running behind it.
	defer c.bg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.se.lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	lists := make(chan listing, 1)
	released := make(chan grantRef, s.Limit*2+8)
	go c.list(ctx, lists, c.relist, c.hungry)
	plans := make(chan planned)
	if c.planner != nil {
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			c.decide(ctx, plans)
		}()
	}
	idleSince := time.Now()
	tick := time.NewTicker(IdleResign / 4)
	defer tick.Stop()
	listed := false
	// filled: a decision's, closed once its grants are made. Its
	// document, if it has one to write (wrote set), goes with the first
	// of them (written alone if there are none), and the hosts it no
	// longer lets in are moved out of line once it is written: they look
	// again at once.
	var filled chan struct{}
	var wrote *error
	done := func() {
		c.doc, wrote = nil, nil
		if filled != nil {
			close(filled)
			filled = nil
		}
	}
	defer done()
	for {
		select {
		case <-ctx.Done():
			return
		case l := <-lists:
			c.merge(ctx, l, released)
			c.noteLine()
			listed = true
			if err := c.moveOut(ctx); errors.Is(err, errNotCoordinator) {
				s.logger().Warn("lost the coordinator's lock", "service", s.Service)
				return
			}
		case p := <-plans:
			filled, wrote, c.doc = p.filled, p.wrote, p.write
			was := c.plan
			c.newPlan(p)
			if opened(was, p) && c.starving() {
				// The hosts of a wave just opened are about to wait, and
				// not in line already: the next listing comes now, not
				// after ListGap.
				select {
				case c.relist <- struct{}{}:
				default:
				}
			}
			if wrote != nil {
				break // once the document is written
			}
			if err := c.moveOut(ctx); errors.Is(err, errNotCoordinator) {
				s.logger().Warn("lost the coordinator's lock", "service", s.Service)
				return
			}
		case g := <-released:
			// With the others released meanwhile: their hosts' successors
			// are granted in one transaction.
			for more := true; more; {
				if h := c.held[g.node]; h.index == g.index { // not a newer grant to the same host
					delete(c.held, g.node)
					c.legacyGone(h.session)
					c.releasedHost(g.node)
				}
				select {
				case g = <-released:
				default:
					more = false
				}
			}
		case <-tick.C:
			// Only once the folder read last was empty: a listing slow to
			// come (a busy Consul) is no sign that nobody waits.
			if listed && c.lastLen == 0 && len(c.held) == 0 && len(c.queue) == 0 && c.rolloutDone() && time.Since(idleSince) > IdleResign {
				s.logger().Info("nobody waits for a slot: giving up coordinating", "service", s.Service)
				return
			}
			if len(c.queue) == 0 {
				continue
			}
			// The wants for a release nobody asked for leave the line
			// after askGrace (moveOut), which the line, unchanged
			// meanwhile, would not bring here; a plan of the release
			// before, done, is decided again only once a minute.
			if err := c.moveOut(ctx); errors.Is(err, errNotCoordinator) {
				s.logger().Warn("lost the coordinator's lock", "service", s.Service)
				return
			}
			c.legacy = nil // older agents may have freed slots: read their semaphore again
		}
		if wrote != nil && !listed {
			// A decision's document waits for the first listing, to go
			// with the grants it lets the coordinator make.
			continue
		}
		var err error
		if listed {
			err = c.fill(ctx, released)
		}
		if wrote != nil {
			werr := error(nil)
			switch {
			case c.doc == nil: // written with the first grant
			case errors.Is(err, errNotCoordinator):
				werr = err
			default:
				werr = c.writeDoc(ctx, *c.doc)
			}
			*wrote = werr
			if werr == nil {
				if err := c.moveOut(ctx); errors.Is(err, errNotCoordinator) {
					s.logger().Warn("lost the coordinator's lock", "service", s.Service)
					return
				}
			}
		}
		done()
		if !listed {
			continue // the grants live now are not known yet
		}
		if errors.Is(err, errNotCoordinator) {
			s.logger().Warn("lost the coordinator's lock", "service", s.Service)
			return
		}
		if len(c.held) > 0 || len(c.queue) > 0 || !c.rolloutDone() {
			idleSince = time.Now()
		}
	}
}

// noteLine sets the hosts granted or in line for each release (see
// line), for the coordinator's decision.
func (c *coordinator) noteLine() {
	if c.planner == nil {
		return
	}
	line := map[string][]string{}
	for node, h := range c.held {
		if h.checksum != "" {
			line[h.checksum] = append(line[h.checksum], node)
		}
	}
	for _, l := range line {
		sort.Strings(l)
	}
	for _, w := range c.queue {
		if w.checksum != "" {
			line[w.checksum] = append(line[w.checksum], w.node)
		}
	}
	c.lineMu.Lock()
	c.line = line
	c.lineMu.Unlock()
	select {
	case c.lined <- struct{}{}:
	default:
	}
}

// list follows the grant folder with a blocking query and hands each
// listing to the coordinator. A listing with many waiting hosts (the
// only read that grows with the fleet) is made when a wave opened, or
// at most five times per ListGap when the coordinator starves (it knows
// of fewer hosts waiting for an open wave than it has slots, and hosts
// of open waves may wait that it does not know of); else once per
// ListGap per 200 hosts listed: the hosts in line stay in line,
// and the coordinator grants them from the listing it has. One that is
// short, because every waiting host known is granted, may be made again
// at once, so that a host that starts waiting then is granted without
// waiting for the gap.
func (c *coordinator) list(ctx context.Context, lists chan listing, relist, hungry <-chan struct{}) {
	s := c.s
	var index uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute, RequireConsistent: index == 0}).WithContext(ctx)
		pairs, meta, err := s.Client.KV().List(GrantPrefix(s.Prefix, s.Service), q)
		if err != nil {
			index = 0 // the Consul that answers next may be behind
			pause(ctx, backoff/2+rand.N(backoff/2))
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if meta.LastIndex < index {
			index = 0 // gone backwards (a restored Consul): read afresh
		} else {
			index = meta.LastIndex
		}
		select {
		case <-lists: // an older listing nobody read: this one replaces it
		default:
		}
		lists <- listing{pairs, meta.LastIndex}
		s.logger().Debug("grants listed", "service", s.Service, "keys", len(pairs), "took", time.Since(start), "at", time.Now().Format("15:04:05.000"))
		if len(pairs) <= 4*s.Limit+16 {
			pause(ctx, 5*time.Millisecond-time.Since(start))
			continue
		}
		long := time.NewTimer(max(ListGap*time.Duration(max(1, len(pairs)/200))-time.Since(start), 0))
		// A starving coordinator (see starving) lists five times as often.
		gap := time.NewTimer(max(ListGap/5-time.Since(start), 0))
		ready, asked := false, false
		for ctx.Err() == nil && !(ready && asked) {
			select {
			case <-ctx.Done():
			case <-long.C:
				ready, asked = true, true
			case <-gap.C:
				ready = true
			case <-hungry:
				asked = true
			case <-relist:
				ready, asked = true, true
			}
		}
		long.Stop()
		gap.Stop()
	}
}

func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// merge takes a listing of the grant folder: the live grants (some this
// coordinator did not make: a predecessor's) and the hosts waiting.
func (c *coordinator) merge(ctx context.Context, l listing, released chan<- grantRef) {
	c.lastLen = len(l.pairs)
	granted := map[string]bool{}
	c.queue = c.queue[:0]
	for _, kv := range l.pairs {
		if kv.Session == "" {
			continue // no live host holds it
		}
		var g Grant
		if json.Unmarshal(kv.Value, &g) != nil {
			continue
		}
		node := kv.Key[len(GrantPrefix(c.s.Prefix, c.s.Service)):]
		switch g.State {
		case StateGranted:
			granted[node] = true
			if _, ok := c.held[node]; !ok {
				c.held[node] = heldGrant{kv.ModifyIndex, g.Session, g.Checksum}
				go c.watch(ctx, node, kv.Key, kv.ModifyIndex, released)
			}
		case StateWant:
			c.queue = append(c.queue, want{checksum: g.Checksum, node: node, key: kv.Key, session: g.Session, modify: kv.ModifyIndex, order: kv.CreateIndex})
		}
	}
	for node, h := range c.held {
		if !granted[node] && h.index <= l.index {
			delete(c.held, node) // released before this listing
			c.legacyGone(h.session)
			// As when its watch says so first (which finds it gone
			// then): the last host of its wave done asks for a
			// decision at once.
			c.releasedHost(node)
		}
	}
	sort.Slice(c.queue, func(i, j int) bool { return c.queue[i].order < c.queue[j].order })
}

// fill grants the oldest wants while fewer than the limit are granted,
// up to maxBatch in one transaction. Each grant also takes a slot of the
// older dropship's semaphore for the host, so agents of both kinds share
// one limit.
func (c *coordinator) fill(ctx context.Context, released chan<- grantRef) error {
	s := c.s
	var later []want // wants whose wave is not open: kept in line
	defer func() {
		c.queue = append(later, c.queue...)
		if c.hungry != nil && c.starving() {
			select {
			case c.hungry <- struct{}{}:
			default:
			}
		}
	}()
	for len(c.held) < s.Limit && len(c.queue) > 0 {
		lk, err := c.legacyRoom(ctx)
		if err != nil {
			return err
		}
		if lk == nil {
			return nil // older agents hold the free slots: the next listing looks again
		}
		room := min(s.Limit-len(c.held), s.Limit-len(lk.Holders), maxBatch)
		// Operations left: the check of the coord key and the
		// semaphore's record come with any batch, and the document with
		// the first if it is to be written.
		budget := maxOps - 2
		if c.doc != nil {
			budget--
		}
		var batch []want
		var place []string // the hosts of batch granted with their wave key
		for len(batch) < room && len(c.queue) > 0 {
			w := c.queue[0]
			cost := 2 // the grant and the host's semaphore entry
			wave := c.unplaced(w)
			if wave != "" {
				cost++
			}
			if cost > budget {
				break
			}
			c.queue = c.queue[1:]
			switch {
			case c.held[w.node] != heldGrant{} || slices.ContainsFunc(batch, func(b want) bool { return b.node == w.node }):
			case !c.allowed(w):
				later = append(later, w)
			default:
				batch = append(batch, w)
				budget -= cost
				if wave != "" {
					place = append(place, w.node)
				}
			}
		}
		if len(batch) == 0 {
			return nil
		}
		at := time.Now().UTC()
		ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: CoordKey(s.Prefix, s.Service), Session: c.se.id}}}
		for _, w := range batch {
			g, _ := json.Marshal(Grant{Node: w.node, State: StateGranted, Limit: s.Limit, By: s.Node, At: at, Session: w.session, Checksum: w.checksum})
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: w.key, Value: g, Index: w.modify}})
		}
		ops = append(ops, c.legacyOps(lk, batch)...)
		docAt := -1
		if c.doc != nil {
			docAt = len(ops)
			ops = append(ops, c.docOp(*c.doc))
		}
		// Last, so the results of the others keep their places: the
		// wave key of a host granted before the background placement
		// came to it, which its look once granted reads.
		for _, node := range place {
			ops = append(ops, c.placeOp(c.plan.doc.Checksum, node, c.plan.waves[node]))
		}
		ok, resp, _, err := s.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			c.queue = append(batch, c.queue...) // the next event tries again
			c.legacy = nil
			return err
		}
		if !ok {
			var gone []int
			for _, e := range resp.Errors {
				switch i := e.OpIndex; {
				case i == 0:
					return errNotCoordinator
				case i == docAt:
					c.queue = append(batch, c.queue...)
					return fmt.Errorf("write the rollout: %v", resp.Errors)
				case i >= 1 && i <= 2*len(batch):
					// The host left the line, or its want changed, or its
					// session ended: the next listing has it.
					gone = append(gone, (i-1)%len(batch))
				default:
					// An older agent changed the semaphore: read it again.
					c.legacy = nil
				}
			}
			var again []want
			for i, w := range batch {
				if !slices.Contains(gone, i) {
					again = append(again, w)
				}
			}
			c.queue = append(again, c.queue...)
			if len(gone) == 0 && c.legacy != nil {
				return fmt.Errorf("grant %d hosts: %v", len(batch), resp.Errors)
			}
			continue
		}
		c.doc = nil // written
		c.notePlaced(c.plan, place, resp.Results[max(len(resp.Results)-len(place), 0):])
		c.legacyTook(lk, batch, resp)
		for i, w := range batch {
			idx := w.modify
			if r := 1 + i; len(resp.Results) > r && resp.Results[r].KV != nil {
				idx = resp.Results[r].KV.ModifyIndex
			}
			c.held[w.node] = heldGrant{idx, w.session, w.checksum}
			go c.watch(ctx, w.node, w.key, idx, released)
		}
	}
	return nil
}

// starving says whether the coordinator knows of fewer hosts waiting
// for an open wave than it has slots, while hosts of open waves it does
// not know to wait may: then the next listing should come soon.
func (c *coordinator) starving() bool {
	allowed := 0
	for _, w := range c.queue {
		if c.allowed(w) {
			if allowed++; allowed >= c.s.Limit {
				return false
			}
		}
	}
	if c.planner == nil || c.plan == nil {
		return true
	}
	if c.plan.doc.Done {
		return false
	}
	// Hosts of open waves not done, less those granted or in line.
	missing := -len(c.held) - allowed
	for _, ws := range c.plan.doc.Waves {
		if ws.Open {
			missing += ws.Hosts - ws.Done - c.gone[ws.Name]
		}
	}
	return missing > 0 || c.nextShort()
}

// nextShort says whether the coordinator knows of fewer hosts in line
// for the wave that opens next, by itself once the open ones are done,
// than it will grant at once when it opens: their wants are listed ahead,
// so that the wave opens without waiting for a listing.
func (c *coordinator) nextShort() bool {
	p := c.plan
	for _, ws := range p.doc.Waves {
		if ws.Open {
			continue
		}
		if !ws.Queue {
			return false
		}
		need := min(c.s.Limit, ws.Hosts-ws.Done)
		for _, w := range c.queue {
			if w.checksum == p.doc.Checksum && p.waves[w.node] == ws.Name {
				if need--; need <= 0 {
					return false
				}
			}
		}
		return need > 0
	}
	return false
}

// maxOps is the most operations of a transaction: Consul 1.20 takes
// 128, older ones 64.
const maxOps = 64

// maxBatch is the most grants written in one transaction: with the
// check of the coord key, each grant's semaphore entry and the
// semaphore's record, within maxOps (fewer when a decision's document or
// the granted hosts' wave keys are written with them).
const maxBatch = 31

// watch waits for a grant's key to change (the host released it, or its
// session expired) and reports the slot free.
func (c *coordinator) watch(ctx context.Context, node, key string, index uint64, released chan<- grantRef) {
	loop := blocking.Loop{MinGap: time.Millisecond, BackoffCap: 5 * time.Second}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	loop.Run(wctx, index, func(ctx context.Context, idx uint64) (uint64, error) {
		kv, meta, err := c.s.Client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			return 0, err
		}
		if kv == nil || kv.ModifyIndex != index {
			select {
			case released <- grantRef{node, index}:
			case <-ctx.Done():
			}
			stop()
		}
		return meta.LastIndex, nil
	})
}
