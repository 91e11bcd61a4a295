package consul

// A service with a rollout block: the coordinator also decides the waves.
//
// Layout, beside the grants under <prefix>/_slots/<service>/:
//
//	release        the release to roll out, as the first host to find it
//	               asked: {"checksum": …}
//	rollout        the coordinator's document (lock.Rollout): the release
//	               rolling out and each wave's state; its size grows with
//	               the waves, not the fleet
//	wave/<node>    the host's wave of that release: {"checksum","wave"}
//
// Only the coordinator reads the fleet's records (through its Planner, at
// most once per ListGap) and writes these keys, every write in a
// transaction that checks it still holds the coord key. A host reads the
// document and its own wave key, and waits on the document and its own
// grant key: its work does not grow with the fleet. A host's want names
// the release it waits to install, and the coordinator grants it only
// while its wave of that release is open.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"path"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/lock"
)

// RolloutKey, ReleaseKey and WaveKey name the keys of a rollout.
func RolloutKey(prefix, service string) string { return SlotsPrefix(prefix, service) + "rollout" }
func ReleaseKey(prefix, service string) string { return SlotsPrefix(prefix, service) + "release" }
func WavePrefix(prefix, service string) string { return SlotsPrefix(prefix, service) + "wave/" }
func WaveKey(prefix, service, node string) string {
	return WavePrefix(prefix, service) + node
}

// Placement is the value of a wave key.
type Placement struct {
	Checksum string `json:"checksum"`
	Wave     string `json:"wave"`
}

// Tunables of the rollout; tests and the bench shorten some.
var (
	// DocGap is the least time between two writes of the document that
	// change only the reasons (a wave's progress): each write wakes every
	// host following it. A wave opening or closing is written at once.
	DocGap = 30 * time.Second
	// PlanEvery bounds the time between two decisions of a rollout not
	// done, when nothing wakes the coordinator (a gate asked mid-bake).
	PlanEvery = 5 * time.Second
)

// seenFor is how long a host that saw the coordinator alive does not
// look for it again.
const seenFor = 5 * time.Second

var _ lock.Coordinated = (*Slots)(nil)

// SetPlanner makes this host's coordinator decide the rollout with p.
func (s *Slots) SetPlanner(p lock.Planner) {
	s.mu.Lock()
	s.planner = p
	s.mu.Unlock()
}

// Want sets the release the next Acquire waits to install.
func (s *Slots) Want(checksum string) {
	s.mu.Lock()
	s.want = checksum
	s.mu.Unlock()
}

// Rollout reads the document and this host's wave of checksum, the
// release asked for and the coordinator's key, in one request, or takes
// them as a read of this host's records just brought them (LookOps). When
// the document is about another release it asks for checksum; it starts
// a coordinator when none runs.
func (s *Slots) Rollout(ctx context.Context, checksum string) (*lock.Rollout, string, error) {
	s.mu.Lock()
	pairs, at, fails := s.looked, s.lookedAt, s.lookedFails
	s.looked = nil
	if pairs == nil || time.Since(at) > lookFresh {
		fails = s.followFails
	}
	s.mu.Unlock()
	if pairs == nil || time.Since(at) > lookFresh {
		ok, resp, _, err := s.Client.Txn().Txn(s.LookOps(), (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && !ok {
			err = fmt.Errorf("%v", resp.Errors)
		}
		if err != nil {
			return nil, "", s.unavailable("read the rollout", err)
		}
		pairs = api.KVPairs{}
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.ModifyIndex != 0 { // 0: get-or-empty of a missing key
				pairs = append(pairs, r.KV)
			}
		}
	}
	return s.rolloutFrom(ctx, checksum, pairs, fails)
}

// ElectionPause is the least a host that finds the release asked for
// and nobody coordinating waits before its look returns (up to three
// times as long, at random): the host that asked is elected meanwhile.
var ElectionPause = 500 * time.Millisecond

// lookFresh is how long the keys a read of the host's records brought
// along (Looked) stand for the next Rollout's own read.
const lookFresh = 2 * time.Second

// LookOps are the reads of Rollout, as operations of a transaction: a
// host's read of its own records takes them along (one request rather
// than two) and hands what they found to Looked.
func (s *Slots) LookOps() api.TxnOps {
	// A get of a missing key fails a transaction; a tree does not.
	ops := api.TxnOps{}
	wave := WaveKey(s.Prefix, s.Service, s.Node)
	for _, k := range s.lookKeys() {
		// The host's wave is one key among every host's: a tree of
		// wave/web-1 would bring web-10 to web-1999 along. get-or-empty
		// answers a missing key with an empty pair (ModifyIndex 0).
		verb := api.KVGetTree
		if k == wave {
			verb = api.KVGetOrEmpty
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: verb, Key: k}})
	}
	return ops
}

