package agent_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/signature"
)

// signPath writes the signature of the file at p beside it, for "app".
func (s signer) signPath(e *env, p string, at time.Time) {
	e.t.Helper()
	body, err := os.ReadFile(p)
	if err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	c := signature.Claims{Service: "app", Version: "test", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body)), Publisher: "ci", Time: at}
	r := minisign.NewReader(bytes.NewReader(body))
	io.Copy(io.Discard, r)
	if err := os.WriteFile(p+".minisig", r.SignWithComments(s.priv, c.Comment(), "test"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// A signed release installed as a delta whose before hook fails on every
// host trips the fleet's breaker, as the same release installed from its
// archive does: its index is signed, so the checksum it is known by is
// one the publisher vouched for, not a store's claim.
func TestSignedDeltaFailureTripsBreaker(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	ff := &recordingFleet{}
	cfg := e.deferConfig(ff, fmt.Sprintf(`trusted_keys = [%q]
  before "script" {
    command = "! grep -q v2 \"$DROPSHIP_RELEASE_DIR/VERSION\""
  }`, ci.pub.String()))
	r, logs := e.loggedRunner(cfg)
	now := time.Now().UTC().Truncate(time.Second)
	publish := func(v string, changed int, at time.Time) {
		e.publishChunked(v, changed)
		ci.signPath(e, e.store+".chunks", at)
		ci.signPath(e, e.store, at)
	}
	publish("v1", 0, now.Add(-2*time.Minute))
	e.check(r, agent.ResultInstalled)
	publish("v2", 1, now.Add(-time.Minute))
	out := e.check(r, agent.ResultFailed)
	if got := logs.records("downloaded and verified"); len(got) != 2 || got[1]["format"] != "chunks" {
		t.Fatalf("the second install was not a delta: %v", got)
	}
	if out.Phase != agent.PhaseBefore || e.current() != "v1" {
		t.Fatalf("phase %s, err %v, current %q", out.Phase, out.Err, e.current())
	}
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.trips) != 1 || ff.trips[0].Checksum != out.Checksum {
		t.Fatalf("a signed release that fails its before hook, installed as a delta, tripped %+v; want the breaker on %s", ff.trips, out.Checksum)
	}
}

// A signed release installed as a delta raises the replay high-water mark
// to its archive's signing time, as an archive install does: `publish`
// signs the index first and the archive after, so the index's earlier
// time would let the release rolled away from install again once its
// signed bytes are put back.
func TestSignedDeltaReplayAfterRollbackRefused(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	cfg := e.config(fmt.Sprintf("trusted_keys = [%q]", ci.pub.String()))
	r, logs := e.loggedRunner(cfg)
	now := time.Now().UTC().Truncate(time.Second)
	for i, v := range []string{"v1", "v2", "v3"} {
		e.publishChunked(v, i)
		at := now.Add(time.Duration(i-3) * time.Minute)
		ci.signPath(e, e.store+".chunks", at)
		ci.signPath(e, e.store, at.Add(30*time.Second))
		e.check(r, agent.ResultInstalled)
	}
	if got := logs.records("downloaded and verified"); len(got) != 3 || got[2]["format"] != "chunks" {
		t.Fatalf("v3 was not installed as a delta: %v", got)
	}
	for _, want := range []string{"v2", "v1"} {
		if _, err := r.Rollback(t.Context(), ""); err != nil || e.current() != want {
			t.Fatalf("rollback: %v, on %q, want %s", err, e.current(), want)
		}
	}
	// v3, still in the store with its signatures: refused as a replay.
	later := time.Now().Add(time.Second)
	os.Chtimes(e.store, later, later)
	out := e.check(e.runner(cfg), agent.ResultFailed)
	if out.Phase != agent.PhaseSignature || !strings.Contains(out.Err.Error(), "replayed") || e.current() != "v1" {
		t.Fatalf("v3 put back after the rollback: phase %s, err %v, on %q", out.Phase, out.Err, e.current())
	}
}
