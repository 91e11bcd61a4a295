package agent_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
)

type signer struct {
	pub  minisign.PublicKey
	priv minisign.PrivateKey
}

func newSigner(t *testing.T) signer {
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer{pub, priv}
}

// sign writes the signature of the store's artifact beside it; edit may
// change the claims.
func (s signer) sign(e *env, edit func(*signature.Claims)) {
	e.t.Helper()
	body, err := os.ReadFile(e.store)
	if err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	c := signature.Claims{Service: "app", Version: "test", SHA256: hex.EncodeToString(sum[:]), Publisher: "ci", Time: time.Now().UTC()}
	if edit != nil {
		edit(&c)
	}
	r := minisign.NewReader(bytes.NewReader(body))
	io.Copy(io.Discard, r)
	if err := os.WriteFile(e.store+".minisig", r.SignWithComments(s.priv, c.Comment(), "test"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func keysConfig(e *env, trusted []signer, revoked ...signer) string {
	var t, r []string
	for _, s := range trusted {
		t = append(t, fmt.Sprintf("%q", s.pub.String()))
	}
	// One of them as a .pub file, as operators deploy them.
	if len(t) > 0 {
		path := filepath.Join(e.dir, "keys", "first.pub")
		os.MkdirAll(filepath.Dir(path), 0o755)
		b, _ := trusted[0].pub.MarshalText()
		os.WriteFile(path, b, 0o644)
		t[0] = fmt.Sprintf("%q", path)
	}
	for _, s := range revoked {
		r = append(r, fmt.Sprintf("%q", s.pub.String()))
	}
	cfg := "trusted_keys = [" + strings.Join(t, ", ") + "]\n"
	if len(r) > 0 {
		cfg += "revoked_keys = [" + strings.Join(r, ", ") + "]\n"
	}
	return cfg + fmt.Sprintf(`before "script" {
    command = "echo before >> %s"
  }`, e.log)
}

// With trusted_keys, only a release signed by a trusted key, for this
// service and not older than the installed one, is installed; every
// refusal keeps the current release, runs no hook and is recorded.
func TestSignedReleases(t *testing.T) {
	ci, other := newSigner(t), newSigner(t)
	for _, tc := range []struct {
		name    string
		prepare func(e *env)
		revoked []signer
		want    string
	}{
		{"unsigned", func(e *env) { os.Remove(e.store + ".minisig") }, nil, "no signature"},
		{"forged", func(e *env) {
			ci.sign(e, nil)
			b, _ := os.ReadFile(e.store + ".minisig")
			lines := strings.Split(string(b), "\n")
			sig := []byte(lines[1])
			sig[20] ^= 'A' ^ 'B'
			lines[1] = string(sig)
			os.WriteFile(e.store+".minisig", []byte(strings.Join(lines, "\n")), 0o644)
		}, nil, "refused"},
		{"untrusted key", func(e *env) { other.sign(e, nil) }, nil, "not trusted"},
		{"revoked key", func(e *env) { ci.sign(e, nil) }, []signer{ci}, "revoked"},
		{"other service", func(e *env) { ci.sign(e, func(c *signature.Claims) { c.Service = "billing" }) }, nil, "another service"},
		{"replayed older release", func(e *env) {
			ci.sign(e, func(c *signature.Claims) { c.Time = time.Now().Add(-24 * time.Hour) })
		}, nil, "replayed"},
		// A signing machine with its clock years ahead would otherwise
		// make every later release look like a replay of an older one.
		{"signed in the future", func(e *env) {
			ci.sign(e, func(c *signature.Claims) { c.Time = time.Now().Add(365 * 24 * time.Hour) })
		}, nil, "in the future"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.publish("v1")
			ci.sign(e, nil)
			cfg := e.config(keysConfig(e, []signer{ci, other}[:1], tc.revoked...))
			if len(tc.revoked) > 0 {
				// v1 is installed before the key is revoked.
				e.check(e.runner(e.config(keysConfig(e, []signer{ci}))), agent.ResultInstalled)
			} else {
				e.check(e.runner(cfg), agent.ResultInstalled)
			}
			os.Remove(e.log)
			e.publish("v2")
			tc.prepare(e)
			r := e.runner(cfg)
			out := e.check(r, agent.ResultFailed)
			if out.Phase != agent.PhaseSignature || !strings.Contains(out.Err.Error(), tc.want) {
				t.Fatalf("phase %s, error %v; want %q", out.Phase, out.Err, tc.want)
			}
			if e.current() != "v1" || e.hookLog() != "" {
				t.Fatalf("current %q, hooks ran: %q", e.current(), e.hookLog())
			}
			if f := e.state_(r).Failures[out.Checksum]; f == nil || f.Phase != "signature" {
				t.Fatalf("failure not recorded: %+v", e.state_(r).Failures)
			}
			// An operator may still go back to a kept release.
			if _, err := r.Rollback(t.Context(), ""); err == nil {
				t.Fatal("rolled back with only one release kept")
			}
		})
	}
}

// A good signature installs and is recorded; a second trusted key (key
// rotation) installs the next; an operator rollback needs no signature.
func TestSignedReleaseRotationAndRollback(t *testing.T) {
	old, next := newSigner(t), newSigner(t)
	e := newEnv(t)
	cfg := e.config(keysConfig(e, []signer{old, next}))
	e.publish("v1")
	old.sign(e, nil)
	r := e.runner(cfg)
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	next.sign(e, func(c *signature.Claims) { c.Version = "build-2" })
	e.check(r, agent.ResultInstalled)
	st := e.state_(r)
	cur, _ := st.Releases[len(st.Releases)-1], 0
	if cur.Signed == nil || cur.Signed.Version != "build-2" || cur.Signed.KeyID != fmt.Sprintf("%016X", next.pub.ID()) {
		t.Fatalf("signature not recorded: %+v", cur.Signed)
	}
	if _, err := r.Rollback(t.Context(), ""); err != nil || e.current() != "v1" {
		t.Fatalf("rollback: %v, current %q", err, e.current())
	}
}

// A signature whose authenticated claims name other bytes (the artifact
// was replaced before its signature) is refused before the artifact is
// read: a failure, counted and backed off on this host (not fetched
// again every check), which does not trip the fleet's breaker; the
// right signature installs once the back-off is over.
func TestStaleSignatureBacksOff(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	cfg := e.config(keysConfig(e, []signer{ci}))
	e.publish("v1")
	ci.sign(e, nil)
	r := e.runner(cfg)
	e.check(r, agent.ResultInstalled)
	e.publish("v2") // the v1 signature is still beside it
	out := e.check(r, agent.ResultFailed)
	if out.Phase != agent.PhaseSignature || !strings.Contains(out.Err.Error(), "other bytes") || !strings.Contains(out.Err.Error(), "nothing was downloaded") {
		t.Fatalf("phase %s err %v", out.Phase, out.Err)
	}
	if f := e.state_(r).Failures[out.Checksum]; f == nil || f.Count != 1 {
		t.Fatalf("a stale signature not counted as a failure: %+v", e.state_(r).Failures)
	}
	ci.sign(e, nil)
	e.check(r, agent.ResultSkipped) // backed off
	r.SetClock(func() time.Time { return time.Now().Add(time.Hour) })
	e.check(r, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatal(e.current())
	}
}

// A host whose clock is behind the store's installs a release signed
// when the store received it: the future is judged from the later of
// the two clocks, so the host's clock alone does not refuse the release
// (and trip the fleet's breaker).
func TestSignedReleaseOnAHostWithItsClockBehind(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	r := e.runner(e.config(keysConfig(e, []signer{ci})))
	e.publish("v1")
	ci.sign(e, nil)
	e.check(r, agent.ResultInstalled)
	e.publish("v2")
	ahead := time.Now().Add(48 * time.Hour)
	ci.sign(e, func(c *signature.Claims) { c.Time = ahead })
	os.Chtimes(e.store, ahead, ahead)
	e.check(r, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatal(e.current())
	}
}

// signedAt signs the store's artifact as signed at t, and returns the
// artifact and its signature, to put back later.
func (s signer) signedAt(e *env, at time.Time) (body, sig []byte) {
	e.t.Helper()
	s.sign(e, func(c *signature.Claims) { c.Time = at })
	body, _ = os.ReadFile(e.store)
	sig, _ = os.ReadFile(e.store + ".minisig")
	return body, sig
}

// The replay rule holds against the newest release ever installed, kept
// in the state: after an operator rolls back (which may go to a release
// signed earlier, and says so), the release rolled away from does not
// install again by putting its signed bytes back, also after a restart.
func TestReplayAfterRollbackRefused(t *testing.T) {
	ci := newSigner(t)
	e := newEnv(t)
	cfg := e.config(keysConfig(e, []signer{ci}))
	var logs bytes.Buffer
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	var v3, v3sig []byte
	for i, v := range []string{"v1", "v2", "v3"} {
		e.publish(v)
		v3, v3sig = ci.signedAt(e, now.Add(time.Duration(i-3)*time.Minute))
		e.check(r, agent.ResultInstalled)
	}
	for _, want := range []string{"v2", "v1"} {
		if _, err := r.Rollback(t.Context(), ""); err != nil || e.current() != want {
			t.Fatalf("rollback: %v, on %q, want %s", err, e.current(), want)
		}
	}
	if !strings.Contains(logs.String(), "signed before the newest one installed here") {
		t.Fatalf("the operator's rollback to an older signed release is not said:\n%s", logs.String())
	}
	st := e.state_(r)
	if st.NewestSigned == nil || !st.NewestSigned.Time.Equal(now.Add(-time.Minute)) {
		t.Fatalf("high-water mark %+v, want v3's signing time", st.NewestSigned)
	}
	// v3 put back, seen by a new process: refused as a replay.
	os.WriteFile(e.store, v3, 0o644)
	os.WriteFile(e.store+".minisig", v3sig, 0o644)
	later := time.Now().Add(time.Second)
	os.Chtimes(e.store, later, later)
	out := e.check(e.runner(cfg), agent.ResultFailed)
	if out.Phase != agent.PhaseSignature || !strings.Contains(out.Err.Error(), "replayed") || e.current() != "v1" {
		t.Fatalf("v3 put back after the rollback: phase %s, err %v, on %q", out.Phase, out.Err, e.current())
	}
}

// keysRolloutRunner is a runner of the service with keys, whose rollout
// reverts on failure, coordinated through ff.
func keysRolloutRunner(t *testing.T, e *env, ff *fakeFleet, keys string) *agent.Runner {
	t.Helper()
	reg := registry()
	reg.Fleets = map[string]fleet.Factory{"consul": func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return ff, nil }}
	src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
lock "consul" {}
service "app" {
  check_interval = "1s"
  sequential     = true
  artifact "file" {
    path        = %q
    destination = %q
  }
  rollout {
    waves      = ["100%%"]
    on_failure = "revert"
  }
  %s
}
`, e.state, e.store, e.dest, keys)
	path := filepath.Join(e.dir, "rollout.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		t.Fatalf("config: %v", diags)
	}
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A key put in revoked_keys after a release it signed was installed is
// checked whenever that kept release would be current again: an
// operator's rollback, a fleet pin and a fleet revert all refuse it.
func TestRevokedKeyCheckedOnEverySwitchBack(t *testing.T) {
	old, next := newSigner(t), newSigner(t)
	e := newEnv(t)
	r := e.runner(e.config(keysConfig(e, []signer{old, next})))
	e.publish("v1")
	old.sign(e, nil)
	e.check(r, agent.ResultInstalled)
	v1 := e.state_(r).Checksum
	e.publish("v2")
	next.sign(e, nil)
	e.check(r, agent.ResultInstalled)
	v2 := e.state_(r).Checksum

	revoking := keysConfig(e, []signer{next}, old)
	if _, err := e.runner(e.config(revoking)).Rollback(t.Context(), ""); err == nil || !strings.Contains(err.Error(), "revoked") || e.current() != "v2" {
		t.Fatalf("rollback to a release of a revoked key: %v, on %q", err, e.current())
	}

	ff := &fakeFleet{}
	rr := keysRolloutRunner(t, e, ff, revoking)
	ff.st.Pins = []fleet.Pin{{Nodes: "test-*", Target: v1, Who: "ops"}}
	if out := e.check(rr, agent.ResultSkipped); !strings.Contains(out.Reason, "revoked") || e.current() != "v2" {
		t.Fatalf("pin to a release of a revoked key: %q, on %q", out.Reason, e.current())
	}
	ff.st.Pins = nil
	ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
	if out := e.check(rr, agent.ResultSkipped); !strings.Contains(out.Reason, "cannot") || e.current() != "v2" {
		t.Fatalf("revert to a release of a revoked key: %q, on %q", out.Reason, e.current())
	}
}