func (s *Slots) lookKeys() []string {
	return []string{RolloutKey(s.Prefix, s.Service), ReleaseKey(s.Prefix, s.Service), CoordKey(s.Prefix, s.Service), WaveKey(s.Prefix, s.Service, s.Node)}
}

// Looks says whether key is one of LookOps' keys (a tree may bring
// others: they are not).
func (s *Slots) Looks(key string) bool {
	for _, k := range s.lookKeys() {
		if key == k {
			return true
		}
	}
	return false
}

// Looked keeps what LookOps read (the pairs of their keys, Looks) for
// the next Rollout, which takes it instead of reading again if it comes
// within lookFresh.
func (s *Slots) Looked(pairs api.KVPairs) {
	s.mu.Lock()
	s.looked, s.lookedAt, s.lookedFails = append(api.KVPairs{}, pairs...), time.Now(), s.followFails
	s.mu.Unlock()
}

// rolloutFrom is Rollout once the keys are read, the follower's failures
// then numbering fails.
func (s *Slots) rolloutFrom(ctx context.Context, checksum string, pairs api.KVPairs, fails uint64) (*lock.Rollout, string, error) {
	waveKey := WaveKey(s.Prefix, s.Service, s.Node)
	var doc *lock.Rollout
	var docKV *api.KVPair
	var rel, place Placement
	var relIndex uint64
	coordinated := false
	for _, kv := range pairs {
		switch kv.Key {
		case RolloutKey(s.Prefix, s.Service):
			var d lock.Rollout
			if json.Unmarshal(kv.Value, &d) == nil {
				doc = &d
			}
			docKV = kv
		case ReleaseKey(s.Prefix, s.Service):
			json.Unmarshal(kv.Value, &rel)
			relIndex = kv.ModifyIndex
		case CoordKey(s.Prefix, s.Service):
			// Held by this host's own place in line, and nobody
			// coordinating here: an election that could not finish.
			coordinated = kv.Session != "" && !s.stranded(kv.Session)
		case waveKey:
			json.Unmarshal(kv.Value, &place)
		}
	}
	// The document as read (none, if none was), for the follower
	// (lookedSince); not if the follower failed since the keys were
	// read: they may be of a Consul that has gone since (restarted
	// without its data), whose index the one that answers now has not
	// reached.
	s.mu.Lock()
	if s.followFails == fails {
		s.lookedDoc = docKV
	}
	s.mu.Unlock()
	asked, lost, later := false, false, false
	if (doc == nil || doc.Checksum != checksum) && rel.Checksum != checksum {
		s.mu.Lock()
		// A look of a release this host found not asked for before, long
		// enough ago that the pick's ask would have landed: nobody of
		// the pick did (gone, or the fleet shrank since its document).
		// Only if nothing was asked for since that first look (the
		// release key as it read it): a release asked for since, newer
		// as a rule, is not asked over; the wait starts again.
		again := s.deferred == checksum && s.deferredIndex == relIndex && time.Since(s.deferredAt) >= AskDefer
		ask := s.askAlways || again || asksAtOnce(s.Node, checksum, doc)
		if !ask && (s.deferred != checksum || s.deferredIndex != relIndex) {
			s.deferred, s.deferredAt, s.deferredIndex = checksum, time.Now(), relIndex
		}
		s.mu.Unlock()
		if ask {
			// Check-and-set: of the hosts that find a release at once,
			// one asks for it, and it alone tries to coordinate at once.
			// At the index this look read: a release asked for since is
			// never asked over.
			ok, err := s.ask(ctx, checksum, relIndex)
			if err != nil {
				return nil, "", err
			}
			asked, lost = ok, !ok
			if ok && again {
				s.logger().Info("asked for the rollout: none of the hosts that ask at once did", "service", s.Service, "checksum", checksum)
			}
		} else {
			later = true
		}
	}
	if !coordinated {
		// Read just now: nobody holds the coordinator's key, whatever
		// this host's follower of the document saw last (its blocking
		// query may wait on a Consul that restarted without its data).
		s.mu.Lock()
		s.docHeld = false
		s.mu.Unlock()
	}
	switch {
	case coordinated, lost, later:
		// Or another host asked for the release just now: it tries to
		// coordinate at once, and this host need not look for a while.
		s.mu.Lock()
		s.seen = time.Now()
		s.mu.Unlock()
	case asked:
		s.elect(ctx, false, 0) // nobody coordinates, as read just now
	case rel.Checksum == checksum:
		// Asked for, and nobody coordinates (it died, or the one that
		// asked has not taken the lock yet, slowed by the whole fleet
		// reading the release at once): any host may, after a random
		// wait of a quarter of the session TTL to the whole of it, if
		// nobody holds the lock then. In the background: this host's
		// check goes on.
		s.mu.Lock()
		start := !s.electing
		s.electing = true
		s.mu.Unlock()
		if start {
			go func() {
				defer func() {
					s.mu.Lock()
					s.electing = false
					s.mu.Unlock()
				}()
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.TTL+time.Minute)
				defer cancel()
				t := time.NewTimer(s.TTL / 4)
				defer t.Stop()
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				s.elect(ctx, false, s.TTL*3/4)
			}()
		}
	}
	if !coordinated && !asked && (lost || later || rel.Checksum == checksum) {
		s.mu.Lock()
		inLine := s.held != nil
		s.mu.Unlock()
		if !inLine {
			// Another host asked for the release (just now, as a rule:
			// the whole fleet found it at once) and is being elected.
			// Its session and its lock would queue behind every host's
			// place in line, written now: this host gets in line a
			// moment later, so the coordinator is elected first.
			pause(ctx, ElectionPause+rand.N(ElectionPause*2))
		}
	}
	if doc == nil || doc.Checksum != checksum || place.Checksum != checksum {
		return doc, "", nil
	}
	return doc, place.Wave, nil
}

