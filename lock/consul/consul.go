// Package consul is the fleet-wide lock: a semaphore in Consul's KV store
// (hashicorp/consul/api) so that only N hosts of a service update at once,
// plus the fleet records every host reads and writes (holds, breakers,
// node status). It fails closed: without Consul no update starts.
package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/hclx"
	"github.com/dropshipd/dropship/lock"
)

// Defaults of the lock block.
const (
	DefaultPrefix     = "dropship"
	DefaultSessionTTL = 15 * time.Second
)

// Provider makes the semaphores of services and is the agent's Fleet.
type Provider struct {
	Client     *api.Client
	Prefix     string
	Node       string
	SessionTTL time.Duration
}

// Client is the connection part of a Consul block, shared by
// `lock "consul"` and the consul-event hook. Unset keys fall back to
// Consul's environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, …).
type Client struct {
	Address    *string `hcl:"address,optional"`
	Scheme     *string `hcl:"scheme,optional"`
	Token      *string `hcl:"token,optional"`
	TokenFile  *string `hcl:"token_file,optional"`
	Datacenter *string `hcl:"datacenter,optional"`
	CAFile     *string `hcl:"ca_file,optional"`
	CertFile   *string `hcl:"cert_file,optional"`
	KeyFile    *string `hcl:"key_file,optional"`
}

// NewClient decodes the connection keys of body and returns a client.
// Nothing is dialled: Consul may be down when the config loads.
func NewClient(body hcl.Body, baseDir string) (*api.Client, hcl.Diagnostics) {
	var c Client
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	cfg := api.DefaultConfig()
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&cfg.Address, c.Address)
	set(&cfg.Scheme, c.Scheme)
	set(&cfg.Token, c.Token)
	set(&cfg.Datacenter, c.Datacenter)
	if c.TokenFile != nil {
		cfg.TokenFile = hclx.Path(baseDir, *c.TokenFile)
		if _, err := os.Stat(cfg.TokenFile); err != nil {
			diags = append(diags, hclx.Errorf(body, "token_file", "Unreadable token_file", "%v", err))
		}
	}
	for _, f := range []struct {
		v   *string
		dst *string
	}{{c.CAFile, &cfg.TLSConfig.CAFile}, {c.CertFile, &cfg.TLSConfig.CertFile}, {c.KeyFile, &cfg.TLSConfig.KeyFile}} {
		if f.v != nil {
			*f.dst = hclx.Path(baseDir, *f.v)
		}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		r := body.MissingItemRange()
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid Consul settings", Detail: err.Error(), Subject: &r})
	}
	return client, diags
}

type config struct {
	Prefix     *string  `hcl:"prefix,optional"`
	SessionTTL *string  `hcl:"session_ttl,optional"`
	Conn       hcl.Body `hcl:",remain"`
}

// Factory decodes `lock "consul" { … }`.
func Factory(_ string, body hcl.Body, env lock.Env) (lock.Provider, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	p := &Provider{Prefix: DefaultPrefix, Node: env.NodeName}
	if c.Prefix != nil {
		p.Prefix = strings.Trim(*c.Prefix, "/")
	}
	var d hcl.Diagnostics
	p.SessionTTL, d = hclx.Duration(body, "session_ttl", hclx.Str(c.SessionTTL), DefaultSessionTTL)
	diags = append(diags, d...)
	if p.SessionTTL < 10*time.Second || p.SessionTTL > 24*time.Hour {
		diags = append(diags, hclx.Errorf(body, "session_ttl", "Invalid session_ttl", "Consul accepts session TTLs from 10s to 24h."))
	}
	p.Client, d = NewClient(c.Conn, env.BaseDir)
	diags = append(diags, d...)
	if p.Client == nil {
		return nil, diags
	}
	return p, diags
}

// Semaphore returns the fleet semaphore of service with limit slots.
func (p *Provider) Semaphore(service string, limit int) (lock.Semaphore, error) {
	return &Semaphore{p: p, service: service, limit: max(limit, 1)}, nil
}

// Semaphore is one host's claim on a service's slots.
type Semaphore struct {
	p       *Provider
	service string
	limit   int
	mu      sync.Mutex
	held    *api.Semaphore
}

// Acquire blocks (on Consul blocking queries, not a poll) until a slot is
// held or ctx ends. Giving up is an error, never a slot.
func (s *Semaphore) Acquire(ctx context.Context) (<-chan struct{}, error) {
	sem, err := s.p.Client.SemaphoreOpts(&api.SemaphoreOptions{
		Prefix:      fleet.LockKey(s.p.Prefix, s.service),
		Limit:       s.limit,
		Value:       []byte(s.p.Node),
		SessionName: "dropship " + s.p.Node + " " + s.service,
		SessionTTL:  s.p.SessionTTL.String(),
		// A short blip of Consul does not lose the slot; a long one does.
		MonitorRetries:   3,
		MonitorRetryTime: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", lock.ErrUnavailable, err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			close(stop)
		case <-done:
		}
	}()
	lost, err := sem.Acquire(stop)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: consul semaphore %s: %v", lock.ErrUnavailable, fleet.LockKey(s.p.Prefix, s.service), err)
	case lost == nil:
		// Acquire returns nothing when told to stop: not a slot.
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for a slot: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("%w: consul semaphore gave up", lock.ErrUnavailable)
	}
	s.mu.Lock()
	s.held = sem
	s.mu.Unlock()
	return lost, nil
}

