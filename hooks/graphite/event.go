// Package graphite sends deploy events to graphite-web (shown by Grafana
// as annotations) and deploy metrics to carbon.
package graphite

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

// DefaultWhat is the event text when `what` is not set.
const DefaultWhat = "{{.Phase}} {{.Name}} {{.Hash}} on {{.Hostname}}: {{.Result}}"

// Event posts to graphite-web's /events/.
type Event struct {
	URL      string
	Tags     []string // the service name and the result are added
	What     *hooks.Template
	Data     *hooks.Template
	User     string
	Password string
	Client   *http.Client
}

type eventConfig struct {
	Host     string  `hcl:"host"`
	Tags     *string `hcl:"tags,optional"`
	What     *string `hcl:"what,optional"`
	Data     *string `hcl:"data,optional"`
	User     *string `hcl:"user,optional"`
	Password *string `hcl:"password,optional"`
	Timeout  *string `hcl:"timeout,optional"`
}

// EventFactory decodes `after "graphite-event" { host tags what data … }`.
func EventFactory(_ string, body hcl.Body, _ hooks.Env) (hooks.Announcer, hcl.Diagnostics) {
	var c eventConfig
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	u, d := hclx.URL(body, "host", c.Host)
	diags = append(diags, d...)
	what := DefaultWhat
	if c.What != nil {
		what = *c.What
	}
	e := &Event{}
	e.What, d = hooks.ParseTemplate(body, "what", what)
	diags = append(diags, d...)
	if c.Data != nil {
		e.Data, d = hooks.ParseTemplate(body, "data", *c.Data)
		diags = append(diags, d...)
	}
	timeout, d := hclx.Duration(body, "timeout", hclx.Str(c.Timeout), 5*time.Second)
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, diags
	}
	e.URL = strings.TrimRight(u.String(), "/") + "/events/"
	if c.Tags != nil {
		e.Tags = strings.FieldsFunc(*c.Tags, func(r rune) bool { return r == ' ' || r == ',' })
	}
	e.User, e.Password = hclx.Str(c.User), hclx.Str(c.Password)
	e.Client = &http.Client{Timeout: timeout}
	return e, diags
}

// Run posts the event.
func (e *Event) Announce(ctx context.Context, ev hooks.Event) error {
	what, err := e.What.Render(ev)
	if err != nil {
		return err
	}
	data, err := e.Data.Render(ev)
	if err != nil {
		return err
	}
	tags := append([]string{ev.Name}, e.Tags...)
	if ev.Result != "" {
		tags = append(tags, ev.Result)
	}
	// Tags as one space-separated string: every graphite-web version reads it.
	body, _ := json.Marshal(map[string]string{"what": what, "tags": strings.Join(dedupe(tags), " "), "data": data})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if e.User != "" {
		req.SetBasicAuth(e.User, e.Password)
	}
	resp, err := e.Client.Do(req)
	if err != nil {
		return hooks.HTTPError("graphite event", http.MethodPost, e.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("graphite event to %s: %s %s", hooks.Redact(e.URL), resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

var _ hooks.Announcer = (*Event)(nil)