// AskDefer is how long after its first look a host that left the ask
// for a release to the pick (asksAtOnce) asks for it itself, at its next
// look that finds it still not asked for. A host in line for a release
// nobody asked for is moved out of line (askGrace) and looks again.
var AskDefer = 5 * time.Second

// Askers is about how many hosts of a fleet ask for a release at once
// when they all find it at once (woken by its announcement): the others
// leave it to them, rather than each writing a check-and-set that all
// but one lose. Every lost check-and-set is a write the Consul servers
// replicate, thousands of them at the moment the coordinator is being
// elected. Enough of them that one is among the first hosts that the
// fleet's reads at once let through.
const Askers = 32

// asksAtOnce says whether node is one of a pick of Askers hosts on
// average, different for each release: each host of a fleet of Askers
// hosts or fewer (by the document of the release before: prev, nil if
// none) is.
func asksAtOnce(node, checksum string, prev *lock.Rollout) bool {
	hosts := docHosts(prev)
	if hosts <= Askers {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(checksum))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return h.Sum64()%uint64(hosts) < Askers
}

// docHosts is the number of hosts doc plans (0 for nil), a million at
// most: a document that claims more (written by hand) delays no ask
// past AskDefer anyway.
func docHosts(doc *lock.Rollout) int {
	hosts := 0
	if doc != nil {
		for _, w := range doc.Waves {
			if w.Hosts > 0 {
				hosts += min(w.Hosts, 1_000_000)
			}
		}
	}
	return min(hosts, 1_000_000)
}

// ask asks for checksum with a check-and-set of the release key at
// index: whether this host's write took.
func (s *Slots) ask(ctx context.Context, checksum string, index uint64) (bool, error) {
	b, _ := json.Marshal(Placement{Checksum: checksum})
	ok, _, err := s.Client.KV().CAS(&api.KVPair{Key: ReleaseKey(s.Prefix, s.Service), Value: b, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, s.unavailable("ask for the rollout", err)
	}
	return ok, nil
}

// AskAtOnce makes this host ask at once for any release it finds not
// asked for, as every host did before the pick: a run of `agent --once`
// (from cron) has no later look to spare, and each run of a fleet whose
// pick is absent would wait to be moved out of line first.
func (s *Slots) AskAtOnce() {
	s.mu.Lock()
	s.askAlways = true
	s.mu.Unlock()
}

// noteCoordinator notes whether the document read just now is held by a
// coordinator's session. When it is not (the coordinator died, or gave
// its lock back) and this host waits in line for a grant, it looks for a
// coordinator and becomes it if nobody has, after a random wait: every
// host in line saw the document change at once.
func (s *Slots) noteCoordinator(held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.docHeld = held
	if held {
		s.seen = time.Now()
		return
	}
	s.seen = time.Time{}
	if s.held == nil || s.coord != nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*ElectionSpread+time.Minute)
		defer cancel()
		s.elect(ctx, true, 10*ElectionSpread)
	}()
}

