package consul

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
)

// manyPlanner plans nodes into wave "a", open, for release "A"; any
// other release cannot be decided (its records unreadable), and each
// such call is told on other.
type manyPlanner struct {
	nodes []string
	other chan string
}

func (p *manyPlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	if sum != "A" {
		select {
		case p.other <- sum:
		default:
		}
		return lock.Rollout{Checksum: sum}, nil, errors.New("the records cannot be read")
	}
	waves := map[string]string{}
	for _, n := range p.nodes {
		waves[n] = "a"
	}
	return lock.Rollout{Checksum: sum, Waves: []lock.WaveState{{Name: "a", Open: true, Hosts: len(p.nodes)}}}, waves, nil
}

// holdTxns points s's client at one that holds each transaction whose
// body contains mark until release is closed, counting them in held.
func holdTxns(t *testing.T, s *Slots, mark string, release <-chan struct{}, held *atomic.Int64) {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if strings.HasPrefix(r.URL.Path, "/v1/txn") && r.Body != nil {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				return nil, err
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
			if bytes.Contains(b, []byte(mark)) {
				held.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
					return nil, r.Context().Err()
				}
			}
		}
		return http.DefaultTransport.RoundTrip(r)
	})}})
	if err != nil {
		t.Fatal(err)
	}
	s.Client = c
}

// wrongPlaces returns the nodes whose wave key does not say wave of sum.
func wrongPlaces(s *Slots, nodes []string, sum, wave string) ([]string, error) {
	pairs, _, err := s.Client.KV().List(WavePrefix(s.Prefix, s.Service), &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return nil, err
	}
	got := map[string]Placement{}
	for _, kv := range pairs {
		var p Placement
		json.Unmarshal(kv.Value, &p)
		got[kv.Key[len(WavePrefix(s.Prefix, s.Service)):]] = p
	}
	var wrong []string
	for _, n := range nodes {
		if got[n] != (Placement{Checksum: sum, Wave: wave}) {
			wrong = append(wrong, n)
		}
	}
	return wrong, nil
}

// The background placement of a release, cut short because another
// release is asked for, leaves the hosts it did not come to unplaced:
// when the first release is asked for again, they are placed.
func TestPlacementCutShortPlacesTheRestLater(t *testing.T) {
	hs := hosts(t, 1, 1)
	// More hosts than the placement writes at once (8 transactions of 63).
	p := &manyPlanner{other: make(chan string, 1)}
	for i := range 12 * 63 {
		p.nodes = append(p.nodes, fmt.Sprintf("n-%03d", i))
	}
	hs[0].SetPlanner(p)
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	var held atomic.Int64
	holdTxns(t, hs[0], "/wave/n-", release, &held)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	// The placement of A's hosts (wave a is open: in the background)
	// runs its first transactions, held here.
	testutil.Eventually(t, 20*time.Second, func() error {
		if n := held.Load(); n < 8 {
			return fmt.Errorf("%d placements under way", n)
		}
		return nil
	})
	// B is asked for (and cannot be decided), then A again.
	put := func(sum string) {
		b, _ := json.Marshal(Placement{Checksum: sum})
		if _, err := hs[0].Client.KV().Put(&api.KVPair{Key: ReleaseKey(hs[0].Prefix, "app"), Value: b}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("B")
	select {
	case <-p.other:
	case <-ctx.Done():
		t.Fatal("B was not decided")
	}
	free()
	put("A")
	testutil.Eventually(t, 20*time.Second, func() error {
		wrong, err := wrongPlaces(hs[0], p.nodes, "A", "a")
		if err == nil && len(wrong) > 0 {
			err = fmt.Errorf("%d hosts of A not placed in wave a (%s, ...)", len(wrong), wrong[0])
		}
		return err
	})
}

// twoPlanner plans nodes into wave "a", open, for release "A" (placed
// in the background, once the document is written), and into wave "c",
// closed, for any other release (placed before its document).
type twoPlanner struct {
	nodes []string
}

func (p *twoPlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	wave, ws := "a", lock.WaveState{Name: "a", Open: true, Hosts: len(p.nodes)}
	if sum != "A" {
		wave, ws = "c", lock.WaveState{Name: "c", Reason: "awaiting an approval", Hosts: len(p.nodes)}
	}
	waves := map[string]string{}
	for _, n := range p.nodes {
		waves[n] = wave
	}
	return lock.Rollout{Checksum: sum, Waves: []lock.WaveState{ws}}, waves, nil
}

// placing returns the checksum of the wave keys a transaction body
// writes ("" when none).
func placing(body []byte) string {
	var ops []struct {
		KV *struct {
			Verb  string
			Key   string
			Value []byte
		}
	}
	json.Unmarshal(body, &ops)
	for _, op := range ops {
		if op.KV != nil && op.KV.Verb == string(api.KVSet) && strings.Contains(op.KV.Key, "/wave/") {
			var p Placement
			json.Unmarshal(op.KV.Value, &p)
			return p.Checksum
		}
	}
	return ""
}

// A placement of the previous release's hosts still under way when the
// next release is decided may land after the next release's placement
// of the same hosts: the coordinator's note of what is placed follows
// what Consul holds last, and the hosts are placed again.
func TestPlacementOfTheOldReleaseLandingLateIsPlacedAgain(t *testing.T) {
	hs := hosts(t, 1, 1)
	p := &twoPlanner{}
	for i := range 100 { // two transactions
		p.nodes = append(p.nodes, fmt.Sprintf("n-%03d", i))
	}
	hs[0].SetPlanner(p)
	s := hs[0]
	placingDone := func() bool {
		s.mu.Lock()
		c := s.coord
		s.mu.Unlock()
		if c == nil {
			return false
		}
		c.placedMu.Lock()
		defer c.placedMu.Unlock()
		return !c.placing
	}
	var heldA atomic.Int64
	bFirst := make(chan struct{}) // B's first placement is written
	var bOnce sync.Once
	var bSeen atomic.Int64
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if !strings.HasPrefix(r.URL.Path, "/v1/txn") || r.Body == nil {
			return http.DefaultTransport.RoundTrip(r)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		switch placing(b) {
		case "A":
			// A's placement: held until B's first is written (or a
			// while, if B's waits for it).
			heldA.Add(1)
			t := time.NewTimer(3 * time.Second)
			defer t.Stop()
			select {
			case <-bFirst:
			case <-t.C:
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
		case "B":
			switch bSeen.Add(1) {
			case 1:
				resp, err := http.DefaultTransport.RoundTrip(r)
				bOnce.Do(func() { close(bFirst) })
				return resp, err
			case 2:
			default:
				return http.DefaultTransport.RoundTrip(r)
			}
			// B's second: once A's placement has ended.
			for !placingDone() {
				select {
				case <-time.After(5 * time.Millisecond):
				case <-r.Context().Done():
					return nil, r.Context().Err()
				}
			}
		}
		return http.DefaultTransport.RoundTrip(r)
	})}})
	if err != nil {
		t.Fatal(err)
	}
	s.Client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if n := heldA.Load(); n < 2 {
			return fmt.Errorf("%d placements of A under way", n)
		}
		return nil
	})
	b, _ := json.Marshal(Placement{Checksum: "B"})
	if _, err := s.Client.KV().Put(&api.KVPair{Key: ReleaseKey(s.Prefix, "app"), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		wrong, err := wrongPlaces(s, p.nodes, "B", "c")
		if err == nil && len(wrong) > 0 {
			err = fmt.Errorf("%d hosts of B not placed in wave c (%s, ...)", len(wrong), wrong[0])
		}
		return err
	})
}
