package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dropshipd/dropship/internal/hclx"
)

// Client speaks the few S3 REST calls dropship makes (HEAD, GET, PUT and
// multipart upload), signed with SigV4. It is not the AWS SDK: the agent
// runs on every server, idle most of the time, and the SDK's packages
// cost it more resident memory than the rest of the agent together.
type Client struct {
	hc        *http.Client
	endpoint  *url.URL // nil: AWS itself
	pathStyle bool
	creds     *credCache
	now       func() time.Time

	mu      sync.Mutex
	region  string
	regions map[string]string // bucket -> region, learned from redirects
}

// NewClient builds a client from r. Without access_key it uses the
// standard AWS credential chain: environment, web identity, shared config
// and profile (keys, credential_process, assumed roles), container and
// instance roles. Only the environment and the shared files are read
// here; credentials are fetched on first use.
func NewClient(_ context.Context, r Repo) (*Client, error) {
	return newClient(r, os.Getenv)
}

func newClient(r Repo, env credEnv) (*Client, error) {
	var pem []byte
	if v := hclx.Str(r.CAFile); v != "" {
		var err error
		if pem, err = os.ReadFile(v); err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
	}
	tr, err := transport(pem)
	if err != nil {
		return nil, fmt.Errorf("ca_file %s: %w", hclx.Str(r.CAFile), err)
	}
	c := &Client{hc: &http.Client{Transport: tr}, now: time.Now, regions: map[string]string{}}
	if ep := hclx.Str(r.Endpoint); ep != "" {
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("endpoint %q: want http(s)://host[:port]", hclx.Str(r.Endpoint))
		}
		c.endpoint = u
		// S3-compatible stores reached by endpoint usually want path-style.
		c.pathStyle = true
	}
	if r.PathStyle != nil {
		c.pathStyle = *r.PathStyle
	}

	region := hclx.Str(r.Region)
	if region == "" {
		region = env.get("AWS_REGION", "AWS_DEFAULT_REGION")
	}
	if r.AccessKey != nil {
		c.creds = newCache(staticProvider{Credentials{AccessKey: *r.AccessKey, SecretKey: hclx.Str(r.SecretKey),
			SessionToken: hclx.Str(r.SessionToken), Source: "StaticCredentials (the config's access_key)"}})
	} else {
		p, profRegion, err := resolveProvider(env, hclx.Str(r.Profile), c.hc, region)
		if err != nil {
			return nil, err
		}
		c.creds = newCache(p)
		if region == "" {
			region = profRegion
		}
	}
	if region == "" {
		region = "us-east-1"
	}
	c.region = region
	return c, nil
}

// transports are shared by every client with the same CA bundle: one
// pool of connections per store for all services, not one per service
// (each idle connection holds two goroutines and their buffers).
var transports struct {
	sync.Mutex
	m map[string]*http.Transport
}