// WaitRollout blocks until the document changes past index. While this
// host waits in line for a release of the rollout, or holds its grant,
// it waits on the coordinator's key instead: the coordinator grants it or
// moves it out of line through its own key, and the document, written
// at every wave that opens or closes, would wake every host of the fleet
// that waits in line each time. The coordinator's key changes only when
// the coordinator does, or dies (its session's release of the key says
// so, and the host looks for a coordinator). Once the host leaves the
// line (its session ends) it follows the document again, from where it
// left it.
func (s *Slots) WaitRollout(ctx context.Context, index uint64) (*lock.Rollout, uint64, error) {
	s.mu.Lock()
	se := s.held
	inLine := se != nil && s.planner != nil && s.want != ""
	s.following++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.following--
		s.followed = time.Now()
		s.mu.Unlock()
	}()
	var coordIndex uint64
	var coord *api.KVPair
	if inLine && index > 0 {
		var err error
		if coord, coordIndex, err = s.waitCoord(ctx, index, se.done); err != nil {
			s.mu.Lock()
			s.docHeld, s.lookedDoc = false, nil
			s.followFails++
			s.mu.Unlock()
			return nil, 0, s.unavailable("follow the rollout's coordinator", err)
		}
		if coord != nil {
			index = 0 // the document as it is now
		} else if doc, next, ok := s.lookedSince(index); ok {
			// This host left the line: the document its last look read
			// (once granted, as a rule), if later than the follower's,
			// rather than asking Consul again for what the host has
			// seen.
			return doc, next, nil
		}
		// Else this host left the line: its wait on the document goes
		// on from where it was, and ends at once if it changed since.
	}
	q := &api.QueryOptions{}
	if index > 0 {
		// As long as Consul waits (10 minutes): the document, not the
		// end of the wait, is what wakes a host.
		q.WaitIndex, q.WaitTime = index, 10*time.Minute
	}
	kv, meta, err := s.Client.KV().Get(RolloutKey(s.Prefix, s.Service), q.WithContext(ctx))
	if err != nil {
		s.mu.Lock()
		s.docHeld, s.lookedDoc = false, nil
		s.followFails++
		s.mu.Unlock()
		return nil, 0, s.unavailable("read the rollout", err)
	}
	if coord != nil {
		// Woken by the coordinator's key, which says whether one lives:
		// the document may still be the old coordinator's, its session
		// not ended yet, and the next change of the document would not
		// wake this host.
		s.noteCoordinator(coord.Session != "" && !s.stranded(coord.Session))
	} else {
		s.noteCoordinator(kv != nil && kv.Session != "")
	}
	// The later of the two: the document read now is what the follower
	// acts on, and a coordinator's key newer than it must not wake the
	// next wait at once.
	next := max(meta.LastIndex, coordIndex)
	if kv == nil {
		return nil, next, nil
	}
	var doc lock.Rollout
	if err := json.Unmarshal(kv.Value, &doc); err != nil {
		return nil, next, fmt.Errorf("read %s: %w", kv.Key, err)
	}
	return &doc, next, nil
}

// lookedSince returns the document as this host's last look read it,
// if its index is past index. Taken only once the host leaves the line:
// the follower's index and the look are then of the same Consul (one
// that restarted ended the wait on coord with an error, which forgets
// the look, and a look whose keys were read before that is not kept),
// and raft's index only grows, so a document the follower read, or
// could have, is not past it.
func (s *Slots) lookedSince(index uint64) (*lock.Rollout, uint64, bool) {
	s.mu.Lock()
	kv := s.lookedDoc
	s.mu.Unlock()
	if kv == nil || kv.ModifyIndex <= index {
		return nil, 0, false
	}
	var doc lock.Rollout
	if json.Unmarshal(kv.Value, &doc) != nil {
		return nil, 0, false
	}
	s.noteCoordinator(kv.Session != "")
	return &doc, kv.ModifyIndex, true
}

// waitCoord blocks until the coordinator's key changes past index, or
// left closes (this host's session ended: it left the line), and returns
// the key (an empty one when there is none) and its index (nil and 0
// when left closed first).
func (s *Slots) waitCoord(ctx context.Context, index uint64, left <-chan struct{}) (*api.KVPair, uint64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-left:
			cancel()
		case <-wctx.Done():
		}
	}()
	kv, meta, err := s.Client.KV().Get(CoordKey(s.Prefix, s.Service), (&api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Minute}).WithContext(wctx))
	select {
	case <-left:
		return nil, 0, nil
	default:
	}
	if err != nil {
		return nil, 0, err
	}
	if kv == nil {
		kv = &api.KVPair{}
	}
	return kv, meta.LastIndex, nil
}

