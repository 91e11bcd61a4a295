package s3_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/artifact/sourcetest"
)

// Keys with characters that need encoding publish, stat and download, and
// a client of its own reads back the same object.
func TestOddKeysRoundTrip(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	for i, key := range []string{"dir/a b+c=d&e;f,g'h(i)*!~ü€.tar.gz", "x%2Fy?z#w", "deep/ly/nested/app.tar.gz"} {
		data := bytes.Repeat([]byte{byte('a' + i)}, 1000+i)
		p := filepath.Join(t.TempDir(), "a")
		os.WriteFile(p, data, 0o644)
		info, err := c.Publish(context.Background(), b, key, p, 0)
		if err != nil {
			t.Fatalf("%q: %v", key, err)
		}
		rc, err := c.Source(b, key).Open(context.Background(), info)
		if err != nil {
			t.Fatalf("%q: %v", key, err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("%q: read back %d bytes", key, len(got))
		}
		out, err := sdk(t).GetObject(context.Background(), &awss3.GetObjectInput{Bucket: &b, Key: aws.String(key)})
		if err != nil {
			t.Fatalf("SDK get %q: %v", key, err)
		}
		got, _ = io.ReadAll(out.Body)
		out.Body.Close()
		if !bytes.Equal(got, data) || out.Metadata["md5"] != info.MD5 {
			t.Fatalf("SDK reads %q as %d bytes, meta %v", key, len(got), out.Metadata)
		}
	}
}

// store makes a store from r with the process environment set to env
// alone (for the AWS variables), and checks it reaches the object; it
// returns where the credentials came from.
func store(t *testing.T, r s3.Config, env map[string]string, b, key string) string {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	if r.Endpoint == nil {
		r.Endpoint = aws.String(servers.MinIO(t).Endpoint)
	}
	c, err := s3.NewStore(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Source(b, key).Stat(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c.CredentialsSource(context.Background())
}

// The AWS SDK's default chain, through the store, against MinIO (and its
// STS for an assumed role).
func TestCredentialChain(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	dir := t.TempDir()
	home := func(files map[string]string) map[string]string {
		d := filepath.Join(dir, fmt.Sprint(len(files), time.Now().UnixNano()))
		os.MkdirAll(d, 0o755)
		e := map[string]string{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(d, "credentials"), "AWS_CONFIG_FILE": filepath.Join(d, "config"),
			"AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": "us-east-1"}
		for name, body := range files {
			os.WriteFile(filepath.Join(d, name), []byte(body), 0o600)
		}
		return e
	}
	keys := fmt.Sprintf("aws_access_key_id = %s\naws_secret_access_key = %s\n", servers.MinIO(t).AccessKey, servers.MinIO(t).SecretKey)

	t.Run("config keys", func(t *testing.T) {
		src := store(t, s3.Config{AccessKey: &servers.MinIO(t).AccessKey, SecretKey: &servers.MinIO(t).SecretKey}, home(nil), b, "k")
		if src != "StaticCredentials" {
			t.Errorf("source %q", src)
		}
	})
	t.Run("environment", func(t *testing.T) {
		e := home(nil)
		e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"] = servers.MinIO(t).AccessKey, servers.MinIO(t).SecretKey
		if src := store(t, s3.Config{}, e, b, "k"); !strings.Contains(src, "Env") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("credentials file", func(t *testing.T) {
		e := home(map[string]string{"credentials": "# comment\n[default]\n" + keys})
		if src := store(t, s3.Config{}, e, b, "k"); !strings.Contains(src, "SharedConfigCredentials") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("named profile over the default", func(t *testing.T) {
		cfg := "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[profile deploy]\nregion = us-east-1\n" + keys
		if src := store(t, s3.Config{Profile: aws.String("deploy")}, home(map[string]string{"config": cfg}), b, "k"); !strings.Contains(src, "SharedConfigCredentials") {
			t.Errorf("source %q", src)
		}
		e := home(map[string]string{"config": cfg})
		e["AWS_PROFILE"] = "deploy"
		store(t, s3.Config{}, e, b, "k")
	})
	t.Run("credential_process", func(t *testing.T) {
		script := filepath.Join(dir, "creds.sh")
		os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\"}'\n", servers.MinIO(t).AccessKey, servers.MinIO(t).SecretKey)), 0o755)
		e := home(map[string]string{"config": "[profile p]\ncredential_process = " + script + "\n"})
		if src := store(t, s3.Config{Profile: aws.String("p")}, e, b, "k"); src != "ProcessProvider" {
			t.Errorf("source %q", src)
		}
	})
	t.Run("assumed role through MinIO's STS", func(t *testing.T) {
		e := home(map[string]string{"config": "[profile base]\n" + keys + "\n[profile role]\nrole_arn = arn:aws:iam::123456789012:role/deploy\nsource_profile = base\n"})
		e["AWS_ENDPOINT_URL_STS"] = servers.MinIO(t).Endpoint
		if src := store(t, s3.Config{Profile: aws.String("role")}, e, b, "k"); src != "AssumeRoleProvider" {
			t.Errorf("source %q", src)
		}
	})
	t.Run("container endpoint", func(t *testing.T) {
		srv := credServer(t, "/creds", func(r *http.Request) bool { return r.Header.Get("Authorization") == "secret-token" })
		e := home(nil)
		e["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = srv.URL + "/creds"
		e["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "secret-token"
		if src := store(t, s3.Config{}, e, b, "k"); src != "CredentialsEndpointProvider" {
			t.Errorf("source %q", src)
		}
	})
	t.Run("a missing profile is a load error", func(t *testing.T) {
		for k, v := range home(nil) {
			t.Setenv(k, v)
		}
		_, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(servers.MinIO(t).Endpoint), Profile: aws.String("missing")})
		if err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("%v", err)
		}
	})
	t.Run("no credentials at all: the error says so", func(t *testing.T) {
		for k, v := range home(nil) {
			t.Setenv(k, v)
		}
		st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(servers.MinIO(t).Endpoint)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Source(b, "k").Stat(context.Background())
		if err == nil || !strings.Contains(err.Error(), "credentials") || !strings.Contains(err.Error(), "s3://"+b+"/k") {
			t.Errorf("%v", err)
		}
	})
}

// credServer hands out MinIO's keys as temporary credentials.
func credServer(t *testing.T, path string, ok func(*http.Request) bool) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || !ok(r) {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"AccessKeyId": servers.MinIO(t).AccessKey, "SecretAccessKey": servers.MinIO(t).SecretKey,
			"Token": "", "Expiration": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// fast is the default policy without its waits, for tests.
func fast() artifact.Policy {
	p := artifact.DefaultPolicy
	p.Backoff = time.Millisecond
	return p
}

// A 5xx or a dropped connection is tried again by the retry wrapper; a
// 403 is not: the SDK makes one request per call.
func TestTransientErrorsAreRetried(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(servers.MinIO(t).Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	seen := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen++
		n := seen
		mu.Unlock()
		switch n {
		case 1:
			http.Error(w, "<Error><Code>SlowDown</Code></Error>", http.StatusServiceUnavailable)
		case 2:
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	defer srv.Close()
	src := artifact.Retry(client(t, srv.URL, servers.MinIO(t).SecretKey).Source(b, "k"), fast(), nil)
	if _, err := src.Stat(context.Background()); err != nil || seen != 3 {
		t.Fatalf("after a 503 and a dropped connection: %v (%d requests)", err, seen)
	}
	seen = 2
	_, err := artifact.Retry(client(t, srv.URL, "wrong").Source(b, "k"), fast(), nil).Stat(context.Background())
	if !errors.Is(err, artifact.ErrAccess) || seen != 3 {
		t.Fatalf("a 403 was tried %d times: %v", seen-2, err)
	}
}

// A store set up for another region than the bucket's follows the store's
// answer once and signs for the right region. In front of MinIO (which
// takes any region), a proxy answers as AWS does: 301 with
// x-amz-bucket-region to a request signed for another region.
func TestWrongRegionIsFollowed(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(servers.MinIO(t).Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var regions []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Credential=AKID/20260304/REGION/s3/aws4_request
		region := strings.Split(strings.SplitN(r.Header.Get("Authorization"), "Credential=", 2)[1], "/")[2]
		mu.Lock()
		regions = append(regions, region)
		mu.Unlock()
		if region != "us-east-1" {
			w.Header().Set("X-Amz-Bucket-Region", "us-east-1")
			w.WriteHeader(http.StatusMovedPermanently)
			if r.Method != http.MethodHead {
				io.WriteString(w, "<Error><Code>PermanentRedirect</Code><Message>use the right endpoint</Message></Error>")
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	other, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(srv.URL), Region: aws.String("eu-west-3"),
		AccessKey: aws.String(servers.MinIO(t).AccessKey), SecretKey: aws.String(servers.MinIO(t).SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	src := other.Source(b, "k")
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatalf("stat with the wrong region: %v", err)
	}
	rc, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatalf("get with the wrong region: %v", err)
	}
	rc.Close()
	// One redirect, then the learnt region from the start.
	if want := []string{"eu-west-3", "us-east-1", "us-east-1"}; !slices.Equal(regions, want) {
		t.Fatalf("signed for regions %v, want %v", regions, want)
	}
}

// Services on the same store share one pool of connections: ten sources
// of one store checking one after another use one connection, not ten.
func TestSourcesOfAStoreShareConnections(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(servers.MinIO(t).Endpoint)
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	st := client(t, srv.URL, servers.MinIO(t).SecretKey)
	for i := range 10 {
		if _, err := st.Source(b, "k").Stat(context.Background()); err != nil {
			t.Fatal(err)
		}
		if i == 5 {
			p := filepath.Join(t.TempDir(), "a")
			os.WriteFile(p, []byte("published"), 0o644)
			if _, err := st.Publish(context.Background(), b, "p", p, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("10 sources and a publish opened %d connections", n)
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// fetch reads pin through src and a verifier, as the agent does.
func fetch(src artifact.Source, pin artifact.Info) ([]byte, error) {
	rc, err := src.Open(context.Background(), pin)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	v := artifact.NewVerifier(rc, pin)
	got, err := io.ReadAll(v)
	if err != nil {
		return got, err
	}
	return got, v.Drain()
}

// One download on a connection that always drops makes exactly the
// documented number of GETs, then fails.
func TestDroppedDownloadMakesAtMostTriesGETs(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", random(1<<20))
	p := sourcetest.NewProxy(t, servers.MinIO(t).Addr)
	src := artifact.Retry(client(t, "http://"+p.Addr(), servers.MinIO(t).SecretKey).Source(b, "k"), fast(), nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p.CutAfter(100_000)
	if got, err := fetch(src, pin); err == nil {
		t.Fatalf("a download cut on every connection verified (%d bytes)", len(got))
	}
	if n := p.Requests("GET"); n != artifact.DefaultPolicy.Tries {
		t.Fatalf("one dropped download made %d GETs, the policy says %d", n, artifact.DefaultPolicy.Tries)
	}
}

// A large download cut three times resumes where it was each time: the
// bytes are right and the proxy forwards little more than the object.
func TestDownloadResumesAfterCuts(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	data := random(24 << 20)
	for _, versioned := range []bool{false, true} {
		b, key := bucket(t, c), "big"
		if versioned {
			_, err := sdk(t).PutBucketVersioning(context.Background(), &awss3.PutBucketVersioningInput{Bucket: &b,
				VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled}})
			if err != nil {
				t.Fatal(err)
			}
		}
		put(t, c, b, key, data)
		p := sourcetest.NewProxy(t, servers.MinIO(t).Addr)
		src := artifact.Retry(client(t, "http://"+p.Addr(), servers.MinIO(t).SecretKey).Source(b, key), fast(), nil)
		pin, err := src.Stat(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if versioned != (pin.VersionID != "" && pin.VersionID != "null") {
			t.Fatalf("versioned=%v but version id %q", versioned, pin.VersionID)
		}
		p.CutTimes(5<<20, 3)
		before := p.Bytes()
		got, err := fetch(src, pin)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("download cut three times: %d bytes, %v", len(got), err)
		}
		fetched := p.Bytes() - before
		if limit := int64(len(data)) * 11 / 10; fetched > limit {
			t.Fatalf("fetched %d bytes for a %d-byte object (limit %d)", fetched, len(data), limit)
		}
		if n := p.Requests("GET"); n != 4 {
			t.Fatalf("%d GETs, want 4 (three cuts, then the rest)", n)
		}
		t.Logf("versioned=%v: %d bytes through the proxy for %d, in %d GETs", versioned, fetched, len(data), p.Requests("GET"))
	}
}

// A resumed download of an object replaced meanwhile stops with
// ErrChanged: no mix of two versions.
func TestResumeOfAReplacedObjectIsChanged(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", random(32<<20))
	p := sourcetest.NewProxy(t, servers.MinIO(t).Addr)
	src := artifact.Retry(client(t, "http://"+p.Addr(), servers.MinIO(t).SecretKey).Source(b, "k"), fast(), nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rc, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	// The open connection closes (and MinIO's GET with it, which holds
	// the object), then the object is replaced: the resume finds another.
	p.CutAfter(-1)
	put(t, c, b, "k", random(32<<20+1))
	_, err = io.Copy(io.Discard, rc)
	if !errors.Is(err, artifact.ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
}

// A body that stops arriving mid-way (MinIO behind a proxy that holds the
// connection) is dropped after stall_timeout and resumed.
func TestStalledBodyResumes(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	data := random(8 << 20)
	put(t, c, b, "k", data)
	p := sourcetest.NewProxy(t, servers.MinIO(t).Addr)
	pol := fast()
	// Long enough that a loaded machine's own pauses are not taken for
	// the proxy's stall, which lasts until the request is given up.
	pol.Stall = 2 * time.Second
	src := artifact.Retry(client(t, "http://"+p.Addr(), servers.MinIO(t).SecretKey).Source(b, "k"), pol, nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p.PauseAfter(3 << 20)
	got, err := fetch(src, pin)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stalled download: %d bytes, %v", len(got), err)
	}
	if n := p.Requests("GET"); n != 2 {
		t.Fatalf("%d GETs, want 2 (the stalled one, then the rest)", n)
	}
}

// A store that sends the headers and a few bytes of the body, then
// nothing: each GET is dropped after stall_timeout, and the download fails
// with ErrStalled once the tries are spent, instead of hanging.
func TestStalledStoreFailsWithinTheTries(t *testing.T) {
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
		w.Header().Set("Content-Length", "1000")
		if r.Method == http.MethodHead {
			return
		}
		gets.Add(1)
		status := http.StatusOK
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-999/1000", from))
			w.Header().Set("Content-Length", fmt.Sprint(1000-from))
			status = http.StatusPartialContent
		}
		w.WriteHeader(status)
		w.Write([]byte("0123456789"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // then nothing, until the client goes
	}))
	defer srv.Close()
	st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(srv.URL), Region: aws.String("us-east-1"),
		AccessKey: aws.String("a"), SecretKey: aws.String("b")})
	if err != nil {
		t.Fatal(err)
	}
	pol := fast()
	pol.Tries, pol.Stall = 3, 200*time.Millisecond
	src := artifact.Retry(st.Source("b", "k"), pol, nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = fetch(src, pin)
	if !errors.Is(err, artifact.ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if n := gets.Load(); n != 3 {
		t.Fatalf("%d GETs, want 3 (the policy's tries)", n)
	}
}

// A resume answered with the range of an object of another size (a cache
// in front of the store that ignores If-Match) is ErrChanged, so the
// update starts over: never the first bytes of one object and the rest of
// another.
func TestResumeOfAnotherSizeIsChanged(t *testing.T) {
	other := bytes.Repeat([]byte("b"), 3000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef-2"`)
		w.Header().Set("Content-Length", "2000")
		if r.Method == http.MethodHead {
			return
		}
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-2999/3000", from))
			w.Header().Set("Content-Length", fmt.Sprint(3000-from))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(other[from:])
			return
		}
		w.Write(bytes.Repeat([]byte("a"), 1000))
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close() // 1000 bytes of the 2000 announced
	}))
	defer srv.Close()
	st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(srv.URL), Region: aws.String("us-east-1"),
		AccessKey: aws.String("a"), SecretKey: aws.String("b")})
	if err != nil {
		t.Fatal(err)
	}
	src := artifact.Retry(st.Source("b", "k"), fast(), nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err = fetch(src, pin); !errors.Is(err, artifact.ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
}

// Objects encrypted with SSE-KMS or SSE-C have ETags that look like an
// MD5 and are not one: such an ETag is an opaque version token, or every
// download would fail its MD5 check.
func TestEncryptedObjectETagIsNotAnMD5(t *testing.T) {
	for _, h := range []map[string]string{
		{"x-amz-server-side-encryption": "aws:kms"},
		{"x-amz-server-side-encryption": "aws:kms:dsse"},
		{"x-amz-server-side-encryption-customer-algorithm": "AES256"},
		{"x-amz-server-side-encryption": "AES256"}, // SSE-S3: the ETag is the MD5
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
			w.Header().Set("Content-Length", "10")
			for k, v := range h {
				w.Header().Set(k, v)
			}
		}))
		st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(srv.URL), Region: aws.String("us-east-1"),
			AccessKey: aws.String("a"), SecretKey: aws.String("b")})
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Source("b", "k").Stat(context.Background())
		srv.Close()
		want := "opaque-etag"
		if h["x-amz-server-side-encryption"] == "AES256" {
			want = "etag"
		}
		if err != nil || info.ChecksumFrom != want || (want == "opaque-etag") != (info.MD5 == "") {
			t.Errorf("%v: checksum from %q, md5 %q, %v; want from %q", h, info.ChecksumFrom, info.MD5, err, want)
		}
	}
}

// A weak ETag (a proxy or CDN rewrote the object) is refused at the check,
// once, with a message saying so: no GET could be pinned to it.
func TestWeakETagIsRefusedAtTheCheck(t *testing.T) {
	var heads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		heads.Add(1)
		w.Header().Set("ETag", `W/"0123456789abcdef0123456789abcdef"`)
		w.Header().Set("Content-Length", "10")
	}))
	defer srv.Close()
	st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(srv.URL), Region: aws.String("us-east-1"),
		AccessKey: aws.String("a"), SecretKey: aws.String("b")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = artifact.Retry(st.Source("b", "k"), artifact.DefaultPolicy, nil).Stat(context.Background())
	if !errors.Is(err, artifact.ErrRejected) || !strings.Contains(err.Error(), "weak ETag") {
		t.Fatalf("a weak ETag: %v", err)
	}
	if n := heads.Load(); n != 1 {
		t.Fatalf("%d requests for a refusal that asking again cannot change", n)
	}
}
