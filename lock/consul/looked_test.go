package consul

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A read of the host's records that brought the rollout's keys along
// (Looked) just before Consul crashed, taken by the host's next look
// once its follower has failed, is a document of a Consul that lost its
// data: the host gets in line in the Consul that came back, and when it
// leaves the line its follower takes neither that document nor its
// index, which the new Consul has not reached, and the next document
// the new Consul's coordinator writes wakes it.
func TestRolloutLeavingTheLineTakesNoLookOfALostConsul(t *testing.T) {
	testutil.RequireServer(t, "Consul", serverErr)
	c, err := rig.StartConsul()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	cl, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	var hs []*Slots
	for i := range 2 {
		s := New(cl, "test/"+t.Name(), "app", node(i), 10*time.Second, 1)
		t.Cleanup(s.Close)
		hs = append(hs, s)
	}
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// A Consul that has run a while: its index is far ahead of one
	// that starts again without its data.
	for i := range 400 {
		if _, err := cl.KV().Put(&api.KVPair{Key: "test/history", Value: []byte(fmt.Sprint(i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	askAndPlace(ctx, t, hs[0], hs[1])
	doc, index, err := hs[1].WaitRollout(ctx, 0)
	if err != nil || doc == nil {
		t.Fatalf("the document: %+v, %v", doc, err)
	}
	// host-01's follower waits on the document; its read of its records
	// brings the rollout's keys along.
	failed := make(chan error, 1)
	go func() {
		_, _, err := hs[1].WaitRollout(ctx, index)
		failed <- err
	}()
	hs[1].Looked(lookOps(t, cl, hs[1]))
	// Consul crashes: the follower fails, and then the host's look takes
	// the keys its read brought (no request).
	c.Kill()
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("host-01's follower did not fail with Consul gone")
		}
	case <-ctx.Done():
		t.Fatal("host-01's follower did not fail with Consul gone")
	}
	if _, wave, err := hs[1].Rollout(ctx, "sum1"); err != nil || wave != "b" {
		t.Fatalf("host-01's look from the keys read before the crash: wave %q (%v)", wave, err)
	}
	// Consul comes back without its data; host-01 gets in line there,
	// and a coordinator runs.
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	hs[1].Want("sum1")
	got := getInLine(ctx, t, hs[1])
	testutil.Eventually(t, 30*time.Second, func() error {
		if !hs[1].Coordinating() {
			return errors.New("host-01 does not coordinate")
		}
		return nil
	})
	// The follower reads the document afresh: there is none.
	doc, index, err = hs[1].WaitRollout(ctx, 0)
	if err != nil || doc != nil {
		t.Fatalf("the document in the Consul that came back: %+v (%v)", doc, err)
	}
	follow := func(index uint64) <-chan waited { return waitRollout(ctx, hs[1], index) }
	left := follow(index)
	waitFollowing(t, hs[1])
	hs[1].Release(ctx)
	<-got
	// The release asked for again: the coordinator writes its document.
	if _, _, err := hs[1].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	var w waited
	select {
	case w = <-left:
	case <-ctx.Done():
		t.Fatal("host-01's follower did not return once it left the line")
	}
	_, meta, err := cl.KV().Get(RolloutKey(hs[1].Prefix, hs[1].Service), nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.err != nil || w.index > meta.LastIndex {
		t.Errorf("host-01 left the line: its follower read %+v at index %d (%v); the Consul that came back is at index %d", w.doc, w.index, w.err, meta.LastIndex)
	}
	// The coordinator's documents wake the follower: wave b opens.
	p.set("b", true)
	nudge(t, hs[1])
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for w.doc == nil || w.doc.Wave("b") == nil || !w.doc.Wave("b").Open {
		from := w.index
		select {
		case w = <-follow(from):
			if w.err != nil {
				t.Fatalf("host-01's follower: %v", w.err)
			}
		case <-timer.C:
			t.Fatalf("host-01's follower, waiting from index %d, did not wake on the document the coordinator wrote (wave b open)", from)
		}
	}
}

// lookOps reads s's LookOps through c, as a read of the host's records
// brings them along: the pairs that exist.
func lookOps(t *testing.T, c *api.Client, s *Slots) api.KVPairs {
	t.Helper()
	ok, resp, _, err := c.Txn().Txn(s.LookOps(), nil)
	if err != nil || !ok {
		t.Fatalf("read the rollout's keys: %v %v", err, resp)
	}
	var pairs api.KVPairs
	for _, r := range resp.Results {
		if r.KV != nil && r.KV.ModifyIndex != 0 {
			pairs = append(pairs, r.KV)
		}
	}
	return pairs
}