// moveOut ends the wait of the hosts in line that the rollout no longer
// lets in (see moved): their want turns "moved", in transactions that
// check the coord key. Rare: a new release, a breaker, a pin, a wave that
// now waits for an approval, a bake or a window.
func (c *coordinator) moveOut(ctx context.Context) error {
	s, p := c.s, c.plan
	if c.planner == nil {
		return nil
	}
	asked, known := c.asked.Load().(string)
	if p == nil && !known {
		return nil // the release key not read yet
	}
	// c.asked is as decide last read it, which can be seconds ago (a
	// first decision reading thousands of records, planGap): before
	// moving a host out for a release nobody asked for, the release key
	// is read again, once.
	read, failed, now := false, false, ""
	askedNow := func(sum string) bool {
		if !read {
			read = true
			kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, s.Service), (&api.QueryOptions{}).WithContext(ctx))
			var rel Placement
			if kv != nil {
				json.Unmarshal(kv.Value, &rel)
			}
			failed, now = err != nil, rel.Checksum
		}
		return failed || now == sum // not known: nobody moved out for it now
	}
	var out, keep []want
	for _, w := range c.queue {
		if p == nil {
			// No decision yet (nothing asked for, or the first one to
			// come): a host in line for a release nobody asked for
			// leaves the line after askGrace and looks again, and its
			// look asks (AskDefer).
			if w.checksum != "" && w.checksum != asked && time.Since(c.seenWant(w)) >= askGrace && !askedNow(w.checksum) {
				out = append(out, w)
			} else {
				keep = append(keep, w)
			}
			continue
		}
		// A host in line for the release asked for, not planned yet,
		// waits for its plan; so does one in line for another release
		// for a moment: the host may have asked for it just now, and
		// this coordinator not read the ask yet.
		planning := w.checksum == asked && p.doc.Checksum != asked ||
			w.checksum != p.doc.Checksum && time.Since(c.seenWant(w)) < askGrace
		if w.checksum != "" && !planning && moved(&p.doc, w.checksum, p.waves[w.node], w.node) &&
			!(w.checksum != p.doc.Checksum && w.checksum != asked && askedNow(w.checksum)) {
			out = append(out, w)
		} else {
			keep = append(keep, w)
		}
	}
	c.queue = keep
	for len(out) > 0 {
		n := min(len(out), 63)
		ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: CoordKey(s.Prefix, s.Service), Session: c.se.id}}}
		for _, w := range out[:n] {
			g, _ := json.Marshal(Grant{Node: w.node, State: StateMoved, Limit: s.Limit, By: s.Node, At: time.Now().UTC(), Session: w.session, Checksum: w.checksum})
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: w.key, Value: g, Index: w.modify}})
		}
		ok, resp, _, err := s.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		if !ok {
			for _, e := range resp.Errors {
				if e.OpIndex == 0 {
					return errNotCoordinator
				}
			}
			// A want changed meanwhile (the host left the line): the
			// others of the batch go one by one at the next decision.
		}
		out = out[n:]
	}
	return nil
}

// askGrace is how long a want for a release that the coordinator has
// not seen asked for stays in line: the release key, which it follows,
// normally comes first.
const askGrace = 2 * time.Second

// seenWant returns when the coordinator first listed w (as it is now).
func (c *coordinator) seenWant(w want) time.Time {
	k := fmt.Sprintf("%s@%d", w.key, w.modify)
	if c.wantSeen == nil {
		c.wantSeen = map[string]time.Time{}
	}
	t, ok := c.wantSeen[k]
	if !ok {
		t = time.Now()
		c.wantSeen[k] = t
		if len(c.wantSeen) > 4*len(c.queue)+1024 { // forget the wants gone
			live := map[string]bool{}
			for _, q := range c.queue {
				live[fmt.Sprintf("%s@%d", q.key, q.modify)] = true
			}
			for k := range c.wantSeen {
				if !live[k] {
					delete(c.wantSeen, k)
				}
			}
		}
	}
	return t
}

// moved says whether doc ends the wait of node, in wave, for want: the
// release changed, or the breaker tripped, or the host's wave neither is
// open nor opens by itself (an approval, a bake, a window, a freeze: the
// host's check waits for those and says so), or a pin names the host.
func moved(doc *lock.Rollout, want, wave, node string) bool {
	if doc == nil || doc.Checksum != want || doc.Trip != "" {
		return true
	}
	if ws := doc.Wave(wave); wave != "" && (ws == nil || !ws.Open && !ws.Queue) {
		return true
	}
	for _, glob := range doc.Pins {
		if ok, _ := path.Match(glob, node); ok {
			return true
		}
	}
	return false
}

// planned is one decision of the coordinator's rollout.
type planned struct {
	doc   lock.Rollout
	waves map[string]string
	read  time.Time // when the records it was decided from were read (at the latest)
	// filled, if set, is closed once the coordinator has granted what
	// this decision lets it (see selfOpened).
	filled chan struct{}
	// write, if set, is the document to write with the first grants the
	// decision lets the coordinator make, in their transaction (alone if
	// it makes none); wrote is its outcome, read once filled is closed.
	write *lock.Rollout
	wrote *error
}

// errDocPending: the document of a decision was not written (the
// coordinator stopped first).
var errDocPending = errors.New("the rollout's document was not written")

