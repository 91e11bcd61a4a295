// Package s3 is the Amazon S3 artifact source; it works with every
// S3-compatible store (MinIO, Ceph, R2, …) through `endpoint`.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
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

// Client is a configured S3 client and where its credentials come from.
type Client struct {
	*s3.Client
	creds aws.CredentialsProvider
	once  sync.Once
	from  string
}

// NewClient builds a client from r. Without access_key it uses the
// standard AWS credential chain: environment, shared config and profile,
// web identity, container and instance roles.
func NewClient(ctx context.Context, r Repo) (*Client, error) {
	var opts []func(*awsconfig.LoadOptions) error
	var httpClient *http.Client
	if v := hclx.Str(r.Region); v != "" {
		opts = append(opts, awsconfig.WithRegion(v))
	}
	if v := hclx.Str(r.Profile); v != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(v))
	}
	if r.AccessKey != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(*r.AccessKey, hclx.Str(r.SecretKey), hclx.Str(r.SessionToken))))
	}
	if v := hclx.Str(r.CAFile); v != "" {
		pem, err := os.ReadFile(v)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificates", v)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		httpClient = &http.Client{Transport: tr}
		opts = append(opts, awsconfig.WithHTTPClient(httpClient))
	}
	var cfg aws.Config
	if r.AccessKey != nil && r.Profile == nil {
		// Static keys: the credential chain and shared config files are
		// not consulted, so they need not be loaded (less code resident).
		cfg = aws.Config{
			Region:      hclx.Str(r.Region),
			Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(*r.AccessKey, hclx.Str(r.SecretKey), hclx.Str(r.SessionToken))),
		}
		if httpClient != nil {
			cfg.HTTPClient = httpClient
		}
	} else {
		var err error
		cfg, err = awsconfig.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("aws config: %w", err)
		}
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	endpoint := hclx.Str(r.Endpoint)
	// S3-compatible stores reached by endpoint usually want path-style.
	pathStyle := endpoint != ""
	if r.PathStyle != nil {
		pathStyle = *r.PathStyle
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		// The agent verifies MD5 and SHA-256 itself while streaming; one
		// verification, in one place.
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return &Client{Client: c, creds: cfg.Credentials}, nil
}

// CredentialsSource names where the credentials come from, for errors.
func (c *Client) CredentialsSource(ctx context.Context) string {
	c.once.Do(func() {
		if c.creds == nil {
			c.from = "no credentials"
			return
		}
		v, err := c.creds.Retrieve(ctx)
		if err != nil {
			c.from = "no credentials found: " + err.Error()
			return
		}
		c.from = v.Source
	})
	return c.from
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
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &s.key})
	if err != nil {
		return artifact.Info{}, s.classify(ctx, "check", err)
	}
	info := artifact.Info{
		Key:         s.String(),
		VersionID:   aws.ToString(out.VersionId),
		ContentType: aws.ToString(out.ContentType),
		Size:        aws.ToInt64(out.ContentLength),
		Modified:    aws.ToTime(out.LastModified),
	}
	etag := aws.ToString(out.ETag)
	info.SetChecksums(etag, out.Metadata[artifact.MetaMD5], out.Metadata[artifact.MetaSHA256], strings.Contains(etag, "-"))
	return info, nil
}

// Open fetches the pinned version: by version id when the bucket has
// versioning, else by a GET conditional on the ETag.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &s.key}
	if pin.VersionID != "" && pin.VersionID != "null" {
		in.VersionId = aws.String(pin.VersionID)
	}
	if pin.ETag != "" {
		in.IfMatch = aws.String(`"` + pin.ETag + `"`)
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		return nil, s.classify(ctx, "download", err)
	}
	return out.Body, nil
}

func (s *Source) classify(ctx context.Context, doing string, err error) error {
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	code := ""
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	switch {
	case status == http.StatusPreconditionFailed || code == "PreconditionFailed":
		return fmt.Errorf("%s %s: %w", doing, s, artifact.ErrChanged)
	case status == http.StatusNotFound || code == "NoSuchKey" || code == "NoSuchBucket" || code == "NotFound":
		what := "no such object"
		if code == "NoSuchBucket" {
			what = "no such bucket"
		}
		return fmt.Errorf("%s %s: %w (%s)", doing, s, artifact.ErrNotFound, what)
	case status == http.StatusForbidden || status == http.StatusUnauthorized || code == "AccessDenied" ||
		code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return fmt.Errorf("%s %s: %w (%s; credentials from %s)", doing, s, artifact.ErrAccess, orStatus(code, status), s.client.CredentialsSource(ctx))
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
