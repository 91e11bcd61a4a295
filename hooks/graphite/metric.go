package graphite

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Metric sends deploy metrics to carbon in its plaintext protocol
// ("path value timestamp\n"), over TCP or UDP:
//
//	<prefix>.<host>.<service>.deploy.duration_seconds
//	<prefix>.<host>.<service>.deploy.result     1 success, 0 failure or rollback
//	<prefix>.<host>.<service>.deploy.count      1 per update (sum it)
type Metric struct {
	Address  string
	Protocol string // tcp or udp
	Prefix   string
	Timeout  time.Duration
}

type metricConfig struct {
	Address  string  `hcl:"address"`
	Protocol *string `hcl:"protocol,optional"`
	Prefix   *string `hcl:"prefix,optional"`
	Timeout  *string `hcl:"timeout,optional"`
}

// MetricFactory decodes `after "graphite-metric" { address = "carbon:2003" }`.
func MetricFactory(_ string, body hcl.Body, _ hooks.Env) (hooks.Announcer, hcl.Diagnostics) {
	var c metricConfig
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	m := &Metric{Address: c.Address, Protocol: "tcp", Prefix: "dropship"}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		diags = append(diags, hclx.Errorf(body, "address", "Invalid address", "address = %q: want host:port of carbon's plaintext receiver (usually :2003).", c.Address))
	}
	if c.Protocol != nil {
		m.Protocol = *c.Protocol
		if m.Protocol != "tcp" && m.Protocol != "udp" {
			diags = append(diags, hclx.Errorf(body, "protocol", "Invalid protocol", "protocol is \"tcp\" or \"udp\"."))
		}
	}
	if c.Prefix != nil {
		m.Prefix = strings.Trim(*c.Prefix, ".")
	}
	var d hcl.Diagnostics
	m.Timeout, d = hclx.Duration(body, "timeout", hclx.Str(c.Timeout), 5*time.Second)
	return m, append(diags, d...)
}

// metricName makes one path component: dots and spaces would split it.
func metricName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == ' ' || r == '/' {
			return '_'
		}
		return r
	}, s)
}

// Run sends the three metrics of one update.
func (m *Metric) Announce(ctx context.Context, ev hooks.Event) error {
	base := fmt.Sprintf("%s.%s.%s.deploy", m.Prefix, metricName(ev.Hostname), metricName(ev.Name))
	if m.Prefix == "" {
		base = strings.TrimPrefix(base, ".")
	}
	ts := ev.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	result := 0
	if ev.Result == "success" {
		result = 1
	}
	now := ts.Unix()
	lines := fmt.Sprintf("%[1]s.duration_seconds %.3[2]f %[5]d\n%[1]s.result %[3]d %[5]d\n%[1]s.count %[4]d %[5]d\n",
		base, ev.Duration.Seconds(), result, 1, now)
	d := net.Dialer{Timeout: m.Timeout}
	conn, err := d.DialContext(ctx, m.Protocol, m.Address)
	if err != nil {
		return fmt.Errorf("graphite metric to %s: %w", m.Address, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(m.Timeout))
	if _, err := conn.Write([]byte(lines)); err != nil {
		return fmt.Errorf("graphite metric to %s: %w", m.Address, err)
	}
	return nil
}

var _ hooks.Announcer = (*Metric)(nil)