// allowed says whether the coordinator may grant w now: a want outside
// any rollout always, one for a release only while its wave is open.
func (c *coordinator) allowed(w want) bool {
	if c.planner == nil || w.checksum == "" {
		return true
	}
	p := c.plan
	if p == nil || p.doc.Checksum != w.checksum {
		return false
	}
	ws := p.doc.Wave(p.waves[w.node])
	return ws != nil && ws.Open
}

// rolloutDone says whether the rollout, if any, needs the coordinator no
// more: every planned host has the release, or nothing is asked.
// A release asked for and not decided yet is not done: a decision that
// takes long (thousands of records to read, a busy Consul) must not find
// its coordinator gone idle.
func (c *coordinator) rolloutDone() bool {
	if c.planner == nil {
		return true
	}
	asked, _ := c.asked.Load().(string)
	if c.plan == nil || c.plan.doc.Checksum != asked {
		return asked == ""
	}
	return c.plan.doc.Checksum == "" || c.plan.doc.Done
}

// decide runs the rollout: each time the service's records change (at
// most once per ListGap), or a decision's time comes, it asks the planner,
// places new hosts in their waves and writes the document.
func (c *coordinator) decide(ctx context.Context, out chan<- planned) {
	s := c.s
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	var hosts atomic.Int64 // planned in the last decision
	// The service's folder holds every host's record: Consul walks all
	// their keys to answer, so it is asked at most once per planGap.
	go c.follow(ctx, s.Prefix+"/"+s.Service+"/", poke, func() time.Duration { return planGap(int(hosts.Load())) })
	go c.follow(ctx, ReleaseKey(s.Prefix, s.Service), poke, func() time.Duration { return 5 * time.Millisecond })
	placedRead := false
	// waited: the release whose first decision waited for a host in
	// line (LineWait); decided: the release of the last decision made.
	waited, decided := "", ""
	// A release whose document a predecessor wrote was decided, its
	// plan fixed: a coordinator taking over does not wait for the line.
	if kv, _, err := s.Client.KV().Get(RolloutKey(s.Prefix, s.Service), (&api.QueryOptions{}).WithContext(ctx)); err == nil && kv != nil {
		var d lock.Rollout
		if json.Unmarshal(kv.Value, &d) == nil {
			waited = d.Checksum
		}
	}
	var last *lock.Rollout
	var lastWrite time.Time
	// soon: a wave's last host is done, and the planner can decide from
	// the records that can have changed since (lock.SoonPlanner).
	soon := false
	for ctx.Err() == nil {
		start := time.Now()
		next := PlanEvery
		var rel Placement
		kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, s.Service), (&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			next = time.Second
		case kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum == "":
			c.asked.Store("")
			next = time.Minute // nothing asked: the release key wakes it
		default:
			c.asked.Store(rel.Checksum)
			plan := c.planner.Plan
			if lp, ok := c.planner.(lock.LinePlanner); ok {
				line := c.inLine(ctx, rel.Checksum, waited != rel.Checksum)
				waited = rel.Checksum
				plan = func(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
					return lp.PlanLine(ctx, sum, line)
				}
			}
			// Soon only once this release was decided here: the first
			// decision, which may fix its plan, takes the hosts in line
			// (a wave of the release before done just then made it
			// "soon", and PlanSoon knows nothing of the line).
			if sp, ok := c.planner.(lock.SoonPlanner); ok && soon && decided == rel.Checksum {
				plan = sp.PlanSoon
			}
			doc, waves, err := plan(ctx, rel.Checksum)
			s.logger().Debug("rollout decided", "service", s.Service, "took", time.Since(start), "error", err, "at", time.Now().Format("15:04:05.000"))
			hosts.Store(int64(len(waves)))
			if err != nil {
				s.logger().Warn("could not decide the rollout", "service", s.Service, "error", err)
				next = time.Second
				break
			}
			decided = rel.Checksum
			if !placedRead {
				// Placements a predecessor wrote: not written again.
				pairs, _, err := s.Client.KV().List(WavePrefix(s.Prefix, s.Service), (&api.QueryOptions{}).WithContext(ctx))
				if err != nil {
					next = time.Second
					break
				}
				c.placedMu.Lock()
				for _, kv := range pairs {
					var p Placement
					if json.Unmarshal(kv.Value, &p) == nil {
						c.notePlace(kv.Key[len(WavePrefix(s.Prefix, s.Service)):], p, kv.ModifyIndex)
					}
				}
				c.placedMu.Unlock()
				placedRead = true
			}
			// Before the document: the hosts of waves that neither are
			// open nor open by themselves, which learn why they wait
			// from their wave key (a host not placed gets in line, and
			// one in line for such a wave is moved out of it). The
			// others wait in line meanwhile, and are placed in the
			// background once the document is written, or with their
			// grant if it comes first: the first grants are not held
			// back by thousands of keys written.
			if err := c.place(ctx, rel.Checksum, waves, func(wave string) bool {
				ws := doc.Wave(wave)
				return ws == nil || !ws.Open && !ws.Queue
			}); err != nil {
				if err == errNotCoordinator {
					c.cancel()
					return
				}
				next = time.Second
				break
			}
			doc.By = s.Node
			urgent := last == nil || !sameState(*last, doc)
			if last != nil && selfOpened(*last, doc) {
				// Waves that open by themselves, an earlier one done: their
				// hosts wait in line already, and a granted host takes a
				// grant with its wave "in line" in the document as open.
				// The first of them are granted before the document, whose
				// write wakes every host that follows it, is written.
				p := planned{doc, waves, start, make(chan struct{}), nil, nil}
				select {
				case out <- p:
				case <-ctx.Done():
					return
				}
				t := time.NewTimer(time.Second)
				select {
				case <-p.filled:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
			if urgent {
				// Written with the first grants it lets the coordinator
				// make, in their transaction: the hosts in line for a wave
				// it opens are granted as the document is written, not
				// after every host that follows it has read it again.
				doc.Time = time.Now().UTC()
				werr := errDocPending
				p := planned{doc, waves, start, make(chan struct{}), &doc, &werr}
				select {
				case out <- p:
				case <-ctx.Done():
					return
				}
				select {
				case <-p.filled:
				case <-ctx.Done():
					return
				}
				if werr != nil {
					if werr == errNotCoordinator {
						c.cancel()
						return
					}
					next = time.Second
					break
				}
				last, lastWrite = &doc, time.Now()
				s.logger().Debug("rollout written", "service", s.Service, "took", time.Since(start), "urgent", urgent, "at", time.Now().Format("15:04:05.000"))
			} else if !sameDoc(*last, doc) && time.Since(lastWrite) >= DocGap {
				doc.Time = time.Now().UTC()
				if err := c.writeDoc(ctx, doc); err != nil {
					if err == errNotCoordinator {
						c.cancel()
						return
					}
					next = time.Second
					break
				}
				last, lastWrite = &doc, time.Now()
				s.logger().Debug("rollout written", "service", s.Service, "took", time.Since(start), "urgent", urgent, "at", time.Now().Format("15:04:05.000"))
			} else if !sameDoc(*last, doc) {
				next = min(next, DocGap-time.Since(lastWrite))
			}
			if !doc.Again.IsZero() {
				next = min(next, time.Until(doc.Again))
			}
			for _, w := range doc.Waves {
				if !w.Until.IsZero() {
					next = min(next, time.Until(w.Until)+10*time.Millisecond)
				}
			}
			if !urgent {
				select {
				case out <- planned{doc, waves, start, nil, nil, nil}:
				case <-ctx.Done():
					return
				}
			}
			if doc.Done {
				next = time.Minute
			}
			c.placeRest(ctx, rel.Checksum, waves)
		}
		soon = false
		t := time.NewTimer(max(next-time.Since(start), 0))
		select {
		case <-ctx.Done():
		case <-wake:
			// The records changed: read again, but not before the gap,
			// which grows with the fleet (the read does) ...
			t.Stop()
			t = time.NewTimer(max(planGap(int(hosts.Load()))-time.Since(start), 0))
			select {
			case <-ctx.Done():
			case <-t.C:
			case <-c.urgent: // ... unless a wave's last host is done
				soon = true
			}
		case <-c.urgent: // a wave's last host is done: the next may open now
			soon = true
		case <-t.C:
		}
		t.Stop()
	}
}

// LineWait is the longest the first decision of a release waits for a
// host in line for it, to take as its canary (lock.LinePlanner).
var LineWait = 2 * time.Second

// inLine returns the hosts granted or in line for checksum as the run
// loop knows them; with wait, after LineWait at most for one of them
// to be known.
func (c *coordinator) inLine(ctx context.Context, checksum string, wait bool) []string {
	var t *time.Timer
	if wait {
		t = time.NewTimer(LineWait)
		defer t.Stop()
	}
	for {
		c.lineMu.Lock()
		line := c.line[checksum]
		c.lineMu.Unlock()
		if !wait || len(line) > 0 {
			return line
		}
		select {
		case <-c.lined:
		case <-t.C:
			wait = false
		case <-ctx.Done():
			return nil
		}
	}
}

// planGap is the least time between two reads of the records of a
// fleet of hosts that a change of the records asks for: ListGap per
// thousand hosts, ListGap at least. A wave's last host done, a timer of
// the rollout and the release asked for are decided at once.
func planGap(hosts int) time.Duration {
	return ListGap * time.Duration(max(1, (hosts+999)/1000))
}

// follow pokes on each change under key (a blocking query of its keys),
// gap apart at least.
func (c *coordinator) follow(ctx context.Context, key string, poke func(), gap func() time.Duration) {
	var index uint64
	for ctx.Err() == nil {
		start := time.Now()
		_, meta, err := c.s.Client.KV().Keys(key, "/", (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			index = 0
			pause(ctx, time.Second)
			continue
		}
		if meta.LastIndex != index {
			poke()
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		pause(ctx, gap()-time.Since(start))
	}
}

// docOp writes doc, held by the coordinator's session: released when it
// dies, so a host reading it knows whether to look for a coordinator.
func (c *coordinator) docOp(doc lock.Rollout) *api.TxnOp {
	b, _ := json.Marshal(doc)
	return &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock, Key: RolloutKey(c.s.Prefix, c.s.Service), Value: b, Session: c.se.id}}
}

func (c *coordinator) writeDoc(ctx context.Context, doc lock.Rollout) error {
	s := c.s
	ok, resp, _, err := s.Client.Txn().Txn(api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: CoordKey(s.Prefix, s.Service), Session: c.se.id}},
		c.docOp(doc),
	}, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if !ok {
		for _, e := range resp.Errors {
			if e.OpIndex == 0 {
				return errNotCoordinator
			}
		}
		return fmt.Errorf("write the rollout: %v", resp.Errors)
	}
	return nil
}

