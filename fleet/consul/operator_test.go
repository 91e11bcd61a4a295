package consul

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/dropshipd/dropship/fleet"
)

func operatorKey(t *testing.T) (minisign.PublicKey, minisign.PrivateKey) {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// writeAll writes one record of each operator's kind for service.
func writeAll(t *testing.T, p *Fleet, service string) {
	t.Helper()
	ctx := context.Background()
	if err := p.Hold(ctx, service, fleet.Hold{Reason: "r", Who: "mallory"}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetFreeze(ctx, service, &fleet.Freeze{Reason: "r", Who: "mallory"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SetPin(ctx, service, "web-*", &fleet.Pin{Target: "old", Who: "mallory"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Approve(ctx, service, fleet.Approval{Checksum: "abc", Wave: "1", Who: "mallory"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Trip(ctx, service, fleet.Breaker{Checksum: "abc"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := p.Clear(ctx, service, "abc"); err != nil || !ok {
		t.Fatal(ok, err)
	}
}

// With operator_keys, an agent acts only on operators' records signed by
// one of the keys: unsigned ones, ones signed by another key, copied to
// another service or key, or written again after they were removed, are
// ignored, and Status says which and why. The signer's name in
// operator_keys is who.
func TestOperatorRecordsNeedAnOperatorsSignature(t *testing.T) {
	ctx := context.Background()
	pub, priv := operatorKey(t)
	_, otherPriv := operatorKey(t)
	agent := newFleet(t, "agent")
	agent.OperatorKeys = []OperatorKey{{Name: "alice", Key: pub}}
	writer := func(signer *Signer) *Fleet {
		w := *agent
		w.OperatorKeys, w.Signer = nil, signer
		return &w
	}

	// Unsigned (as a compromised host or a stolen token would write them),
	// and signed by a key the agents do not list.
	for svc, w := range map[string]*Fleet{"unsigned": writer(nil), "stranger": writer(&Signer{Key: otherPriv, Name: "eve"})} {
		writeAll(t, w, svc)
		if why, err := agent.Blocked(ctx, svc, "other"); err != nil || why != "" {
			t.Errorf("%s: a hold no operator key signed blocks: %q, %v", svc, why, err)
		}
		st, err := agent.Status(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		if st.Hold != nil || st.Freeze != nil || len(st.Pins) > 0 || len(st.Approvals) > 0 || len(st.Cleared) > 0 {
			t.Errorf("%s: acted on: %+v", svc, st)
		}
		if len(st.Ignored) != 5 {
			t.Errorf("%s: ignored %+v, want the hold, freeze, pin, approval and clear", svc, st.Ignored)
		}
		want := "not signed by an operator key"
		if svc == "stranger" {
			want = "not in operator_keys"
		}
		for _, ig := range st.Ignored {
			if !strings.Contains(ig.Reason, want) {
				t.Errorf("%s: %s ignored because %q, want %q", svc, ig.Key, ig.Reason, want)
			}
		}
		// Without operator_keys every record is acted on, as before.
		plain := writer(nil)
		if st, err := plain.Status(ctx, svc); err != nil || st.Hold == nil || st.Freeze == nil || len(st.Pins) != 1 || len(st.Approvals) != 1 || len(st.Ignored) != 0 {
			t.Errorf("%s without operator_keys: %+v, %v", svc, st, err)
		}
	}

	// Signed by alice: acted on, alice is who.
	alice := writer(&Signer{Key: priv, Name: "alice"})
	writeAll(t, alice, "api")
	why, err := agent.Blocked(ctx, "api", "other")
	if err != nil || !strings.Contains(why, "by alice") {
		t.Errorf("signed hold: blocked %q, %v", why, err)
	}
	st, err := agent.Status(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Ignored) != 0 || st.Hold == nil || st.Freeze == nil || len(st.Pins) != 1 || len(st.Approvals) != 1 || len(st.Cleared) != 1 {
		t.Fatalf("signed records: %+v", st)
	}
	if st.Hold.Who != "alice" || st.Freeze.Who != "alice" || st.Pins[0].Who != "alice" || st.Approvals[0].Who != "alice" {
		t.Errorf("who is what the record claims, not the key's name: %+v %+v %+v %+v", st.Hold, st.Freeze, st.Pins[0], st.Approvals[0])
	}

	// Replays with a token that writes the prefix: the signed pin copied
	// to another service, to another pin's key, and written again after
	// an operator removed it.
	kv := agent.Client.KV()
	pins, _, err := kv.List(fleet.RolloutKey(agent.Prefix, "api")+"pins/", nil)
	if err != nil || len(pins) != 1 {
		t.Fatal(pins, err)
	}
	signed := pins[0]
	copyTo := func(key string) {
		t.Helper()
		if _, err := kv.Put(&api.KVPair{Key: key, Value: signed.Value}, nil); err != nil {
			t.Fatal(err)
		}
	}
	copyTo(strings.Replace(signed.Key, "/api/", "/web/", 1))
	copyTo(fleet.RolloutKey(agent.Prefix, "api") + "pins/0000000000000000")
	if st, err := agent.Status(ctx, "web"); err != nil || len(st.Pins) != 0 || len(st.Ignored) != 1 || !strings.Contains(st.Ignored[0].Reason, "service") {
		t.Errorf("a signed pin copied to another service: %+v, %v", st, err)
	}
	if _, err := alice.SetPin(ctx, "api", "web-*", nil); err != nil {
		t.Fatal(err)
	}
	copyTo(signed.Key)
	st, err = agent.Status(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Pins) != 0 || len(st.Ignored) != 2 {
		t.Fatalf("replayed pins acted on: %+v, ignored %+v", st.Pins, st.Ignored)
	}
	reasons := st.Ignored[0].Reason + " | " + st.Ignored[1].Reason
	if !strings.Contains(reasons, "not this record") || !strings.Contains(reasons, "a replay?") {
		t.Errorf("ignored because %s", reasons)
	}
}

// operator_keys in lock "consul": keys by name, base64 or a .pub file; a
// key that is neither is an error that names it.
func TestOperatorKeysConfig(t *testing.T) {
	pub, _ := operatorKey(t)
	dir := t.TempDir()
	text, _ := pub.MarshalText()
	if err := os.WriteFile(filepath.Join(dir, "bob.pub"), text, 0o644); err != nil {
		t.Fatal(err)
	}
	decode := func(src string) (*Fleet, hcl.Diagnostics) {
		f, diags := hclsyntax.ParseConfig([]byte(src), "dropship.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		a, diags := Factory("consul", f.Body, fleet.Env{BaseDir: dir, NodeName: "web-1"})
		p, _ := a.(*Fleet)
		return p, diags
	}
	p, diags := decode(fmt.Sprintf("operator_keys = { alice = %q, bob = \"bob.pub\" }\n", pub.String()))
	if diags.HasErrors() || len(p.OperatorKeys) != 2 || p.OperatorKeyName(pub.ID()) != "alice" || p.OperatorKeys[1].Name != "bob" {
		t.Fatalf("keys %+v, %v", p, diags)
	}
	_, diags = decode("operator_keys = { mallory = \"nonsense\" }\n")
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "Invalid operator key") || !strings.Contains(diags.Error(), "mallory") {
		t.Fatalf("a bad key: %v", diags)
	}
}

// A config that lists operator_keys writes only records the agents would
// act on: without a key, or with one not among them, hold, freeze, pin,
// approve and clear are refused (an unsigned hold in an incident would
// look in force and stop nothing), and clear leaves the breaker as it is.
func TestUnsignedWritesRefusedWithOperatorKeys(t *testing.T) {
	ctx := context.Background()
	pub, priv := operatorKey(t)
	_, otherPriv := operatorKey(t)
	for name, signer := range map[string]*Signer{"no key": nil, "another key": {Key: otherPriv, Name: "eve"}} {
		p := newFleet(t, "ops-desk")
		p.OperatorKeys = []OperatorKey{{Name: "alice", Key: pub}}
		p.Signer = signer
		if err := p.Trip(ctx, "app", fleet.Breaker{Checksum: "abc"}); err != nil {
			t.Fatal(err)
		}
		errs := map[string]error{
			"hold":    p.Hold(ctx, "app", fleet.Hold{Reason: "r"}),
			"freeze":  p.SetFreeze(ctx, "app", &fleet.Freeze{Reason: "r"}),
			"approve": p.Approve(ctx, "app", fleet.Approval{Checksum: "abc", Wave: "1"}),
		}
		_, errs["pin"] = p.SetPin(ctx, "app", "web-*", &fleet.Pin{Target: "old"})
		_, errs["clear"] = p.Clear(ctx, "app", "abc")
		for what, err := range errs {
			if !errors.Is(err, ErrUnsigned) {
				t.Errorf("%s: %s with operator_keys: %v, want refused", name, what, err)
			}
		}
		st, err := p.Status(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		if st.Hold != nil || st.Freeze != nil || len(st.Pins)+len(st.Approvals)+len(st.Ignored)+len(st.Cleared) != 0 || len(st.Breakers) != 1 {
			t.Errorf("%s: refused writes left records: %+v", name, st)
		}
	}
	// Signed by a listed key, it is written.
	p := newFleet(t, "ops-desk")
	p.OperatorKeys = []OperatorKey{{Name: "alice", Key: pub}}
	p.Signer = &Signer{Key: priv, Name: "alice"}
	if err := p.Hold(ctx, "app", fleet.Hold{Reason: "r"}); err != nil {
		t.Fatal(err)
	}
	if why, err := p.Blocked(ctx, "app", "abc"); err != nil || !strings.Contains(why, "by alice") {
		t.Errorf("a hold signed by alice: %q, %v", why, err)
	}
}
