// Package s3 is the Amazon S3 artifact source; it works with every
// S3-compatible store (MinIO, Ceph, R2, …) through `endpoint`.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Repo is the connection part of the config: a `repo "s3"` block of the
// agent file, and the same keys inline in an artifact block.
type Repo struct {
	Region       *string `hcl:"region,optional"`
	OldRegion    *string `hcl:"name,optional"` // the ancestor's name for region
	Endpoint     *string `hcl:"endpoint,optional"`
	AccessKey    *string `hcl:"access_key,optional"`
	OldAccessKey *string `hcl:"accessKey,optional"`
	SecretKey    *string `hcl:"secret_key,optional"`
	OldSecret    *string `hcl:"secret,optional"`
	SessionToken *string `hcl:"session_token,optional"`
	Profile      *string `hcl:"profile,optional"`
	PathStyle    *bool   `hcl:"path_style,optional"`
	CAFile       *string `hcl:"ca_file,optional"`
}

var legacy = map[string]string{"name": "region", "accessKey": "access_key", "secret": "secret_key"}

// DecodeRepo decodes the repo keys of body, with warnings for old names.
func DecodeRepo(body hcl.Body, base string) (Repo, hcl.Diagnostics) {
	var r Repo
	diags := gohcl.DecodeBody(body, nil, &r)
	diags = append(diags, hclx.Legacy(body, legacy)...)
	r.Region = hclx.First(r.Region, r.OldRegion)
	r.AccessKey = hclx.First(r.AccessKey, r.OldAccessKey)
	r.SecretKey = hclx.First(r.SecretKey, r.OldSecret)
	if r.CAFile != nil {
		p := hclx.Path(base, *r.CAFile)
		r.CAFile = &p
	}
	if (r.AccessKey == nil) != (r.SecretKey == nil) {
		diags = append(diags, hclx.Errorf(body, "access_key", "Incomplete credentials",
			"access_key and secret_key go together; leave both out to use the standard AWS credential chain."))
	}
	return r, diags
}

// merge returns r with the keys set in o overriding it.
func (r Repo) merge(o Repo) Repo {
	r.Region = hclx.First(o.Region, r.Region)
	r.Endpoint = hclx.First(o.Endpoint, r.Endpoint)
	r.AccessKey = hclx.First(o.AccessKey, r.AccessKey)
	r.SecretKey = hclx.First(o.SecretKey, r.SecretKey)
	r.SessionToken = hclx.First(o.SessionToken, r.SessionToken)
	r.Profile = hclx.First(o.Profile, r.Profile)
	r.PathStyle = hclx.First(o.PathStyle, r.PathStyle)
	r.CAFile = hclx.First(o.CAFile, r.CAFile)
	return r
}

// Source is one object in one bucket.
type Source struct {
	client *Client
	bucket string
	key    string
}

// New returns the source of s3://bucket/key.
func New(c *Client, bucket, key string) *Source {
	return &Source{client: c, bucket: bucket, key: strings.TrimPrefix(key, "/")}
}

type config struct {
	Bucket string   `hcl:"bucket"`
	Path   string   `hcl:"path"`
	Repo   *string  `hcl:"repo,optional"`
	Inline hcl.Body `hcl:",remain"`
}

// Factory decodes `artifact "s3" { bucket path [repo] [inline repo keys] }`.
func Factory(kind string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	diags = append(diags, hclx.Required(body, "bucket", c.Bucket)...)
	diags = append(diags, hclx.Required(body, "path", c.Path)...)
	var repo Repo
	rb, d := env.Repo(body, c.Repo, "s3", "s3")
	diags = append(diags, d...)
	if rb != nil {
		repo, _ = DecodeRepo(rb.Body, env.BaseDir)
	}
	inline, d := DecodeRepo(c.Inline, env.BaseDir)
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, diags
	}
	client, err := NewClient(context.Background(), repo.merge(inline))
	if err != nil {
		r := body.MissingItemRange()
		return nil, append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid S3 settings", Detail: err.Error(), Subject: &r})
	}
	return New(client, c.Bucket, c.Path), diags
}

func (s *Source) String() string { return "s3://" + s.bucket + "/" + s.key }

// Stat is one HEAD request.
func (s *Source) Stat(ctx context.Context) (artifact.Info, error) {
	o, err := s.client.HeadObject(ctx, s.bucket, s.key)
	if err != nil {
		return artifact.Info{}, s.classify(ctx, "check", err)
	}
	info := artifact.Info{
		Key:         s.String(),
		VersionID:   o.VersionID,
		ContentType: o.ContentType,
		Size:        o.Size,
		Modified:    o.Modified,
	}
	info.SetChecksums(o.ETag, o.Meta[artifact.MetaMD5], o.Meta[artifact.MetaSHA256], strings.Contains(o.ETag, "-"))
	return info, nil
}

// Open fetches the pinned version: by version id when the bucket has
// versioning, else by a GET conditional on the ETag.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	version := ""
	if pin.VersionID != "" && pin.VersionID != "null" {
		version = pin.VersionID
	}
	body, _, err := s.client.GetObject(ctx, s.bucket, s.key, version, pin.ETag)
	if err != nil {
		return nil, s.classify(ctx, "download", err)
	}
	return body, nil
}

func (s *Source) classify(ctx context.Context, doing string, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return fmt.Errorf("%s %s: %w", doing, s, err)
	}
	switch {
	case e.Status == http.StatusPreconditionFailed || e.Code == "PreconditionFailed":
		return fmt.Errorf("%s %s: %w", doing, s, artifact.ErrChanged)
	case e.Status == http.StatusNotFound || e.Code == "NoSuchKey" || e.Code == "NoSuchBucket" || e.Code == "NoSuchVersion":
		what := "no such object"
		if e.Code == "NoSuchBucket" {
			what = "no such bucket"
		}
		return fmt.Errorf("%s %s: %w (%s)", doing, s, artifact.ErrNotFound, what)
	case e.Status == http.StatusForbidden || e.Status == http.StatusUnauthorized || e.Code == "AccessDenied" ||
		e.Code == "InvalidAccessKeyId" || e.Code == "SignatureDoesNotMatch":
		return fmt.Errorf("%s %s: %w (%s; credentials from %s)", doing, s, artifact.ErrAccess, orStatus(e.Code, e.Status), s.client.CredentialsSource(ctx))
	}
	return fmt.Errorf("%s %s: %w", doing, s, err)
}

func orStatus(code string, status int) string {
	if code != "" {
		return code
	}
	return http.StatusText(status)
}

var _ artifact.Source = (*Source)(nil)
