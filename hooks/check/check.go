// Package check holds the health checks that run after the after hooks:
// http, tcp and script. A check that never passes rolls the update back.
package check

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Retry runs Probe until it passes: after StartPeriod, up to Retries
// attempts, Interval apart, each bounded by Timeout.
//
// With a Watch window, the check goes on after it passed: a probe (up to
// Retries attempts) every WatchInterval until the window closes; Failures
// failed probes within it fail the check (see Watch).
type Retry struct {
	Probe       hooks.Hook
	Interval    time.Duration
	Timeout     time.Duration
	Retries     int
	StartPeriod time.Duration
	Window      time.Duration
	// WatchBake: watch = "bake", the window is the rollout's bake,
	// which the service sets with SetWatchWindow.
	WatchBake     bool
	WatchInterval time.Duration
	Failures      int
}

// DefaultWatchInterval is how often a watched check probes.
const DefaultWatchInterval = 5 * time.Second

type common struct {
	Interval      *string  `hcl:"interval,optional"`
	Timeout       *string  `hcl:"timeout,optional"`
	Retries       *int     `hcl:"retries,optional"`
	StartPeriod   *string  `hcl:"start_period,optional"`
	Watch         *string  `hcl:"watch,optional"`
	WatchInterval *string  `hcl:"watch_interval,optional"`
	Failures      *int     `hcl:"failures,optional"`
	Full          hcl.Body `hcl:",body"`
	Rest          hcl.Body `hcl:",remain"`
}

func decodeCommon(body hcl.Body) (*Retry, hcl.Body, hcl.Diagnostics) {
	var c common
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, nil, diags
	}
	r := &Retry{Retries: 3}
	var d hcl.Diagnostics
	r.Interval, d = hclx.Duration(c.Full, "interval", hclx.Str(c.Interval), time.Second)
	diags = append(diags, d...)
	r.Timeout, d = hclx.Duration(c.Full, "timeout", hclx.Str(c.Timeout), 5*time.Second)
	diags = append(diags, d...)
	r.StartPeriod, d = hclx.Duration(c.Full, "start_period", hclx.Str(c.StartPeriod), 0)
	diags = append(diags, d...)
	if c.Retries != nil {
		r.Retries = *c.Retries
		if r.Retries < 1 {
			diags = append(diags, hclx.Errorf(c.Full, "retries", "Invalid retries", "retries is the number of attempts: 1 or more."))
		}
	}
	diags = append(diags, decodeWatch(r, c)...)
	return r, c.Rest, diags
}

// decodeWatch reads watch, watch_interval and failures.
func decodeWatch(r *Retry, c common) hcl.Diagnostics {
	var diags, d hcl.Diagnostics
	if hclx.Str(c.Watch) == "bake" {
		r.WatchBake = true
	} else {
		r.Window, d = hclx.Duration(c.Full, "watch", hclx.Str(c.Watch), 0)
		diags = append(diags, d...)
	}
	r.WatchInterval, d = hclx.Duration(c.Full, "watch_interval", hclx.Str(c.WatchInterval), DefaultWatchInterval)
	diags = append(diags, d...)
	r.Failures = 1
	if c.Failures != nil {
		r.Failures = *c.Failures
		if r.Failures < 1 {
			diags = append(diags, hclx.Errorf(c.Full, "failures", "Invalid failures",
				"failures is how many failed probes within the watch window roll the release back: 1 or more."))
		}
	}
	if r.Window <= 0 && !r.WatchBake {
		for _, k := range []struct {
			name string
			set  bool
		}{{"watch_interval", c.WatchInterval != nil}, {"failures", c.Failures != nil}} {
			if k.set {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: k.name + " without watch",
					Detail:  k.name + " applies to the watch window after the switch, and this check has no watch = \"…\": it is ignored.",
					Subject: hclx.AttrRange(c.Full, k.name)})
			}
		}
		return diags
	}
	if r.WatchInterval <= 0 {
		diags = append(diags, hclx.Errorf(c.Full, "watch_interval", "Invalid duration", "watch_interval must be more than zero."))
	}
	return diags
}

// WatchWindow is how long the check goes on after the switch; 0 for none.
func (r *Retry) WatchWindow() time.Duration { return r.Window }

// WatchesBake says the check has watch = "bake": its window is the
// rollout's bake, set by SetWatchWindow once the service is decoded.
func (r *Retry) WatchesBake() bool { return r.WatchBake }

// SetWatchWindow sets the window of a watch = "bake" check.
func (r *Retry) SetWatchWindow(d time.Duration) { r.Window = d }

// Watch probes every WatchInterval for the window and fails once
// Failures probes have failed in it; a probe fails when all its Retries
// attempts do, so one lost request is not a rollback. It ends early, with
// nil, when ctx ends; failed is called at each failed probe.
func (r *Retry) Watch(ctx context.Context, ev hooks.Event, failed func(n int, err error)) error {
	end := time.NewTimer(r.Window)
	defer end.Stop()
	tick := time.NewTicker(r.WatchInterval)
	defer tick.Stop()
	probes, fails := 0, 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end.C:
			return nil
		case <-tick.C:
		}
		probes++
		err := r.attempts(ctx, ev)
		if err == nil || ctx.Err() != nil {
			continue
		}
		fails++
		if failed != nil {
			failed(fails, err)
		}
		if fails >= r.Failures {
			return fmt.Errorf("watch: %d of %d probes failed within %s of the switch; last: %w", fails, probes, r.Window, err)
		}
	}
}

