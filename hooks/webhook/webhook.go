// Package webhook is the generic HTTP hook: Slack-style announcements of
// who deployed what, where and when.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Hook sends one HTTP request per event.
type Hook struct {
	Method  string
	URL     *hooks.Template
	Headers map[string]string
	Body    *hooks.Template // nil: the event as JSON
	// JSON, when set, is sent as a JSON object whose values are these
	// templates rendered: the encoder escapes them (quotes, newlines in
	// an error), which a body template cannot.
	JSON   map[string]*hooks.Template
	Client *http.Client
}

type config struct {
	URL     string            `hcl:"url"`
	Method  *string           `hcl:"method,optional"`
	Headers map[string]string `hcl:"headers,optional"`
	Body    *string           `hcl:"body,optional"`
	JSON    map[string]string `hcl:"json,optional"`
	Timeout *string           `hcl:"timeout,optional"`
}

// Factory decodes `after "http" { url method headers body timeout }`.
func Factory(_ string, body hcl.Body, _ hooks.Env) (hooks.Announcer, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	h := &Hook{Method: http.MethodPost, Headers: c.Headers}
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
	if c.Body != nil {
		h.Body, d = hooks.ParseTemplate(body, "body", *c.Body)
		diags = append(diags, d...)
	}
	if c.JSON != nil {
		if c.Body != nil {
			diags = append(diags, hclx.Errorf(body, "json", "Conflicting body", "Give body or json, not both: json = { … } is sent as a JSON object, body as written."))
		}
		h.JSON = map[string]*hooks.Template{}
		for k, v := range c.JSON {
			h.JSON[k], d = hooks.ParseTemplate(body, "json", v)
			diags = append(diags, d...)
		}
	}
	timeout, d := hclx.Duration(body, "timeout", hclx.Str(c.Timeout), 10*time.Second)
	diags = append(diags, d...)
	h.Client = &http.Client{Timeout: timeout}
	return h, diags
}

// Run sends the request; a status outside 2xx is an error.
func (h *Hook) Announce(ctx context.Context, ev hooks.Event) error {
	url, err := h.URL.Render(ev)
	if err != nil {
		return err
	}
	var body []byte
	if h.JSON != nil {
		obj := make(map[string]string, len(h.JSON))
		for k, t := range h.JSON {
			v, err := t.Render(ev)
			if err != nil {
				return err
			}
			obj[k] = v
		}
		body, _ = json.Marshal(obj)
	} else if h.Body != nil {
		s, err := h.Body.Render(ev)
		if err != nil {
			return err
		}
		body = []byte(s)
	} else {
		body, _ = json.Marshal(map[string]any{
			"service": ev.Name, "host": ev.Hostname, "checksum": ev.Hash, "previous_checksum": ev.PreviousHash,
			"release": ev.Release, "phase": ev.Phase, "result": ev.Result, "error": ev.Error,
			"duration_seconds": ev.Duration.Seconds(), "time": ev.Time,
		})
	}
	req, err := http.NewRequestWithContext(ctx, h.Method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h.Headers {
		req.Header.Set(k, v)
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return hooks.HTTPError("webhook", h.Method, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("webhook %s %s: %s %s", h.Method, hooks.Redact(url), resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

var _ hooks.Announcer = (*Hook)(nil)
