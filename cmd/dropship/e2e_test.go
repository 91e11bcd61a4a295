package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	ncw "github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/artifact/swift"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// minioBucket is a store on the test MinIO with a new bucket in it,
// named after bucket and new to this run of the test (-count).
func minioBucket(t *testing.T, bucket string) (*s3.Store, string) {
	t.Helper()
	minio := servers.MinIO(t)
	st, err := s3.NewStore(context.Background(), s3.Config{Endpoint: aws.String(minio.Endpoint),
		AccessKey: aws.String(minio.AccessKey), SecretKey: aws.String(minio.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	bucket = fmt.Sprintf("%s-%d", bucket, bucketSeq.Add(1))
	if err := st.CreateBucket(context.Background(), bucket); err != nil {
		t.Fatal(err)
	}
	return st, bucket
}

var bucketSeq atomic.Int64

// e2e runs the real binary against a real store: publish v1, agent --once
// installs it, a second run does nothing, publish v2, agent installs it.
func e2e(t *testing.T, repoBlock, artifactBlock, to string) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dropship.hcl")
	dest := filepath.Join(dir, "srv", "app")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = "state"
%s
service "app" {
  %s
  after "script" { command = "cat VERSION >> %s/after.log" }
}
`, repoBlock, fmt.Sprintf(artifactBlock, dest), dir)), 0o600)

	publish := func(v string) {
		t.Helper()
		art := filepath.Join(dir, "app-"+v+".tar.gz")
		os.WriteFile(art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: v + "\n"}), 0o644)
		out, errOut, code := run(t, "publish", "-c", cfg, art, "--to", to)
		if code != 0 || !strings.Contains(out, "published") {
			t.Fatalf("publish %s: %d\n%s%s", v, code, out, errOut)
		}
	}
	once := func() string {
		t.Helper()
		_, errOut, code := run(t, "agent", "--once", "-c", cfg, "--log-level", "debug")
		if code != 0 {
			t.Fatalf("agent --once: %d\n%s", code, errOut)
		}
		return errOut
	}
	version := func() string {
		b, _ := os.ReadFile(filepath.Join(dest, "VERSION"))
		return strings.TrimSpace(string(b))
	}

	publish("v1")
	if log := once(); !strings.Contains(log, "result=installed") || version() != "v1" {
		t.Fatalf("first run installed %q\n%s", version(), log)
	}
	if log := once(); !strings.Contains(log, "result=noop") {
		t.Fatalf("second run was not a no-op\n%s", log)
	}
	publish("v2")
	if log := once(); !strings.Contains(log, "result=installed") || version() != "v2" {
		t.Fatalf("change installed %q\n%s", version(), log)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "after.log")); string(b) != "v1\nv2\n" {
		t.Fatalf("after hooks ran for %q", b)
	}
}

func TestEndToEndS3(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	_, b := minioBucket(t, "e2e-releases")
	e2e(t, fmt.Sprintf(`repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}`, minio.Endpoint, minio.AccessKey, minio.SecretKey),
		`artifact "s3" {
    bucket      = "`+b+`"
    path        = "app/app.tar.gz"
    destination = %q
  }`, "s3://"+b+"/app/app.tar.gz")
}

func TestEndToEndSwift(t *testing.T) {
	t.Parallel()
	swiftSrv := servers.Swift(t)
	st, err := swift.NewStore("swift", swift.Config{User: &swiftSrv.User, Key: &swiftSrv.Key, AuthURL: &swiftSrv.AuthURL})
	if err != nil {
		t.Fatal(err)
	}
	conn := st.Connection()
	if err := conn.ContainerCreate(context.Background(), "e2e-releases", ncw.Headers{}); err != nil {
		t.Fatal(err)
	}
	// The ancestor's spelling: artifact "rackspace" with bucket, against a
	// repo "rackspace" pointed at this Swift.
	e2e(t, fmt.Sprintf(`repo "rackspace" {
  user     = %q
  key      = %q
  auth_url = %q
}`, swiftSrv.User, swiftSrv.Key, swiftSrv.AuthURL),
		`artifact "rackspace" {
    bucket      = "e2e-releases"
    path        = "app.tar.gz"
    destination = %q
  }`, "swift://e2e-releases/app.tar.gz")
}

// A .tar.gz stored as application/octet-stream under a name with no
// extension installs: the format comes from the bytes, not the store.
func TestOctetStreamTarGzInstalls(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	ctx := context.Background()
	c, err := s3.NewStore(ctx, s3.Config{Endpoint: aws.String(minio.Endpoint),
		AccessKey: aws.String(minio.AccessKey), SecretKey: aws.String(minio.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	bucket := fmt.Sprintf("octet-%d", bucketSeq.Add(1)) // new to this run (-count)
	if err := c.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	body := testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "octet"})
	// Put by the AWS SDK, as other tools would.
	sdk := awss3.New(awss3.Options{Region: "us-east-1", BaseEndpoint: aws.String(minio.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(minio.AccessKey, minio.SecretKey, "")})
	_, err = sdk.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("release"),
		Body: bytes.NewReader(body), ContentType: aws.String("application/octet-stream")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = "state"
service "app" {
  artifact "s3" {
    bucket      = %q
    path        = "release"
    destination = "srv/app"
    endpoint    = %q
    access_key  = %q
    secret_key  = %q
  }
}`, bucket, minio.Endpoint, minio.AccessKey, minio.SecretKey)), 0o600)
	if _, errOut, code := run(t, "agent", "--once", "-c", cfg); code != 0 {
		t.Fatalf("%d\n%s", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "srv", "app", "VERSION")); string(b) != "octet" {
		t.Fatalf("installed %q", b)
	}
}
