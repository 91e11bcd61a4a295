package consul

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"
	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
)

// Operators' records (holds, freezes, pins, approvals, clears) can be
// signed with an operator's minisign key. The signature covers a message
// that names the service, the action, the record's key, the Consul index
// at which the key was created, the signing time, and the record itself:
//
//	dropship-operator-record v1
//	service=api
//	action=pin
//	key=rollout/pins/0123abcd
//	index=4711
//	time=1795000000000000000
//	record={"nodes":"web-*","target":"…","who":"alice@laptop","time":"…"}
//
// A signed record cannot be copied to another service or key (both are
// named), nor written again once removed: a key written anew is created at
// another index (Consul never reuses one), so the signature no longer
// matches it. The signer creates the key (unsigned) first, reads the index
// it was created at, then writes the signed record with a check-and-set.
const operatorMagic = "dropship-operator-record v1"

// OperatorKey is a public key whose holder may sign operators' records,
// with the name the audit log and `fleet status` show for it.
type OperatorKey struct {
	Name string
	Key  minisign.PublicKey
}

// Signer signs the operators' records this Fleet writes.
type Signer struct {
	Key  minisign.PrivateKey
	Name string // who, as the agents' operator_keys name the key
}

// signedEnvelope is added to a signed record beside its fields (which stay
// readable to agents that do not check signatures): msg is what was
// signed, sig the minisign signature of it.
type signedEnvelope struct {
	Msg string `json:"msg"`
	Sig string `json:"sig"`
}

// actionOf names the action of the record at key (relative to the
// service's folder), or "" for a key that is not an operator's record.
func actionOf(rel string) string {
	switch {
	case rel == "hold":
		return fleet.EventHold
	case rel == "rollout/freeze":
		return fleet.EventFreeze
	case strings.HasPrefix(rel, "rollout/pins/"):
		return fleet.EventPin
	case strings.HasPrefix(rel, "rollout/approve/"):
		return fleet.EventApprove
	case strings.HasPrefix(rel, "rollout/cleared/"):
		return fleet.EventClear
	}
	return ""
}

// ErrUnsigned: a record the agents would ignore (they list
// operator_keys, and the writer has no key, or one not among them).
var ErrUnsigned = errors.New("not signed by one of this config's operator_keys")

// signable says whether a record this Fleet writes would be acted on:
// with operator_keys in the config, only one signed by one of them is, so
// an unsigned write (a hold in an incident) would look done and do
// nothing. Without operator_keys the config cannot tell.
func (p *Fleet) signable() error {
	if len(p.OperatorKeys) == 0 {
		return nil
	}
	if p.Signer == nil {
		return fmt.Errorf("%w: agents with operator_keys would ignore it; sign it with --operator-key (or $DROPSHIP_OPERATOR_KEY)", ErrUnsigned)
	}
	if p.OperatorKeyName(p.Signer.Key.ID()) == "" {
		return fmt.Errorf("%w: the operator key (id %016X) is not among them, and agents that list theirs would ignore it", ErrUnsigned, p.Signer.Key.ID())
	}
	return nil
}

// putOperator writes an operator's record v at key, signed when p has a
// Signer. Unsigned, it is a plain write, as before operator keys; it is
// refused when the config lists operator_keys (signable).
func (p *Fleet) putOperator(ctx context.Context, service, key string, v any) error {
	if err := p.signable(); err != nil {
		return err
	}
	if p.Signer == nil {
		return p.put(ctx, key, v)
	}
	rel := strings.TrimPrefix(key, p.Prefix+"/"+service+"/")
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	kv := p.Client.KV()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	// A key written anew: delete it, create it (unsigned: agents that check
	// signatures ignore it until it is signed), and sign its creation index.
	if _, err := kv.Delete(key, wo); err != nil {
		return fmt.Errorf("%w: write %s: %v", fleet.ErrUnavailable, key, err)
	}
	ok, _, err := kv.CAS(&api.KVPair{Key: key, Value: body}, wo)
	if err != nil {
		return fmt.Errorf("%w: write %s: %v", fleet.ErrUnavailable, key, err)
	}
	if !ok {
		return fmt.Errorf("write %s: written by someone else meanwhile; try again", key)
	}
	cur, _, err := kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, key, err)
	}
	if cur == nil {
		return fmt.Errorf("write %s: removed by someone else meanwhile; try again", key)
	}
	msg := operatorMessage(service, actionOf(rel), rel, cur.CreateIndex, time.Now(), body)
	sig := minisign.Sign(p.Signer.Key, []byte(msg))
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return err
	}
	env, _ := json.Marshal(signedEnvelope{Msg: msg, Sig: string(sig)})
	fields["signed"] = env
	out, _ := json.Marshal(fields)
	ok, _, err = kv.CAS(&api.KVPair{Key: key, Value: out, ModifyIndex: cur.ModifyIndex}, wo)
	if err != nil {
		return fmt.Errorf("%w: write %s: %v", fleet.ErrUnavailable, key, err)
	}
	if !ok {
		return fmt.Errorf("write %s: written by someone else meanwhile; try again", key)
	}
	return nil
}

