// Package s3 is the Amazon S3 artifact source; it works with every
// S3-compatible store (MinIO, Ceph, R2, …) through `endpoint`. It is the
// AWS SDK for Go v2: its client, its default credential chain, and its
// upload manager for publishing.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Config is the connection part of the config: a `repo "s3"` block of
// the agent file, or the same keys inline in an artifact block.
type Config struct {
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

// DecodeConfig decodes the connection keys of body, with warnings for old
// names. A relative ca_file is resolved against base, the directory of
// the file the keys are written in.
func DecodeConfig(body hcl.Body, base string) (Config, hcl.Diagnostics) {
	var c Config
	diags := gohcl.DecodeBody(body, nil, &c)
	diags = append(diags, hclx.Legacy(body, legacy)...)
	c.Region = hclx.First(c.Region, c.OldRegion)
	c.AccessKey = hclx.First(c.AccessKey, c.OldAccessKey)
	c.SecretKey = hclx.First(c.SecretKey, c.OldSecret)
	c.OldRegion, c.OldAccessKey, c.OldSecret = nil, nil, nil
	if c.CAFile != nil {
		p := hclx.Path(base, *c.CAFile)
		c.CAFile = &p
	}
	if (c.AccessKey == nil) != (c.SecretKey == nil) {
		diags = append(diags, hclx.Errorf(body, "access_key", "Incomplete credentials",
			"access_key and secret_key go together; leave both out to use the AWS SDK's default credential chain."))
	}
	return c, diags
}

// Over returns c with the keys written in body over it.
func (c Config) Over(body hcl.Body, base string) (artifact.Settings, hcl.Diagnostics) {
	o, diags := DecodeConfig(body, base)
	return c.merge(o), diags
}

// Open makes the store of c.
func (c Config) Open() (artifact.Store, error) { return NewStore(context.Background(), c) }

// merge returns c with the keys set in o overriding it.
func (c Config) merge(o Config) Config {
	c.Region = hclx.First(o.Region, c.Region)
	c.Endpoint = hclx.First(o.Endpoint, c.Endpoint)
	c.AccessKey = hclx.First(o.AccessKey, c.AccessKey)
	c.SecretKey = hclx.First(o.SecretKey, c.SecretKey)
	c.SessionToken = hclx.First(o.SessionToken, c.SessionToken)
	c.Profile = hclx.First(o.Profile, c.Profile)
	c.PathStyle = hclx.First(o.PathStyle, c.PathStyle)
	c.CAFile = hclx.First(o.CAFile, c.CAFile)
	return c
}

// Key identifies the settings, to share one store among blocks that
// repeat them.
func (c Config) Key() string {
	ps := "unset"
	if c.PathStyle != nil {
		ps = fmt.Sprint(*c.PathStyle)
	}
	return strings.Join([]string{"s3", hclx.Str(c.Region), hclx.Str(c.Endpoint), hclx.Str(c.AccessKey), hclx.Str(c.SecretKey),
		hclx.Str(c.SessionToken), hclx.Str(c.Profile), ps, hclx.Str(c.CAFile)}, "\x00")
}

// Store is one S3 account: one SDK client with one connection pool and
// one credential cache, shared by every service that uses the repo.
type Store struct {
	cfg    Config
	client *awss3.Client
	creds  aws.CredentialsProvider
	region string

	mu      sync.Mutex
	regions map[string]string // bucket -> region, learned from the store's answers
}

// NewStore makes the SDK client for c. Without access_key, credentials come
// from the AWS SDK's default chain (environment, shared config and
// credentials files with profiles, SSO, credential_process and assumed
// roles, web identity, container and EC2 instance roles); only the
// environment and the shared files are read here, credentials are fetched
// on first use.
func NewStore(ctx context.Context, c Config) (*Store, error) {
	hc, err := httpClient(hclx.Str(c.CAFile))
	if err != nil {
		return nil, err
	}
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(hc),
		// The artifact package's retry wrapper is the only retry layer.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		// The agent hashes every byte itself (MD5 and SHA-256); a CRC of
		// the SDK on top would be a third pass for nothing.
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if r := hclx.Str(c.Region); r != "" {
		opts = append(opts, config.WithRegion(r))
	}
	if p := hclx.Str(c.Profile); p != "" {
		opts = append(opts, config.WithSharedConfigProfile(p))
	}
	if c.AccessKey != nil {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(*c.AccessKey, hclx.Str(c.SecretKey), hclx.Str(c.SessionToken))))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	pathStyle := false
	var endpoint string
	if ep := hclx.Str(c.Endpoint); ep != "" {
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		if endpoint, err = parseEndpoint(ep); err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", hclx.Str(c.Endpoint), err)
		}
		// S3-compatible stores reached by endpoint usually want path-style.
		pathStyle = true
	}
	if c.PathStyle != nil {
		pathStyle = *c.PathStyle
	}
	client := awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
	})
	return &Store{cfg: c, client: client, creds: awsCfg.Credentials, region: awsCfg.Region, regions: map[string]string{}}, nil
}

