package agent_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
