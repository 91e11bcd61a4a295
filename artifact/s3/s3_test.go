package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/artifact/sourcetest"
	"github.com/dropshipd/dropship/internal/rig"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{MinIO: true}) }

// sdk is an AWS SDK client on MinIO: an independent S3 client, to lay
// out objects the way other tools do.
func sdk(t *testing.T) *awss3.Client {
	t.Helper()
	return awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(servers.MinIO(t).Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(servers.MinIO(t).AccessKey, servers.MinIO(t).SecretKey, ""),
	})
}

func client(t *testing.T, endpoint, secret string) *s3.Store {
	t.Helper()
	c, err := s3.NewStore(context.Background(), s3.Config{
		Endpoint: aws.String(endpoint), AccessKey: aws.String(servers.MinIO(t).AccessKey), SecretKey: aws.String(secret),
		Region: aws.String("us-east-1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var bucketSeq struct {
	sync.Mutex
	n int
}

// bucket creates a bucket of the test's own.
func bucket(t *testing.T, c *s3.Store) string {
	t.Helper()
	bucketSeq.Lock()
	bucketSeq.n++
	name := fmt.Sprintf("t%d-%s", bucketSeq.n, strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
	bucketSeq.Unlock()
	if len(name) > 60 {
		name = name[:60]
	}
	name = strings.TrimRight(name, "-")
	if err := c.CreateBucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return name
}

func put(t *testing.T, _ *s3.Store, b, key string, data []byte) {
	t.Helper()
	_, err := sdk(t).PutObject(context.Background(), &awss3.PutObjectInput{Bucket: &b, Key: &key, Body: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	sourcetest.Run(t, sourcetest.Harness{
		Addr: servers.MinIO(t).Addr,
		Put:  func(t *testing.T, key string, data []byte) { put(t, c, b, key, data) },
		Source: func(t *testing.T, key string) artifact.Source {
			return c.Source(b, key)
		},
		PutWithChecksums: func(t *testing.T, key string, data []byte) {
			p := filepath.Join(t.TempDir(), "a")
			os.WriteFile(p, data, 0o644)
			if _, err := c.Publish(context.Background(), b, key, p, 0); err != nil {
				t.Fatal(err)
			}
		},
		PutMultipart: func(t *testing.T, key string, data []byte, withSums bool) {
			if withSums {
				p := filepath.Join(t.TempDir(), "a")
				os.WriteFile(p, data, 0o644)
				if _, err := c.Publish(context.Background(), b, key, p, 5<<20); err != nil {
					t.Fatal(err)
				}
				return
			}
			up := manager.NewUploader(sdk(t), func(u *manager.Uploader) { u.PartSize = 5 << 20 })
			if _, err := up.Upload(context.Background(), &awss3.PutObjectInput{Bucket: &b, Key: &key, Body: bytes.NewReader(data)}); err != nil {
				t.Fatal(err)
			}
		},
		WrongCredentials: func(t *testing.T, key string) artifact.Source {
			return client(t, servers.MinIO(t).Endpoint, "not-the-secret").Source(b, key)
		},
		Through: func(t *testing.T, key, addr string) artifact.Source {
			return client(t, "http://"+addr, servers.MinIO(t).SecretKey).Source(b, key)
		},
	})
}

func TestErrorsNameBucketKeyAndCredentials(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	_, err := c.Source("no-such-bucket-here", "x.tar.gz").Stat(context.Background())
	if !errors.Is(err, artifact.ErrNotFound) || !strings.Contains(err.Error(), "s3://no-such-bucket-here/x.tar.gz") {
		t.Fatalf("missing bucket: %v", err)
	}
	put(t, c, b, "k", []byte("x"))
	_, err = client(t, servers.MinIO(t).Endpoint, "wrong").Source(b, "k").Stat(context.Background())
	if !errors.Is(err, artifact.ErrAccess) || !strings.Contains(err.Error(), "credentials from StaticCredentials") || !strings.Contains(err.Error(), "s3://"+b+"/k") {
		t.Fatalf("wrong secret: %v", err)
	}
	if !artifact.Permanent(err) {
		t.Fatal("a 403 must not be retried")
	}
}

func TestVersionedBucketPinsTheVersion(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	_, err := sdk(t).PutBucketVersioning(context.Background(), &awss3.PutBucketVersioningInput{Bucket: &b,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled}})
	if err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte("old"), 1000)
	put(t, c, b, "app.tar.gz", old)
	src := c.Source(b, "app.tar.gz")
	pin, err := src.Stat(context.Background())
	if err != nil || pin.VersionID == "" {
		t.Fatalf("stat: %+v %v", pin, err)
	}
	put(t, c, b, "app.tar.gz", []byte("new"))
	// The download gets exactly the version that was checked.
	rc, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatal(err)
	}
	v := artifact.NewVerifier(rc, pin)
	got, err := io.ReadAll(v)
	rc.Close()
	if err != nil || !bytes.Equal(got, old) || !v.Verified() {
		t.Fatalf("pinned download: %d bytes, %v", len(got), err)
	}
}

// counter is a reverse proxy in front of MinIO that counts requests.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) count(method string) {
	c.mu.Lock()
	c.n[method]++
	c.mu.Unlock()
}

func TestIdleCheckIsOneHead(t *testing.T) {
	c := client(t, servers.MinIO(t).Endpoint, servers.MinIO(t).SecretKey)
	b := bucket(t, c)
	put(t, c, b, "app.tar.gz", []byte("release"))
	target, _ := url.Parse(servers.MinIO(t).Endpoint)
	cnt := &counter{n: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cnt.count(r.Method)
		proxy.ServeHTTP(w, r)
	})}
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	// As the agent has it: behind the retry wrapper.
	src := artifact.Retry(client(t, "http://"+ln.Addr().String(), servers.MinIO(t).SecretKey).Source(b, "app.tar.gz"), artifact.DefaultPolicy, nil)
	const checks = 10
	for range checks {
		if _, err := src.Stat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if cnt.n["HEAD"] != checks || len(cnt.n) != 1 {
		t.Fatalf("%d idle checks made %v requests", checks, cnt.n)
	}
	t.Logf("requests per idle check against S3: %d HEAD", cnt.n["HEAD"]/checks)
}

func TestChunks(t *testing.T) {
	minio := servers.MinIO(t)
	c := client(t, minio.Endpoint, minio.SecretKey)
	sourcetest.RunChunks(t, sourcetest.ChunkHarness{
		Store: func(t *testing.T) (artifact.Store, string) { return c, bucket(t, c) },
	})
}