// opened says whether next opens a wave that prev did not.
func opened(prev *planned, next planned) bool {
	for _, w := range next.doc.Waves {
		if !w.Open {
			continue
		}
		if prev == nil || prev.doc.Checksum != next.doc.Checksum {
			return true
		}
		if ws := prev.doc.Wave(w.Name); ws == nil || !ws.Open {
			return true
		}
	}
	return false
}

// goneHost is a grant released: the host's wave, and when.
type goneHost struct {
	wave string
	at   time.Time
}

// newPlan takes a decision: the releases counted are those since its
// records were read (a host reports before it gives its grant back, so
// one released earlier is in the records: the decision's Done counts it).
func (c *coordinator) newPlan(p planned) {
	c.plan, c.gone = &p, map[string]int{}
	keep := c.goneLog[:0]
	for _, g := range c.goneLog {
		if g.at.After(p.read) {
			keep = append(keep, g)
			c.gone[g.wave]++
		}
	}
	c.goneLog = keep
}

// releasedHost notes a grant released: when it was the last host of its
// wave to finish, the coordinator decides again at once rather than after
// ListGap, so that the next wave opens without delay.
func (c *coordinator) releasedHost(node string) {
	p := c.plan
	if p == nil {
		return
	}
	w := p.waves[node]
	ws := p.doc.Wave(w)
	if ws == nil {
		return
	}
	c.gone[w]++
	c.goneLog = append(c.goneLog, goneHost{w, time.Now()})
	if ws.Done+c.gone[w] >= ws.Hosts {
		select {
		case c.urgent <- struct{}{}:
		default:
		}
	}
}