func operatorMessage(service, action, rel string, index uint64, t time.Time, record []byte) string {
	return fmt.Sprintf("%s\nservice=%s\naction=%s\nkey=%s\nindex=%d\ntime=%d\nrecord=%s",
		operatorMagic, service, action, rel, index, t.UnixNano(), record)
}

// operatorRecord is the one place operators' records are accepted from
// Consul: every reader of a hold, freeze, pin, approval or clear (Blocked,
// Status, and through Status every rollout decision and the dashboard)
// goes through it. Without operator_keys it decodes the record as written.
// With them it decodes only what a listed key signed for this service,
// this key and this creation of it, and returns the key's name as who;
// anything else is an error that says why the record is ignored.
func (p *Fleet) operatorRecord(service string, kv *api.KVPair, v any) (who string, err error) {
	if len(p.OperatorKeys) == 0 {
		return "", json.Unmarshal(kv.Value, v)
	}
	rel := strings.TrimPrefix(kv.Key, p.Prefix+"/"+service+"/")
	var env struct {
		Signed *signedEnvelope `json:"signed"`
	}
	if err := json.Unmarshal(kv.Value, &env); err != nil {
		return "", fmt.Errorf("unreadable: %v", err)
	}
	if env.Signed == nil {
		return "", fmt.Errorf("not signed by an operator key")
	}
	var sig minisign.Signature
	if err := sig.UnmarshalText([]byte(env.Signed.Sig)); err != nil {
		return "", fmt.Errorf("not a minisign signature: %v", err)
	}
	var key *OperatorKey
	for i := range p.OperatorKeys {
		if p.OperatorKeys[i].Key.ID() == sig.KeyID {
			key = &p.OperatorKeys[i]
			break
		}
	}
	if key == nil {
		return "", fmt.Errorf("signed with a key that is not in operator_keys (key id %016X)", sig.KeyID)
	}
	if !minisign.Verify(key.Key, []byte(env.Signed.Msg), []byte(env.Signed.Sig)) {
		return "", fmt.Errorf("the signature of %s does not match the record", key.Name)
	}
	claims, record, ok := parseOperatorMessage(env.Signed.Msg)
	if !ok {
		return "", fmt.Errorf("signed by %s, but not an operator's record", key.Name)
	}
	switch {
	case claims["service"] != service:
		return "", fmt.Errorf("signed by %s for service %q, not this one (copied?)", key.Name, claims["service"])
	case claims["key"] != rel || claims["action"] != actionOf(rel):
		return "", fmt.Errorf("signed by %s for %s %s, not this record (copied?)", key.Name, claims["action"], claims["key"])
	case claims["index"] != strconv.FormatUint(kv.CreateIndex, 10):
		return "", fmt.Errorf("signed by %s for the record created at index %s; this one was created at %d (written again: a replay?)",
			key.Name, claims["index"], kv.CreateIndex)
	}
	if n, err := strconv.ParseInt(claims["time"], 10, 64); err != nil || fleet.Ahead(time.Unix(0, n), time.Now()) {
		return "", fmt.Errorf("signed by %s with a time in the future or none", key.Name)
	}
	if err := json.Unmarshal(record, v); err != nil {
		return "", fmt.Errorf("signed by %s, but unreadable: %v", key.Name, err)
	}
	return key.Name, nil
}

// parseOperatorMessage splits a signed message into its claims and the
// record (the rest after "record=").
func parseOperatorMessage(msg string) (map[string]string, []byte, bool) {
	head, record, ok := strings.Cut(msg, "\nrecord=")
	if !ok {
		return nil, nil, false
	}
	lines := strings.Split(head, "\n")
	if lines[0] != operatorMagic {
		return nil, nil, false
	}
	claims := map[string]string{}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, nil, false
		}
		claims[k] = v
	}
	return claims, bytes.TrimSpace([]byte(record)), true
}

// ignore notes in st that the record at key is not acted on, and why.
func ignore(st *fleet.Status, key string, err error) {
	st.Ignored = append(st.Ignored, fleet.Ignored{Key: key, Reason: err.Error()})
}

// OperatorKeyName is the name operator_keys give the key of id, or "".
func (p *Fleet) OperatorKeyName(id uint64) string {
	for _, k := range p.OperatorKeys {
		if k.Key.ID() == id {
			return k.Name
		}
	}
	return ""
}

func sortIgnored(st *fleet.Status) {
	sort.Slice(st.Ignored, func(i, j int) bool { return st.Ignored[i].Key < st.Ignored[j].Key })
}
