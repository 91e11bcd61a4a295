package consul

// The coordinator writes each host's wave key (wave/<node>) as its
// decisions place the host: those of waves that neither are open nor
// open by themselves before the decision's document, the others in the
// background after it or with their grant. It notes what it wrote, by
// each key's index, so that it writes a key again only when it changed.

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"
)

// placeRest places, in the background, the hosts of waves that the
// decision did not place before its document, unless it does already or
// every host is placed.
func (c *coordinator) placeRest(ctx context.Context, checksum string, waves map[string]string) {
	c.placedMu.Lock()
	defer c.placedMu.Unlock()
	if c.placing {
		return
	}
	rest := false
	for node, wave := range waves {
		if !c.isPlaced(node, checksum, wave) {
			rest = true
			break
		}
	}
	if !rest {
		return
	}
	c.placing = true
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		defer func() {
			c.placedMu.Lock()
			c.placing = false
			c.placedMu.Unlock()
		}()
		err := c.place(ctx, checksum, waves, func(string) bool {
			asked, _ := c.asked.Load().(string)
			return asked == checksum // else another release's plan comes
		})
		if err != nil && ctx.Err() == nil {
			c.s.logger().Debug("could not place the hosts in their waves", "service", c.s.Service, "error", err)
		}
	}()
}

// unplaced returns the wave w is to be granted with when its wave key
// is not written yet ("" when it is, or w is outside the plan).
func (c *coordinator) unplaced(w want) string {
	p := c.plan
	if p == nil || w.checksum == "" || w.checksum != p.doc.Checksum {
		return ""
	}
	wave := p.waves[w.node]
	if wave == "" {
		return ""
	}
	c.placedMu.Lock()
	defer c.placedMu.Unlock()
	if c.isPlaced(w.node, w.checksum, wave) {
		return ""
	}
	return wave
}

// placedKey is a host's wave key as written, and the index of the write.
type placedKey struct {
	Placement
	index uint64
}

// isPlaced says whether node's wave key was noted written as wave of
// checksum (c.placedMu held).
func (c *coordinator) isPlaced(node, checksum, wave string) bool {
	return c.placed[node].Placement == Placement{Checksum: checksum, Wave: wave}
}

// notePlace notes node's wave key written as p at index (c.placedMu
// held), unless a later write is noted already: the placements of two
// decisions (the background placement of the release before, still
// under way, and the next release's) can land in any order, and the
// key holds the last.
func (c *coordinator) notePlace(node string, p Placement, index uint64) {
	if index == 0 || index < c.placed[node].index {
		return // not known: placed again when it is looked at next
	}
	c.placed[node] = placedKey{p, index}
}

// notePlaced notes the wave keys of nodes written with their grants;
// results are their operations' results, in order.
func (c *coordinator) notePlaced(p *planned, nodes []string, results api.TxnResults) {
	c.placedMu.Lock()
	defer c.placedMu.Unlock()
	for i, node := range nodes {
		if i < len(results) && results[i].KV != nil {
			c.notePlace(node, Placement{Checksum: p.doc.Checksum, Wave: p.waves[node]}, results[i].KV.ModifyIndex)
		}
	}
}

// placeOp writes node's wave key.
func (c *coordinator) placeOp(checksum, node, wave string) *api.TxnOp {
	v, _ := json.Marshal(Placement{Checksum: checksum, Wave: wave})
	return &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: WaveKey(c.s.Prefix, c.s.Service, node), Value: v}}
}

// place writes the wave keys of the hosts not placed yet whose wave
// which takes, up to maxOps-1 a transaction, each checking the coord
// key, a few transactions at once.
func (c *coordinator) place(ctx context.Context, checksum string, waves map[string]string, which func(wave string) bool) error {
	s := c.s
	var batches [][]string
	var batch []string
	c.placedMu.Lock()
	for node, wave := range waves {
		if c.isPlaced(node, checksum, wave) || !which(wave) {
			continue
		}
		batch = append(batch, node)
		if len(batch) == maxOps-1 {
			batches, batch = append(batches, batch), nil
		}
	}
	c.placedMu.Unlock()
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	errs := make([]error, len(batches))
	written := make([]api.TxnResults, len(batches))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, b := range batches {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if !which(waves[b[0]]) {
				return // taken back meanwhile: another release is asked for
			}
			ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: CoordKey(s.Prefix, s.Service), Session: c.se.id}}}
			for _, node := range b {
				ops = append(ops, c.placeOp(checksum, node, waves[node]))
			}
			ok, resp, _, err := s.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
			switch {
			case err != nil:
				errs[i] = err
			case !ok:
				errs[i] = fmt.Errorf("place hosts in waves: %v", resp.Errors)
				for _, e := range resp.Errors {
					if e.OpIndex == 0 {
						errs[i] = errNotCoordinator
					}
				}
			default:
				written[i] = resp.Results[min(1, len(resp.Results)):] // after the check
			}
		}()
	}
	wg.Wait()
	c.placedMu.Lock()
	for i, b := range batches {
		// Only what was written: a batch taken back (another release
		// asked for) is placed when its release is asked for again.
		for j, node := range b {
			if j < len(written[i]) && written[i][j].KV != nil {
				c.notePlace(node, Placement{Checksum: checksum, Wave: waves[node]}, written[i][j].KV.ModifyIndex)
			}
		}
	}
	c.placedMu.Unlock()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