func parseEndpoint(ep string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, ep, nil)
	if err != nil || req.URL.Host == "" || (req.URL.Scheme != "http" && req.URL.Scheme != "https") {
		return "", errors.New("want http(s)://host[:port]")
	}
	return strings.TrimSuffix(ep, "/"), nil
}

// httpClient is the store's one pool of connections, for S3 and for the
// credential services the chain calls (STS, SSO, instance metadata).
func httpClient(caFile string) (*awshttp.BuildableClient, error) {
	var pool *x509.CertPool
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificates", caFile)
		}
	}
	return awshttp.NewBuildableClient().WithDialerOptions(func(d *net.Dialer) {
		d.Timeout, d.KeepAlive = 10*time.Second, 30*time.Second
	}).WithTransportOptions(func(tr *http.Transport) {
		tr.TLSHandshakeTimeout = 10 * time.Second
		tr.ResponseHeaderTimeout = time.Minute
		tr.IdleConnTimeout = 90 * time.Second
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 8, 4
		if pool != nil {
			if tr.TLSClientConfig == nil {
				tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			tr.TLSClientConfig.RootCAs = pool
		}
	}), nil
}

// Settings are the keys the store was made of.
func (s *Store) Settings() artifact.Settings { return s.cfg }

// Source is the object key in bucket.
func (s *Store) Source(bucket, key string) artifact.Source {
	return &Source{store: s, bucket: bucket, key: strings.TrimPrefix(key, "/")}
}

// Source is one object in one bucket.
type Source struct {
	store  *Store
	bucket string
	key    string
}

type block struct {
	Bucket string   `hcl:"bucket"`
	Path   string   `hcl:"path"`
	Repo   *string  `hcl:"repo,optional"`
	Inline hcl.Body `hcl:",remain"`
}

// RepoFactory decodes a `repo "s3"` block into its store.
func RepoFactory(_ string, body hcl.Body, base string) (artifact.Store, hcl.Diagnostics) {
	return artifact.RepoStore(body, base, Config{}, "S3")
}

// Factory decodes `artifact "s3" { bucket path [repo] [inline keys] }`.
// Keys written in the block override its repo's, and make a store of
// their own (shared with blocks that write the same keys).
func Factory(_ string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	var c block
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	diags = append(diags, hclx.Required(body, "bucket", c.Bucket)...)
	diags = append(diags, hclx.Required(body, "path", c.Path)...)
	st, diags := env.Store(body, artifact.Conn{Kind: "s3", Types: []string{"s3"}, Repo: c.Repo, Keys: c.Inline, None: Config{}, What: "S3"}, diags)
	if st == nil {
		return nil, diags
	}
	return st.Source(c.Bucket, c.Path), diags
}

func (s *Source) String() string { return "s3://" + s.bucket + "/" + s.key }

// regionOf is the region requests for bucket are signed for.
func (s *Store) regionOf(bucket string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.regions[bucket]; r != "" {
		return r
	}
	return s.region
}

// inRegion runs call signed for bucket's region; when the store answers
// that the bucket lives in another region (x-amz-bucket-region), it learns
// that region and calls once more.
func inRegion[T any](ctx context.Context, s *Store, bucket string, call func(context.Context, func(*awss3.Options)) (T, error)) (T, error) {
	region := s.regionOf(bucket)
	out, err := call(ctx, func(o *awss3.Options) { o.Region = region })
	var re *awshttp.ResponseError
	if err == nil || !errors.As(err, &re) || re.Response == nil {
		return out, err
	}
	switch re.HTTPStatusCode() {
	case http.StatusMovedPermanently, http.StatusBadRequest, http.StatusForbidden:
	default:
		return out, err
	}
	other := re.Response.Header.Get("X-Amz-Bucket-Region")
	if other == "" || other == region {
		return out, err
	}
	s.mu.Lock()
	s.regions[bucket] = other
	s.mu.Unlock()
	return call(ctx, func(o *awss3.Options) { o.Region = other })
}