// sameState says whether a and b open the same waves with the same
// times, and stop for the same reasons: what the waiting hosts act on;
// and are as done (the hosts at rest stop following a document done).
func sameState(a, b lock.Rollout) bool {
	if a.Checksum != b.Checksum || a.Hold != b.Hold || a.Freeze != b.Freeze || a.Trip != b.Trip || a.Done != b.Done ||
		!reflect.DeepEqual(a.Pins, b.Pins) || !reflect.DeepEqual(a.Breakers, b.Breakers) || len(a.Waves) != len(b.Waves) {
		return false
	}
	for i := range a.Waves {
		x, y := a.Waves[i], b.Waves[i]
		if x.Name != y.Name || x.Open != y.Open || x.Queue != y.Queue || !x.Until.Equal(y.Until) || x.Hosts != y.Hosts {
			return false
		}
	}
	return true
}

// selfOpened says whether next differs from last only in waves that
// opened by themselves (in line, an earlier wave done).
func selfOpened(last, next lock.Rollout) bool {
	if len(last.Waves) != len(next.Waves) {
		return false
	}
	was := next
	was.Waves = append([]lock.WaveState(nil), next.Waves...)
	some := false
	for i := range was.Waves {
		if l, w := last.Waves[i], &was.Waves[i]; l.Queue && !l.Open && w.Open && l.Name == w.Name {
			w.Open, w.Queue, some = false, true, true
		}
	}
	return some && sameState(last, was)
}

// sameDoc says whether a and b say the same, their times aside.
func sameDoc(a, b lock.Rollout) bool {
	a.Time, b.Time = time.Time{}, time.Time{}
	a.Again, b.Again = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}