// Run waits the start period, then tries the probe until it passes.
func (r *Retry) Run(ctx context.Context, ev hooks.Event) error {
	if err := sleep(ctx, r.StartPeriod); err != nil {
		return err
	}
	return r.attempts(ctx, ev)
}

// attempts tries the probe up to Retries times, Interval apart.
func (r *Retry) attempts(ctx context.Context, ev hooks.Event) error {
	var last error
	for i := 1; i <= r.Retries; i++ {
		actx, cancel := context.WithTimeout(ctx, r.Timeout)
		last = r.Probe.Run(actx, ev)
		cancel()
		if last == nil {
			return nil
		}
		if i < r.Retries {
			if err := sleep(ctx, r.Interval); err != nil {
				return errors.Join(last, err)
			}
		}
	}
	return fmt.Errorf("failed %d of %d attempts; last: %w", r.Retries, r.Retries, last)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// HTTP passes when a GET (or Method) to URL answers with Status (default:
// any 2xx or 3xx) and, if set, a body containing BodyContains.
type HTTP struct {
	URL          *hooks.Template
	Method       string
	Status       int
	BodyContains string
	Client       *http.Client
}

type httpConfig struct {
	URL          string  `hcl:"url"`
	Method       *string `hcl:"method,optional"`
	Status       *int    `hcl:"status,optional"`
	BodyContains *string `hcl:"body_contains,optional"`
}

// HTTPFactory decodes `check "http" { url … }`.
func HTTPFactory(_ string, body hcl.Body, _ hooks.Env) (hooks.Hook, hcl.Diagnostics) {
	r, rest, diags := decodeCommon(body)
	if diags.HasErrors() {
		return nil, diags
	}
	var c httpConfig
	diags = append(diags, gohcl.DecodeBody(rest, nil, &c)...)
	if diags.HasErrors() {
		return nil, diags
	}
	h := &HTTP{Method: http.MethodGet, BodyContains: hclx.Str(c.BodyContains), Client: &http.Client{
		// A redirect is an answer; do not follow it elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	if !strings.Contains(c.URL, "{{") {
		_, d := hclx.URL(body, "url", c.URL)
		diags = append(diags, d...)
	}
	var d hcl.Diagnostics
	h.URL, d = hooks.ParseTemplate(body, "url", c.URL)
	diags = append(diags, d...)
	if c.Method != nil {
		h.Method = strings.ToUpper(*c.Method)
	}
	if c.Status != nil {
		h.Status = *c.Status
	}
	r.Probe = h
	return r, diags
}

// Run is one attempt.
func (h *HTTP) Run(ctx context.Context, ev hooks.Event) error {
	url, err := h.URL.Render(ev)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, h.Method, url, nil)
	if err != nil {
		return err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return hooks.HTTPError("http check", h.Method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case h.Status != 0 && resp.StatusCode != h.Status:
		return fmt.Errorf("http check %s: status %d, want %d", hooks.Redact(url), resp.StatusCode, h.Status)
	case h.Status == 0 && (resp.StatusCode < 200 || resp.StatusCode >= 400):
		return fmt.Errorf("http check %s: status %d", hooks.Redact(url), resp.StatusCode)
	case h.BodyContains != "" && !strings.Contains(string(body), h.BodyContains):
		return fmt.Errorf("http check %s: body does not contain %q", hooks.Redact(url), h.BodyContains)
	}
	return nil
}

// TCP passes when Address accepts a connection.
type TCP struct{ Address string }

type tcpConfig struct {
	Address string `hcl:"address"`
}

// TCPFactory decodes `check "tcp" { address = "127.0.0.1:8080" }`.
func TCPFactory(_ string, body hcl.Body, _ hooks.Env) (hooks.Hook, hcl.Diagnostics) {
	r, rest, diags := decodeCommon(body)
	if diags.HasErrors() {
		return nil, diags
	}
	var c tcpConfig
	diags = append(diags, gohcl.DecodeBody(rest, nil, &c)...)
	if diags.HasErrors() {
		return nil, diags
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		diags = append(diags, hclx.Errorf(body, "address", "Invalid address", "address = %q: want host:port.", c.Address))
	}
	r.Probe = &TCP{Address: c.Address}
	return r, diags
}

// Run is one attempt.
func (t *TCP) Run(ctx context.Context, _ hooks.Event) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", t.Address)
	if err != nil {
		return fmt.Errorf("tcp check %s: %w", t.Address, err)
	}
	return c.Close()
}

// ScriptFactory decodes `check "script" { command = "…" }`: the command
// passes by exiting 0.
func ScriptFactory(kind string, body hcl.Body, env hooks.Env) (hooks.Hook, hcl.Diagnostics) {
	r, rest, diags := decodeCommon(body)
	if diags.HasErrors() {
		return nil, diags
	}
	h, d := script.Factory(kind, rest, env)
	diags = append(diags, d...)
	if h != nil {
		s := h.(*script.Hook)
		s.Timeout = r.Timeout // the attempt's timeout bounds the command
		s.Grace = time.Second
	}
	r.Probe = h
	return r, diags
}

var (
	_ hooks.Hook = (*Retry)(nil)
	_ hooks.Hook = (*HTTP)(nil)
	_ hooks.Hook = (*TCP)(nil)
)