// Release frees the slot and destroys the session, so the next host in
// line starts at once.
func (s *Semaphore) Release(context.Context) error {
	s.mu.Lock()
	sem := s.held
	s.held = nil
	s.mu.Unlock()
	if sem == nil {
		return nil
	}
	err := sem.Release()
	if errors.Is(err, api.ErrSemaphoreNotHeld) {
		return nil // lost already; nothing to give back
	}
	return err
}

func (p *Provider) get(ctx context.Context, key string, v any) (bool, error) {
	kv, _, err := p.Client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("%w: read %s: %v", lock.ErrUnavailable, key, err)
	}
	if kv == nil {
		return false, nil
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return true, fmt.Errorf("read %s: %w", key, err)
	}
	return true, nil
}

func (p *Provider) put(ctx context.Context, key string, v any) error {
	b, _ := json.Marshal(v)
	_, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: write %s: %v", lock.ErrUnavailable, key, err)
	}
	return nil
}

// Blocked returns why no update of checksum may start: a hold, or a
// breaker tripped by another host. An unreachable Consul is an error: the
// caller starts nothing (fail closed).
func (p *Provider) Blocked(ctx context.Context, service, checksum string) (string, error) {
	var h fleet.Hold
	if ok, err := p.get(ctx, fleet.HoldKey(p.Prefix, service), &h); err != nil {
		return "", err
	} else if ok {
		return fmt.Sprintf("on hold since %s by %s: %s", h.Time.Format(time.RFC3339), h.Who, h.Reason), nil
	}
	var b fleet.Breaker
	if ok, err := p.get(ctx, fleet.FailedKey(p.Prefix, service)+checksum, &b); err != nil {
		return "", err
	} else if ok {
		return fmt.Sprintf("checksum %s failed on %s in %s: %s (lift with `dropship fleet clear %s %s`)",
			checksum, b.Node, b.Phase, b.Error, service, checksum), nil
	}
	return "", nil
}

// Trip marks checksum failed for the fleet.
func (p *Provider) Trip(ctx context.Context, service, checksum, phase string, cause error) error {
	return p.put(ctx, fleet.FailedKey(p.Prefix, service)+checksum, fleet.Breaker{
		Checksum: checksum, Node: p.Node, Phase: phase, Error: cause.Error(), Time: time.Now().UTC()})
}

// Report writes this host's status.
func (p *Provider) Report(ctx context.Context, service string, st fleet.NodeStatus) error {
	return p.put(ctx, fleet.NodesKey(p.Prefix, service)+p.Node, st)
}

// SetHold writes a hold; ClearHold removes it.
func (p *Provider) SetHold(ctx context.Context, service, reason, who string) error {
	return p.put(ctx, fleet.HoldKey(p.Prefix, service), fleet.Hold{Reason: reason, Who: who, Time: time.Now().UTC()})
}

// ClearHold removes the hold of service.
func (p *Provider) ClearHold(ctx context.Context, service string) error {
	_, err := p.Client.KV().Delete(fleet.HoldKey(p.Prefix, service), (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// ClearBreaker lifts the breaker of checksum; false if there was none.
func (p *Provider) ClearBreaker(ctx context.Context, service, checksum string) (bool, error) {
	key := fleet.FailedKey(p.Prefix, service) + checksum
	kv, _, err := p.Client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || kv == nil {
		return false, err
	}
	_, err = p.Client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx))
	return err == nil, err
}

// Status is the fleet's view of one service.
type Status struct {
	Service  string
	Nodes    []fleet.NodeStatus
	Holders  []string // nodes holding a slot now
	Limit    int
	Hold     *fleet.Hold
	Breakers []fleet.Breaker
}

// Services lists the services with records under the prefix.
func (p *Provider) Services(ctx context.Context) ([]string, error) {
	keys, _, err := p.Client.KV().Keys(p.Prefix+"/", "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(k, p.Prefix+"/"), "/"))
	}
	sort.Strings(out)
	return out, nil
}

// Status reads the fleet records of service.
func (p *Provider) Status(ctx context.Context, service string) (Status, error) {
	st := Status{Service: service}
	pairs, _, err := p.Client.KV().List(p.Prefix+"/"+service+"/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return st, fmt.Errorf("%w: %v", lock.ErrUnavailable, err)
	}
	sessions := map[string]string{} // session -> node, from contender entries
	var lockDoc struct {
		Limit   int
		Holders map[string]bool
	}
	for _, kv := range pairs {
		rest := strings.TrimPrefix(kv.Key, p.Prefix+"/"+service+"/")
		switch {
		case strings.HasPrefix(rest, "nodes/"):
			var n fleet.NodeStatus
			if json.Unmarshal(kv.Value, &n) == nil {
				st.Nodes = append(st.Nodes, n)
			}
		case rest == "hold":
			var h fleet.Hold
			if json.Unmarshal(kv.Value, &h) == nil {
				st.Hold = &h
			}
		case strings.HasPrefix(rest, "failed/"):
			var b fleet.Breaker
			if json.Unmarshal(kv.Value, &b) == nil {
				st.Breakers = append(st.Breakers, b)
			}
		case rest == "lock/.lock":
			json.Unmarshal(kv.Value, &lockDoc)
		case strings.HasPrefix(rest, "lock/") && kv.Session != "":
			sessions[kv.Session] = string(kv.Value)
		}
	}
	st.Limit = lockDoc.Limit
	for sess := range lockDoc.Holders {
		if node, ok := sessions[sess]; ok {
			st.Holders = append(st.Holders, node)
		}
	}
	sort.Strings(st.Holders)
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
	return st, nil
}

var _ lock.Provider = (*Provider)(nil)
var _ lock.Semaphore = (*Semaphore)(nil)
