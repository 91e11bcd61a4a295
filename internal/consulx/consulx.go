// Package consulx decodes the Consul connection keys shared by
// `lock "consul"` and the consul-event hook, and makes the client.
package consulx

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/internal/hclx"
)

// Conn is the connection part of a Consul block. Unset keys fall back to
// Consul's environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, …).
type Conn struct {
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
// Nothing is dialled: Consul may be down when the config loads. Relative
// files resolve against baseDir, the directory of the file the block is in.
func NewClient(body hcl.Body, baseDir string) (*api.Client, hcl.Diagnostics) {
	var c Conn
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	cfg := c.Config(baseDir)
	if c.TokenFile != nil {
		if _, err := os.Stat(cfg.TokenFile); err != nil {
			diags = append(diags, hclx.Errorf(body, "token_file", "Unreadable token_file", "%v", err))
		}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		r := body.MissingItemRange()
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid Consul settings", Detail: err.Error(), Subject: &r})
	}
	return client, diags
}

// Client returns a client of the keys of c, for connection keys that come
// from somewhere other than a block (command-line flags): the same
// defaults, environment and files as a block's. Nothing is dialled.
func (c Conn) Client(baseDir string) (*api.Client, error) {
	cfg := c.Config(baseDir)
	if c.TokenFile != nil {
		if _, err := os.Stat(cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("token_file: %w", err)
		}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul at %s: %w", cfg.Address, err)
	}
	return client, nil
}

// Config is the client configuration of c: Consul's defaults and
// environment variables, with the keys set in c over them. Relative files
// resolve against baseDir.
func (c Conn) Config(baseDir string) *api.Config {
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
	}
	for _, f := range []struct {
		v   *string
		dst *string
	}{{c.CAFile, &cfg.TLSConfig.CAFile}, {c.CertFile, &cfg.TLSConfig.CertFile}, {c.KeyFile, &cfg.TLSConfig.KeyFile}} {
		if f.v != nil {
			*f.dst = hclx.Path(baseDir, *f.v)
		}
	}
	// Compression pays over a network, not over loopback: an agent's
	// Consul is as a rule the host's own Consul agent (127.0.0.1:8500),
	// which would gzip each answer of more than a packet for this
	// process to gunzip, CPU on both sides for nothing. (A unix://
	// address gets consul/api's own transport, compression and all.)
	cfg.Transport.DisableCompression = loopback(cfg.Address)
	return cfg
}

// loopback says whether addr (host:port, with or without a scheme) is on
// this host's loopback.
func loopback(addr string) bool {
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		addr = rest
	}
	addr, _, _ = strings.Cut(addr, "/") // a reverse proxy's path
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = strings.Trim(addr, "[]") // no port
	}
	host, _, _ = strings.Cut(host, "%") // an IPv6 zone: [::1%lo]
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
