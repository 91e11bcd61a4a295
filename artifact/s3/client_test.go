package s3_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dropshipd/dropship/artifact/s3"
)

// The signature of every kind of request dropship sends is the one the
// AWS SDK's own signer makes.
func TestSignMatchesTheAWSSDK(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	creds := s3.Credentials{AccessKey: "AKIDEXAMPLE", SecretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
	withToken := creds
	withToken.SessionToken = "FQoGZXIvYXdzEXAMPLE//token+="
	type req struct {
		name, method, path, query string
		header                    http.Header
		body                      string
		creds                     s3.Credentials
		region                    string
	}
	for _, r := range []req{
		{name: "head", method: "HEAD", path: "/bucket/app.tar.gz", creds: creds, region: "us-east-1"},
		{name: "odd key", method: "GET", path: "/bucket/dir/a b+c=d&e;f,g'h(i)*!~ü€.tar.gz", creds: creds, region: "eu-west-3"},
		{name: "version and if-match", method: "GET", path: "/app.tar.gz", query: "versionId=3%2FL4kqtJl%2B0&x-id=GetObject",
			header: http.Header{"If-Match": {`"d41d8cd98f00b204e9800998ecf8427e"`}}, creds: withToken, region: "us-west-2"},
		{name: "put with metadata", method: "PUT", path: "/b/k", body: "hello",
			header: http.Header{"Content-Md5": {"XUFAKrxLKna5cZ2REBfFkg=="}, "X-Amz-Meta-Md5": {"5d41402abc4b2a76b9719d911017c592"},
				"X-Amz-Meta-Sha256": {"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}, "Content-Type": {"application/octet-stream"},
				"X-Amz-Meta-Spaced": {"  a   b  "}}, creds: creds, region: "us-east-1"},
		{name: "multipart", method: "POST", path: "/b/k", query: "uploads=", creds: withToken, region: "ap-south-1"},
		{name: "part", method: "PUT", path: "/b/k", query: "partNumber=2&uploadId=abc%2Bdef", body: "part", creds: creds, region: "us-east-1"},
	} {
		t.Run(r.name, func(t *testing.T) {
			make := func() *http.Request {
				u := &url.URL{Scheme: "https", Host: "s3.example.com:8443", RawQuery: r.query}
				u.Path = r.path
				u.RawPath = escape(r.path)
				var body io.Reader
				if r.body != "" {
					body = strings.NewReader(r.body)
				}
				hr, _ := http.NewRequest(r.method, "https://x/", body)
				hr.URL, hr.Host = u, u.Host
				for k, v := range r.header {
					hr.Header[k] = v
				}
				hr.Header.Set("User-Agent", "not signed")
				return hr
			}
			hash := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
			if r.body != "" {
				hash = "UNSIGNED-PAYLOAD"
			}
			// The next day too: signing keys are derived once a day and kept.
			for _, when := range []time.Time{at, at.Add(36 * time.Hour), at} {
				mine := make()
				s3.Sign(mine, r.creds, r.region, "s3", hash, when)

				theirs := make()
				theirs.Header.Set("X-Amz-Content-Sha256", hash)
				signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
				err := signer.SignHTTP(context.Background(), aws.Credentials{AccessKeyID: r.creds.AccessKey, SecretAccessKey: r.creds.SecretKey,
					SessionToken: r.creds.SessionToken}, theirs, hash, "s3", r.region, when)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := mine.Header.Get("Authorization"), theirs.Header.Get("Authorization"); got != want {
					t.Errorf("Authorization\n got %s\nwant %s", got, want)
				}
				for _, h := range []string{"X-Amz-Date", "X-Amz-Security-Token"} {
					if mine.Header.Get(h) != theirs.Header.Get(h) {
						t.Errorf("%s: %q, SDK %q", h, mine.Header.Get(h), theirs.Header.Get(h))
					}
				}
			}
		})
	}
}

// escape is the S3 path encoding, written out independently.
func escape(p string) string {
	var b strings.Builder
	for _, c := range []byte(p) {
		if strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Keys with characters that need encoding publish, stat and download, and
// the AWS SDK reads back the same object.
func TestOddKeysRoundTrip(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	for i, key := range []string{"dir/a b+c=d&e;f,g'h(i)*!~ü€.tar.gz", "x%2Fy?z#w", "deep/ly/nested/app.tar.gz"} {
		data := bytes.Repeat([]byte{byte('a' + i)}, 1000+i)
		p := filepath.Join(t.TempDir(), "a")
		os.WriteFile(p, data, 0o644)
		info, err := s3.Publish(context.Background(), c, b, key, p, 0)
		if err != nil {
			t.Fatalf("%q: %v", key, err)
		}
		rc, err := s3.New(c, b, key).Open(context.Background(), info)
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

// env is a process environment for one test.
type env map[string]string

func (e env) get(k string) string { return e[k] }

// stat checks that a client made from env reaches the object, and
// returns where its credentials came from.
func stat(t *testing.T, r s3.Repo, e env, b, key string) string {
	t.Helper()
	if r.Endpoint == nil {
		r.Endpoint = aws.String(minio.Endpoint)
	}
	c, err := s3.NewClientEnv(r, e.get)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3.New(c, b, key).Stat(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c.CredentialsSource(context.Background())
}

func TestCredentialChain(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	dir := t.TempDir()
	home := func(files map[string]string) env {
		d := filepath.Join(dir, fmt.Sprint(len(files), time.Now().UnixNano()))
		os.MkdirAll(d, 0o755)
		e := env{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(d, "credentials"), "AWS_CONFIG_FILE": filepath.Join(d, "config"),
			"AWS_EC2_METADATA_DISABLED": "true"}
		for name, body := range files {
			os.WriteFile(filepath.Join(d, name), []byte(body), 0o600)
		}
		return e
	}
	keys := fmt.Sprintf("aws_access_key_id = %s\naws_secret_access_key = %s\n", minio.AccessKey, minio.SecretKey)

	t.Run("environment", func(t *testing.T) {
		e := home(nil)
		e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"] = minio.AccessKey, minio.SecretKey
		if src := stat(t, s3.Repo{}, e, b, "k"); !strings.Contains(src, "environment") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("credentials file", func(t *testing.T) {
		e := home(map[string]string{"credentials": "# comment\n[default]\n" + keys})
		if src := stat(t, s3.Repo{}, e, b, "k"); !strings.Contains(src, `profile "default"`) || !strings.Contains(src, "credentials") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("named profile in config, over the environment's default", func(t *testing.T) {
		e := home(map[string]string{"config": "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[profile deploy]\nregion = us-east-1\n" + keys})
		if src := stat(t, s3.Repo{Profile: aws.String("deploy")}, e, b, "k"); !strings.Contains(src, `profile "deploy"`) {
			t.Errorf("source %q", src)
		}
		e["AWS_PROFILE"] = "deploy"
		if src := stat(t, s3.Repo{}, e, b, "k"); !strings.Contains(src, `profile "deploy"`) {
			t.Errorf("AWS_PROFILE: source %q", src)
		}
	})
	t.Run("credential_process", func(t *testing.T) {
		script := filepath.Join(dir, "creds.sh")
		os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\"}'\n", minio.AccessKey, minio.SecretKey)), 0o755)
		e := home(map[string]string{"config": "[profile p]\ncredential_process = " + script + "\n"})
		if src := stat(t, s3.Repo{Profile: aws.String("p")}, e, b, "k"); !strings.Contains(src, "credential_process") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("assumed role through STS", func(t *testing.T) {
		// MinIO implements STS AssumeRole for its users.
		e := home(map[string]string{"config": "[profile base]\n" + keys + "\n[profile role]\nrole_arn = arn:aws:iam::123456789012:role/deploy\nsource_profile = base\n"})
		e["AWS_ENDPOINT_URL_STS"] = minio.Endpoint
		if src := stat(t, s3.Repo{Profile: aws.String("role")}, e, b, "k"); !strings.Contains(src, "assumed role") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("container endpoint", func(t *testing.T) {
		srv := credServer(t, "/creds", func(r *http.Request) bool { return r.Header.Get("Authorization") == "secret-token" })
		e := home(nil)
		e["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = srv.URL + "/creds"
		e["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "secret-token"
		if src := stat(t, s3.Repo{}, e, b, "k"); !strings.Contains(src, "container") {
			t.Errorf("source %q", src)
		}
	})
	t.Run("web identity", func(t *testing.T) {
		var form url.Values
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.ParseForm()
			form = r.PostForm
			if r.Header.Get("Authorization") != "" {
				http.Error(w, "web identity calls are not signed", 400)
				return
			}
			fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>
<AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken></SessionToken>
<Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`,
				minio.AccessKey, minio.SecretKey, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
		}))
		defer srv.Close()
		tok := filepath.Join(dir, "token")
		os.WriteFile(tok, []byte("eyJ.token.sig\n"), 0o600)
		e := home(nil)
		e["AWS_WEB_IDENTITY_TOKEN_FILE"], e["AWS_ROLE_ARN"], e["AWS_ENDPOINT_URL_STS"] = tok, "arn:aws:iam::1:role/r", srv.URL
		if src := stat(t, s3.Repo{}, e, b, "k"); !strings.Contains(src, "web identity") {
			t.Errorf("source %q", src)
		}
		if form.Get("Action") != "AssumeRoleWithWebIdentity" || form.Get("WebIdentityToken") != "eyJ.token.sig" || form.Get("RoleArn") != "arn:aws:iam::1:role/r" {
			t.Errorf("STS form %v", form)
		}
	})
	t.Run("profile errors", func(t *testing.T) {
		e := home(map[string]string{"config": "[profile sso]\nsso_session = corp\nsso_account_id = 1\n[profile half]\naws_access_key_id = x\n[profile bare]\nregion = eu-west-1\n"})
		for profile, want := range map[string]string{"missing": `profile "missing" not found`, "sso": "SSO", "half": "no aws_secret_access_key",
			"bare": "has no credentials"} {
			_, err := s3.NewClientEnv(s3.Repo{Endpoint: aws.String(minio.Endpoint), Profile: aws.String(profile)}, e.get)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("profile %s: %v, want %q", profile, err, want)
			}
		}
		bad := home(map[string]string{"config": "[profile x\n"})
		if _, err := s3.NewClientEnv(s3.Repo{Endpoint: aws.String(minio.Endpoint)}, bad.get); err == nil || !strings.Contains(err.Error(), "config:1:") {
			t.Errorf("broken config file: %v", err)
		}
	})
	t.Run("nothing at all", func(t *testing.T) {
		c, err := s3.NewClientEnv(s3.Repo{Endpoint: aws.String(minio.Endpoint)}, home(nil).get)
		if err == nil {
			_, err = s3.New(c, b, "k").Stat(context.Background())
		}
		if err == nil || !strings.Contains(err.Error(), "no AWS credentials") {
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
		json.NewEncoder(w).Encode(map[string]string{"AccessKeyId": minio.AccessKey, "SecretAccessKey": minio.SecretKey,
			"Token": "", "Expiration": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// The instance role comes through IMDSv2 and is fetched again before it
// expires.
func TestInstanceRole(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	var fetches, unauthorized atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			if r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
				http.Error(w, "ttl", 400)
				return
			}
			io.WriteString(w, "tok123")
		case r.Header.Get("X-Aws-Ec2-Metadata-Token") != "tok123":
			unauthorized.Add(1)
			http.Error(w, "token", http.StatusUnauthorized)
		case r.URL.Path == "/latest/meta-data/iam/security-credentials/":
			io.WriteString(w, "deploy-role\n")
		case r.URL.Path == "/latest/meta-data/iam/security-credentials/deploy-role":
			fetches.Add(1)
			// Four minutes left: inside the five-minute margin, so
			// every use fetches again.
			json.NewEncoder(w).Encode(map[string]string{"Code": "Success", "AccessKeyId": minio.AccessKey, "SecretAccessKey": minio.SecretKey,
				"Token": "", "Expiration": time.Now().Add(4 * time.Minute).UTC().Format(time.RFC3339)})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	e := env{"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_SERVICE_ENDPOINT": srv.URL}
	if src := stat(t, s3.Repo{}, e, b, "k"); src != "EC2 instance role deploy-role" {
		t.Errorf("source %q", src)
	}
	if fetches.Load() < 2 || unauthorized.Load() != 0 {
		t.Errorf("%d fetches (want a new one per use near expiry), %d requests without the token", fetches.Load(), unauthorized.Load())
	}
}

// A 5xx or a dropped connection is tried again; a 403 is not.
func TestTransientErrorsAreRetried(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(minio.Endpoint)
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
			// Drop the connection without an answer.
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	defer srv.Close()
	if _, err := s3.New(client(t, srv.URL, minio.SecretKey), b, "k").Stat(context.Background()); err != nil || seen != 3 {
		t.Fatalf("after a 503 and a dropped connection: %v (%d requests)", err, seen)
	}
	seen = 2
	_, err := s3.New(client(t, srv.URL, "wrong"), b, "k").Stat(context.Background())
	if err == nil || seen != 3 {
		t.Fatalf("a 403 was tried %d times: %v", seen-2, err)
	}
}

// A client set up for another region than the bucket's follows the
// store's answer once and signs for the right region. In front of MinIO
// (which takes any region), a proxy answers as AWS does: 301 with
// x-amz-bucket-region to a request signed for another region.
func TestWrongRegionIsFollowed(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(minio.Endpoint)
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
	other, err := s3.NewClient(context.Background(), s3.Repo{Endpoint: aws.String(srv.URL), Region: aws.String("eu-west-3"),
		AccessKey: aws.String(minio.AccessKey), SecretKey: aws.String(minio.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	src := s3.New(other, b, "k")
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

// Services on the same store share one pool of connections: ten clients
// checking one after another use one connection, not ten.
func TestClientsShareConnections(t *testing.T) {
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(minio.Endpoint)
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	for range 10 {
		if _, err := s3.New(client(t, srv.URL, minio.SecretKey), b, "k").Stat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("10 clients opened %d connections", n)
	}
}