// Stat is one HEAD request.
func (s *Source) Stat(ctx context.Context) (artifact.Info, error) {
	o, err := inRegion(ctx, s.store, s.bucket, func(ctx context.Context, opt func(*awss3.Options)) (*awss3.HeadObjectOutput, error) {
		return s.store.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &s.bucket, Key: &s.key}, opt)
	})
	if err != nil {
		return artifact.Info{}, s.classify(ctx, "check", err)
	}
	info := artifact.Info{
		Key:         s.String(),
		VersionID:   aws.ToString(o.VersionId),
		ContentType: aws.ToString(o.ContentType),
		Size:        aws.ToInt64(o.ContentLength),
		Modified:    aws.ToTime(o.LastModified),
	}
	etag := aws.ToString(o.ETag)
	// Multipart uploads, and objects encrypted with SSE-KMS or SSE-C,
	// have ETags that are not the content's MD5 (though the latter look
	// like one).
	opaque := strings.Contains(etag, "-") || strings.HasPrefix(string(o.ServerSideEncryption), "aws:kms") ||
		aws.ToString(o.SSECustomerAlgorithm) != ""
	if err := info.SetChecksums(etag, meta(o.Metadata, artifact.MetaMD5), meta(o.Metadata, artifact.MetaSHA256), opaque); err != nil {
		return artifact.Info{}, fmt.Errorf("check %s: %w", s, err)
	}
	return info, nil
}

func meta(m map[string]string, k string) string {
	if v, ok := m[k]; ok {
		return v
	}
	for mk, v := range m {
		if strings.EqualFold(mk, k) {
			return v
		}
	}
	return ""
}

// Open fetches the pinned version: by version id when the bucket has
// versioning, else by a GET conditional on the ETag.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	return s.OpenAt(ctx, pin, 0)
}

// OpenAt is Open from byte off on, pinned the same way.
func (s *Source) OpenAt(ctx context.Context, pin artifact.Info, off int64) (io.ReadCloser, error) {
	in := &awss3.GetObjectInput{Bucket: &s.bucket, Key: &s.key}
	if pin.VersionID != "" && pin.VersionID != "null" {
		in.VersionId = aws.String(pin.VersionID)
	}
	if pin.ETag != "" {
		in.IfMatch = aws.String(`"` + pin.ETag + `"`)
	}
	if off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	o, err := inRegion(ctx, s.store, s.bucket, func(ctx context.Context, opt func(*awss3.Options)) (*awss3.GetObjectOutput, error) {
		return s.store.client.GetObject(ctx, in, opt)
	})
	if err != nil {
		return nil, s.classify(ctx, "download", err)
	}
	if off > 0 {
		if err := artifact.CheckRange(aws.ToString(o.ContentRange), off, pin); err != nil {
			o.Body.Close()
			return nil, fmt.Errorf("download %s from byte %d: %w", s, off, err)
		}
	}
	return o.Body, nil
}

// classify maps the store's answer onto the artifact errors, naming the
// object and, for a refusal, where the credentials came from.
func (s *Source) classify(ctx context.Context, doing string, err error) error {
	status, code := 0, ""
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	switch {
	case status == http.StatusPreconditionFailed || code == "PreconditionFailed":
		return fmt.Errorf("%s %s: %w", doing, s, artifact.ErrChanged)
	case status == http.StatusNotFound || code == "NoSuchKey" || code == "NoSuchBucket" || code == "NoSuchVersion":
		what := "no such object"
		if code == "NoSuchBucket" {
			what = "no such bucket"
		}
		return fmt.Errorf("%s %s: %w (%s)", doing, s, artifact.ErrNotFound, what)
	case status == http.StatusForbidden || status == http.StatusUnauthorized || code == "AccessDenied" ||
		code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return fmt.Errorf("%s %s: %w (%s; credentials from %s)", doing, s, artifact.ErrAccess, orStatus(code, status), s.store.CredentialsSource(ctx))
	case status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return fmt.Errorf("%s %s: %w: %w", doing, s, artifact.ErrRejected, err)
	}
	return fmt.Errorf("%s %s: %w", doing, s, err)
}

// CredentialsSource names where the credentials come from, for errors.
func (s *Store) CredentialsSource(ctx context.Context) string {
	if s.creds == nil {
		return "no credentials provider"
	}
	v, err := s.creds.Retrieve(context.WithoutCancel(ctx))
	if err != nil {
		return "no credentials found: " + err.Error()
	}
	return v.Source
}

func orStatus(code string, status int) string {
	if code != "" {
		return code
	}
	return http.StatusText(status)
}

var (
	_ artifact.Source      = (*Source)(nil)
	_ artifact.RangeOpener = (*Source)(nil)
	_ artifact.Store       = (*Store)(nil)
	_ artifact.Settings    = Config{}
)

// Name is the object's key in its bucket.
func (s *Source) Name() string { return s.key }

// Sibling is the object at key in the same bucket.
func (s *Source) Sibling(key string) artifact.Source { return s.store.Source(s.bucket, key) }

var _ artifact.Sibling = (*Source)(nil)
