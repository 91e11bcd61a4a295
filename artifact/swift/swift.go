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

// Config is a `repo "swift"` or `repo "rackspace"` block (or the same keys
// inline in the artifact block).
type Config struct {
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

// DecodeConfig decodes the connection keys of body.
func DecodeConfig(body hcl.Body) (Config, hcl.Diagnostics) {
	var r Config
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

// settings are the keys of a store of kind ("swift" or "rackspace": its
// default identity endpoint).
type settings struct {
	kind string
	cfg  Config
}

func (s settings) Over(body hcl.Body, _ string) (artifact.Settings, hcl.Diagnostics) {
	o, diags := DecodeConfig(body)
	return settings{kind: s.kind, cfg: s.cfg.merge(o)}, diags
}

func (s settings) Key() string { return s.cfg.key(s.kind) }

func (s settings) Open() (artifact.Store, error) { return NewStore(s.kind, s.cfg) }

func (r Config) merge(o Config) Config {
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

// key identifies the settings, to share one store among blocks that
// repeat them.
func (r Config) key(kind string) string {
	av := ""
	if r.AuthVersion != nil {
		av = fmt.Sprint(*r.AuthVersion)
	}
	return strings.Join([]string{kind, hclx.Str(r.User), hclx.Str(r.Key), hclx.Str(r.AuthURL), hclx.Str(r.Region), hclx.Str(r.Tenant),
		hclx.Str(r.TenantID), hclx.Str(r.Domain), av, hclx.Str(r.Timeout)}, "\x00")
}

// Store is one Swift account: one connection (one token, one pool of
// connections) shared by every service that uses the repo.
type Store struct {
	kind string
	cfg  Config
	conn *swift.Connection
}

// NewStore builds the connection for r; kind "rackspace" defaults the
// identity endpoint. It authenticates lazily, on first use.
func NewStore(kind string, r Config) (*Store, error) {
	c, err := newConnection(kind, r)
	if err != nil {
		return nil, err
	}
	return &Store{kind: kind, cfg: r, conn: c}, nil
}

// Settings are the keys the store was made of.
func (s *Store) Settings() artifact.Settings { return settings{kind: s.kind, cfg: s.cfg} }

// Connection is the store's Swift connection (tests and setups).
func (s *Store) Connection() *swift.Connection { return s.conn }

func newConnection(kind string, r Config) (*swift.Connection, error) {
	c := &swift.Connection{
		UserName: hclx.Str(r.User),
		ApiKey:   hclx.Str(r.Key),
		AuthUrl:  hclx.Str(r.AuthURL),
		Region:   hclx.Str(r.Region),
		Tenant:   hclx.Str(r.Tenant),
		TenantId: hclx.Str(r.TenantID),
		Domain:   hclx.Str(r.Domain),
		// No retries of the library's own (it counts from -1 as none): the
		// artifact package's retry wrapper is the only retry layer, and
		// an expired token is handled by Store.call.
		Retries:        -1,
		ConnectTimeout: 10 * time.Second,
		Timeout:        60 * time.Second,
	}
	// The library's client follows redirects and Go's copies every header
	// but its own sensitive ones: X-Auth-Token and X-Auth-Key would go to
	// whatever host a redirect names.
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 512}
	swift.SetExpectContinueTimeout(tr, 5*time.Second)
	c.Transport = sameHost{tr}
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

// sameHost refuses a redirect to another host than the request's that
// caused it, before anything (a token, a key) is sent there.
type sameHost struct{ next http.RoundTripper }

// errRedirect: a redirect to another host was refused.
var errRedirect = errors.New("redirect to another host refused (the credentials would follow it)")

func (t sameHost) RoundTrip(req *http.Request) (*http.Response, error) {
	if prev := req.Response; prev != nil && prev.Request != nil {
		from := prev.Request.URL
		if from.Scheme != req.URL.Scheme || from.Host != req.URL.Host {
			return nil, fmt.Errorf("%s %s: %w: to %s://%s: %w", req.Method, from.Redacted(), errRedirect,
				req.URL.Scheme, req.URL.Host, artifact.ErrRejected)
		}
	}
	return t.next.RoundTrip(req)
}

// Source is one object in one container.
type Source struct {
	store     *Store
	container string
	name      string
}

// Source returns the source of swift://container/name.
func (s *Store) Source(container, name string) artifact.Source {
	return &Source{store: s, container: container, name: strings.TrimPrefix(name, "/")}
}

// call runs fn, and once more after authenticating again when the store
// refuses the token: tokens expire, and that is no failure to retry.
func (s *Store) call(fn func() error) error {
	err := fn()
	var se *swift.Error
	if (errors.Is(err, swift.AuthorizationFailed) || errors.As(err, &se) && se.StatusCode == http.StatusUnauthorized) && s.conn.Authenticated() {
		s.conn.UnAuthenticate()
		err = fn()
	}
	return err
}

// RepoFactory decodes a `repo "swift"` or `repo "rackspace"` block into
// its store.
func RepoFactory(kind string, body hcl.Body, _ string) (artifact.Store, hcl.Diagnostics) {
	return artifact.RepoStore(body, "", settings{kind: kind}, kind)
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
	st, diags := env.Store(body, artifact.Conn{Kind: kind, Types: []string{"swift", "rackspace"}, Repo: c.Repo, Keys: c.Inline,
		None: settings{kind: kind}, What: kind}, diags)
	if st == nil {
		return nil, diags
	}
	return st.Source(container, c.Path), diags
}

func (s *Source) String() string { return "swift://" + s.container + "/" + s.name }

// Stat is one HEAD request (plus an authentication when the token is new
// or expired).
func (s *Source) Stat(ctx context.Context) (artifact.Info, error) {
	var obj swift.Object
	var h swift.Headers
	err := s.store.call(func() (err error) {
		obj, h, err = s.store.conn.Object(ctx, s.container, s.name)
		return err
	})
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
	if err := info.SetChecksums(etag, meta[artifact.MetaMD5], meta[artifact.MetaSHA256], large); err != nil {
		return artifact.Info{}, fmt.Errorf("check %s: %w", s, err)
	}
	return info, nil
}

// Open fetches the object with a GET conditional on the pinned ETag: a
// replaced object answers 412 and the update starts over.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	return s.OpenAt(ctx, pin, 0)
}

// OpenAt is Open from byte off on, with the same If-Match.
func (s *Source) OpenAt(ctx context.Context, pin artifact.Info, off int64) (io.ReadCloser, error) {
	h := swift.Headers{}
	if pin.ETag != "" {
		h["If-Match"] = pin.ETag
	}
	if off > 0 {
		h["Range"] = fmt.Sprintf("bytes=%d-", off)
	}
	var f *swift.ObjectOpenFile
	var rh swift.Headers
	err := s.store.call(func() (err error) {
		f, rh, err = s.store.conn.ObjectOpen(ctx, s.container, s.name, false, h)
		return err
	})
	if err != nil {
		return nil, s.classify("download", err)
	}
	if off > 0 {
		if err := artifact.CheckRange(rh["Content-Range"], off, pin); err != nil {
			f.Close()
			return nil, fmt.Errorf("download %s from byte %d: %w", s, off, err)
		}
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
		return fmt.Errorf("%s %s: %w (user %q at %s)", doing, s, artifact.ErrAccess, s.store.conn.UserName, s.store.conn.AuthUrl)
	case status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return fmt.Errorf("%s %s: %w: %w", doing, s, artifact.ErrRejected, err)
	}
	return fmt.Errorf("%s %s: %w", doing, s, err)
}

var (
	_ artifact.Source      = (*Source)(nil)
	_ artifact.RangeOpener = (*Source)(nil)
	_ artifact.Store       = (*Store)(nil)
	_ artifact.Settings    = settings{}
)

// Name is the object's name in its container.
func (s *Source) Name() string { return s.name }

// Sibling is the object at name in the same container.
func (s *Source) Sibling(name string) artifact.Source { return s.store.Source(s.container, name) }

var _ artifact.Sibling = (*Source)(nil)
