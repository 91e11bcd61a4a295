// Package swift is the OpenStack Swift artifact source, and so Rackspace
// Cloud Files: `artifact "rackspace"` is this source with Rackspace's
// identity endpoint as the default.
package swift

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/internal/hclx"
)

// RackspaceAuthURL is the identity endpoint `artifact "rackspace"` uses
// unless auth_url is set.
const RackspaceAuthURL = "https://identity.api.rackspacecloud.com/v2.0"

// Repo is a `repo "swift"` or `repo "rackspace"` block (or the same keys
// inline in the artifact block).
type Repo struct {
	User        *string `hcl:"user,optional"`
	Key         *string `hcl:"key,optional"`
	AuthURL     *string `hcl:"auth_url,optional"`
	Region      *string `hcl:"region,optional"`
	Tenant      *string `hcl:"tenant,optional"`
	TenantID    *string `hcl:"tenant_id,optional"`
	Domain      *string `hcl:"domain,optional"`
	AuthVersion *int    `hcl:"auth_version,optional"`
	Timeout     *string `hcl:"timeout,optional"`
}

// DecodeRepo decodes the repo keys of body.
func DecodeRepo(body hcl.Body) (Repo, hcl.Diagnostics) {
	var r Repo
	diags := gohcl.DecodeBody(body, nil, &r)
	if r.AuthVersion != nil && (*r.AuthVersion < 1 || *r.AuthVersion > 3) {
		diags = append(diags, hclx.Errorf(body, "auth_version", "Invalid auth_version", "auth_version is 1, 2 or 3 (Keystone v3); 0 or unset guesses from auth_url."))
	}
	if r.AuthURL != nil {
		if _, d := hclx.URL(body, "auth_url", *r.AuthURL); d.HasErrors() {
			diags = append(diags, d...)
		}
	}
	return r, diags
}

func (r Repo) merge(o Repo) Repo {
	r.User = hclx.First(o.User, r.User)
	r.Key = hclx.First(o.Key, r.Key)
	r.AuthURL = hclx.First(o.AuthURL, r.AuthURL)
	r.Region = hclx.First(o.Region, r.Region)
	r.Tenant = hclx.First(o.Tenant, r.Tenant)
	r.TenantID = hclx.First(o.TenantID, r.TenantID)
	r.Domain = hclx.First(o.Domain, r.Domain)
	r.AuthVersion = hclx.First(o.AuthVersion, r.AuthVersion)
	r.Timeout = hclx.First(o.Timeout, r.Timeout)
	return r
}

// NewConnection builds a connection from r; kind "rackspace" defaults the
// identity endpoint. It authenticates lazily, on first use.
func NewConnection(kind string, r Repo) (*swift.Connection, error) {
	c := &swift.Connection{
		UserName: hclx.Str(r.User),
		ApiKey:   hclx.Str(r.Key),
		AuthUrl:  hclx.Str(r.AuthURL),
		Region:   hclx.Str(r.Region),
		Tenant:   hclx.Str(r.Tenant),
		TenantId: hclx.Str(r.TenantID),
		Domain:   hclx.Str(r.Domain),
		// Retries here would hide what the agent's own backoff handles.
		Retries:        1,
		ConnectTimeout: 10 * time.Second,
		Timeout:        60 * time.Second,
	}
	if r.AuthVersion != nil {
		c.AuthVersion = *r.AuthVersion
	}
	if kind == "rackspace" && c.AuthUrl == "" {
		c.AuthUrl, c.AuthVersion = RackspaceAuthURL, 2
	}
	if r.Timeout != nil {
		d, err := time.ParseDuration(*r.Timeout)
		if err != nil {
			return nil, fmt.Errorf("timeout %q: %w", *r.Timeout, err)
		}
		c.Timeout = d
	}
	if c.UserName == "" || c.ApiKey == "" || c.AuthUrl == "" {
		return nil, fmt.Errorf("user, key and auth_url are required (in the artifact or its repo block)")
	}
	return c, nil
}

// Source is one object in one container.
type Source struct {
	conn      *swift.Connection
	container string
	name      string
}

// New returns the source of swift://container/name.
func New(c *swift.Connection, container, name string) *Source {
	return &Source{conn: c, container: container, name: strings.TrimPrefix(name, "/")}
}

type config struct {
	Container *string  `hcl:"container,optional"`
	Bucket    *string  `hcl:"bucket,optional"` // the ancestor's name
	Path      string   `hcl:"path"`
	Repo      *string  `hcl:"repo,optional"`
	Inline    hcl.Body `hcl:",remain"`
}

// Factory decodes `artifact "swift"` and `artifact "rackspace"`.
func Factory(kind string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	container := hclx.Str(hclx.First(c.Container, c.Bucket))
	if c.Container == nil {
		diags = append(diags, hclx.Required(body, "container", container)...)
	}
	diags = append(diags, hclx.Required(body, "path", c.Path)...)
	var repo Repo
	rb, d := env.Repo(body, c.Repo, kind, "swift", "rackspace")
	diags = append(diags, d...)
	if rb != nil {
		repo, _ = DecodeRepo(rb.Body)
	}
	inline, d := DecodeRepo(c.Inline)
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, diags
	}
	conn, err := NewConnection(kind, repo.merge(inline))
	if err != nil {
		r := body.MissingItemRange()
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + kind + " settings", Detail: err.Error(), Subject: &r})
	}
	return New(conn, container, c.Path), diags
}

func (s *Source) String() string { return "swift://" + s.container + "/" + s.name }

// Stat is one HEAD request (plus an authentication when the token is new
// or expired).
func (s *Source) Stat(ctx context.Context) (artifact.Info, error) {
	obj, h, err := s.conn.Object(ctx, s.container, s.name)
	if err != nil {
		return artifact.Info{}, s.classify("check", err)
	}
	info := artifact.Info{Key: s.String(), Size: obj.Bytes, Modified: obj.LastModified, ContentType: obj.ContentType}
	meta := h.ObjectMetadata()
	large := strings.EqualFold(h["X-Static-Large-Object"], "true") || h["X-Object-Manifest"] != ""
	etag := h["Etag"]
	if etag == "" {
		etag = obj.Hash
	}
	info.SetChecksums(etag, meta[artifact.MetaMD5], meta[artifact.MetaSHA256], large)
	return info, nil
}

// Open fetches the object with a GET conditional on the pinned ETag: a
// replaced object answers 412 and the update starts over.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	h := swift.Headers{}
	if pin.ETag != "" {
		h["If-Match"] = pin.ETag
	}
	f, _, err := s.conn.ObjectOpen(ctx, s.container, s.name, false, h)
	if err != nil {
		return nil, s.classify("download", err)
	}
	return f, nil
}

func (s *Source) classify(doing string, err error) error {
	var se *swift.Error
	status := 0
	if errors.As(err, &se) {
		status = se.StatusCode
	}
	switch {
	case status == http.StatusPreconditionFailed:
		return fmt.Errorf("%s %s: %w", doing, s, artifact.ErrChanged)
	case errors.Is(err, swift.ObjectNotFound), errors.Is(err, swift.ContainerNotFound), status == http.StatusNotFound:
		return fmt.Errorf("%s %s: %w", doing, s, artifact.ErrNotFound)
	case errors.Is(err, swift.AuthorizationFailed), status == http.StatusUnauthorized, status == http.StatusForbidden:
		return fmt.Errorf("%s %s: %w (user %q at %s)", doing, s, artifact.ErrAccess, s.conn.UserName, s.conn.AuthUrl)
	}
	return fmt.Errorf("%s %s: %w", doing, s, err)
}

var _ artifact.Source = (*Source)(nil)