func transport(pem []byte) (*http.Transport, error) {
	transports.Lock()
	defer transports.Unlock()
	if tr := transports.m[string(pem)]; tr != nil {
		return tr, nil
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
	if len(pem) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("no PEM certificates")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if transports.m == nil {
		transports.m = map[string]*http.Transport{}
	}
	transports.m[string(pem)] = tr
	return tr, nil
}

// CredentialsSource names where the credentials come from, for errors.
func (c *Client) CredentialsSource(ctx context.Context) string {
	v, err := c.creds.get(ctx)
	if err != nil {
		return "no credentials found: " + err.Error()
	}
	return v.Source
}

// Error is an S3 error answer.
type Error struct {
	Status  int
	Code    string // NoSuchKey, AccessDenied, … (empty for HEAD)
	Message string
	Region  string // x-amz-bucket-region, when the store said
}

func (e *Error) Error() string {
	s := strconv.Itoa(e.Status) + " " + http.StatusText(e.Status)
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// request is one S3 call.
type request struct {
	method string
	bucket string
	key    string
	query  url.Values
	header http.Header
	body   io.ReadSeeker // nil for none
	size   int64
}

func (c *Client) bucketRegion(bucket string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.regions[bucket]; r != "" {
		return r
	}
	return c.region
}

// url is where r goes: path-style or virtual-hosted, on the endpoint or
// on AWS in region.
func (c *Client) url(r request, region string) *url.URL {
	u := &url.URL{Scheme: "https"}
	host := "s3." + region + ".amazonaws.com"
	prefix := ""
	if c.endpoint != nil {
		u.Scheme, host, prefix = c.endpoint.Scheme, c.endpoint.Host, strings.TrimSuffix(c.endpoint.Path, "/")
	}
	path := prefix + "/"
	switch {
	case r.bucket == "":
	case c.pathStyle || strings.Contains(r.bucket, "."):
		// Dotted names break the wildcard TLS certificate of AWS.
		path += r.bucket + "/" + r.key
		if r.key == "" {
			path = strings.TrimSuffix(path, "/")
		}
	default:
		host = r.bucket + "." + host
		path += r.key
	}
	u.Host = host
	setPath(u, path)
	if len(r.query) > 0 {
		u.RawQuery = strings.ReplaceAll(r.query.Encode(), "+", "%20")
	}
	return u
}

// do sends r, signed, and returns a 2xx response or an *Error. Calls that
// fail on the way or with a 5xx are tried again, up to three times, when
// their body can be sent again; a wrong region is followed once.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	region := c.bucketRegion(r.bucket)
	redirected := false
	for attempt := 0; ; attempt++ {
		resp, err := c.send(ctx, r, region)
		var e *Error
		switch {
		case err == nil:
			return resp, nil
		case ctx.Err() != nil:
			return nil, err
		case errors.As(err, &e) && e.Region != "" && e.Region != region && !redirected &&
			(e.Status == http.StatusMovedPermanently || e.Status == http.StatusBadRequest || e.Status == http.StatusForbidden):
			// The bucket lives in another region: sign for that one.
			redirected, region = true, e.Region
			c.mu.Lock()
			c.regions[r.bucket] = region
			c.mu.Unlock()
			attempt--
			continue
		case attempt >= 2 || (errors.As(err, &e) && e.Status < 500):
			return nil, err
		}
		// Backoff with jitter: about 100 ms, then 400 ms.
		wait := time.Duration(100<<(2*attempt)) * time.Millisecond
		wait = wait/2 + rand.N(wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

func (c *Client) send(ctx context.Context, r request, region string) (*http.Response, error) {
	creds, err := c.creds.get(ctx)
	if err != nil {
		return nil, err
	}
	var body io.Reader
	if r.body != nil {
		if _, err := r.body.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		body = io.NopCloser(r.body) // the transport must not close it: it may be sent again
		if r.size == 0 {
			body = http.NoBody
		}
	}
	u := c.url(r, region)
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.URL = u // keeps RawPath exactly as signed
	req.ContentLength = r.size
	if r.body == nil {
		req.ContentLength = 0
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	hash := emptySHA256
	if r.body != nil {
		hash = unsignedPayload
	}
	sign(req, creds, region, "s3", hash, c.now())
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode, Region: resp.Header.Get("X-Amz-Bucket-Region")}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var x struct {
		Code    string
		Message string
		Region  string
	}
	if xml.Unmarshal(data, &x) == nil {
		e.Code, e.Message = x.Code, x.Message
		if e.Region == "" {
			e.Region = x.Region
		}
	}
	return nil, e
}

// object is what HEAD and GET tell of an object.
type object struct {
	ETag        string
	Size        int64
	Modified    time.Time
	ContentType string
	VersionID   string
	Meta        map[string]string // x-amz-meta-*, keys lower case
}

func objectOf(h http.Header, size int64) object {
	o := object{
		ETag:        strings.Trim(h.Get("ETag"), `"`),
		Size:        size,
		ContentType: h.Get("Content-Type"),
		VersionID:   h.Get("X-Amz-Version-Id"),
		Meta:        map[string]string{},
	}
	o.Modified, _ = http.ParseTime(h.Get("Last-Modified"))
	for k, vs := range h {
		if m, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok && len(vs) > 0 {
			o.Meta[m] = vs[0]
		}
	}
	return o
}

// HeadObject is one HEAD request.
func (c *Client) HeadObject(ctx context.Context, bucket, key string) (object, error) {
	resp, err := c.do(ctx, request{method: http.MethodHead, bucket: bucket, key: key})
	if err != nil {
		return object{}, err
	}
	resp.Body.Close()
	return objectOf(resp.Header, resp.ContentLength), nil
}

// GetObject streams an object: a version when versionID is set, and only
// if its ETag is still ifMatch when that is set.
func (c *Client) GetObject(ctx context.Context, bucket, key, versionID, ifMatch string) (io.ReadCloser, object, error) {
	r := request{method: http.MethodGet, bucket: bucket, key: key, header: http.Header{}}
	if versionID != "" {
		r.query = url.Values{"versionId": {versionID}}
	}
	if ifMatch != "" {
		r.header.Set("If-Match", `"`+ifMatch+`"`)
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return nil, object{}, err
	}
	return resp.Body, objectOf(resp.Header, resp.ContentLength), nil
}

func metaHeaders(md5b64 string, meta map[string]string) http.Header {
	h := http.Header{}
	if md5b64 != "" {
		h.Set("Content-Md5", md5b64)
	}
	for k, v := range meta {
		h.Set("X-Amz-Meta-"+k, v)
	}
	return h
}

// PutObject uploads body (size bytes; S3 checks md5b64, its MD5 in
// base64) with metadata.
func (c *Client) PutObject(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64, md5b64 string, meta map[string]string) error {
	h := metaHeaders(md5b64, meta)
	h.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(ctx, request{method: http.MethodPut, bucket: bucket, key: key, body: body, size: size, header: h})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// CreateMultipartUpload starts an upload in parts and returns its id.
func (c *Client) CreateMultipartUpload(ctx context.Context, bucket, key string, meta map[string]string) (string, error) {
	h := metaHeaders("", meta)
	h.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(ctx, request{method: http.MethodPost, bucket: bucket, key: key, query: url.Values{"uploads": {""}}, header: h})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var x struct{ UploadId string }
	if err := xml.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&x); err != nil || x.UploadId == "" {
		return "", fmt.Errorf("create multipart upload: no upload id in the answer (%v)", err)
	}
	return x.UploadId, nil
}

// UploadPart sends part n (from 1) and returns its ETag.
func (c *Client) UploadPart(ctx context.Context, bucket, key, uploadID string, n int, body io.ReadSeeker, size int64, md5b64 string) (string, error) {
	q := url.Values{"partNumber": {strconv.Itoa(n)}, "uploadId": {uploadID}}
	resp, err := c.do(ctx, request{method: http.MethodPut, bucket: bucket, key: key, query: q, body: body, size: size, header: metaHeaders(md5b64, nil)})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return resp.Header.Get("ETag"), nil
}

type completedPart struct {
	PartNumber int
	ETag       string
}

// CompleteMultipartUpload joins the parts. S3 may answer 200 and still
// put an error in the body; that is an error here.
func (c *Client) CompleteMultipartUpload(ctx context.Context, bucket, key, uploadID string, parts []completedPart) error {
	var buf bytes.Buffer
	buf.WriteString("<CompleteMultipartUpload>")
	for _, p := range parts {
		fmt.Fprintf(&buf, "<Part><PartNumber>%d</PartNumber><ETag>", p.PartNumber)
		xml.EscapeText(&buf, []byte(p.ETag))
		buf.WriteString("</ETag></Part>")
	}
	buf.WriteString("</CompleteMultipartUpload>")
	body := bytes.NewReader(buf.Bytes())
	h := http.Header{"Content-Type": {"application/xml"}}
	resp, err := c.do(ctx, request{method: http.MethodPost, bucket: bucket, key: key, query: url.Values{"uploadId": {uploadID}},
		body: body, size: int64(buf.Len()), header: h})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var x struct {
		XMLName xml.Name
		Code    string
		Message string
	}
	if xml.Unmarshal(data, &x) == nil && x.XMLName.Local == "Error" {
		return &Error{Status: resp.StatusCode, Code: x.Code, Message: x.Message}
	}
	return nil
}

// AbortMultipartUpload drops an unfinished upload and its parts.
func (c *Client) AbortMultipartUpload(ctx context.Context, bucket, key, uploadID string) error {
	resp, err := c.do(ctx, request{method: http.MethodDelete, bucket: bucket, key: key, query: url.Values{"uploadId": {uploadID}}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// CreateBucket makes a bucket in the client's region.
func (c *Client) CreateBucket(ctx context.Context, bucket string) error {
	r := request{method: http.MethodPut, bucket: bucket}
	if c.region != "us-east-1" {
		cfg := `<CreateBucketConfiguration><LocationConstraint>` + c.region + `</LocationConstraint></CreateBucketConfiguration>`
		r.body, r.size = strings.NewReader(cfg), int64(len(cfg))
		r.header = http.Header{"Content-Type": {"application/xml"}}
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
