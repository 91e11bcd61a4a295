package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// s3Fleet is n agents following one object in the test MinIO, with a
// rollout that reverts on failure, coordinated through the test Consul.
// extra goes into the service block.
func s3Fleet(t *testing.T, n int, bucket string, extra string) (*fleetRig, *awss3.Client, string) {
	c := consulServer(t)
	minio := servers.MinIO(t)
	_, bucket = minioBucket(t, bucket)
	dir := t.TempDir()
	f := &fleetRig{t: t, dir: dir, shared: filepath.Join(dir, "timeline"), prefix: fleetPrefix(t)}
	if cl, err := api.NewClient(&api.Config{Address: c.Addr}); err == nil {
		cl.KV().DeleteTree(f.prefix+"/", nil)
	}
	for i := range n {
		h := &host{name: fmt.Sprintf("host-%d", i), cfg: filepath.Join(dir, fmt.Sprintf("host-%d.hcl", i)),
			dest: filepath.Join(dir, fmt.Sprintf("host-%d", i), "srv", "app")}
		os.WriteFile(h.cfg, []byte(fmt.Sprintf(`
state_path = %[1]q
node_name  = %[2]q
lock "consul" {
  address     = %[3]q
  prefix      = %[4]q
  session_ttl = "10s"
}
service "app" {
  check_interval = "300ms"
  sequential     = true
  artifact "s3" {
    bucket      = %[5]q
    path        = "app.tar.gz"
    destination = %[6]q
    endpoint    = %[7]q
    access_key  = %[8]q
    secret_key  = %[9]q
  }
  after "script" {
    command = "echo \"$(date +%%s.%%N) end $DROPSHIP_HOSTNAME $DROPSHIP_PHASE $(cat VERSION)\" >> %[10]s"
  }
  rollout {
    waves      = ["100%%"]
    on_failure = "revert"
  }
  %[11]s
}
`, filepath.Join(dir, h.name, "state"), h.name, c.Addr, f.prefix, bucket, h.dest,
			minio.Endpoint, minio.AccessKey, minio.SecretKey, f.shared, extra)), 0o600)
		f.hosts = append(f.hosts, h)
	}
	t.Cleanup(f.stopAll)
	sdk := awss3.New(awss3.Options{Region: "us-east-1", BaseEndpoint: aws.String(minio.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(minio.AccessKey, minio.SecretKey, "")})
	return f, sdk, bucket
}

// put uploads body as the artifact, with meta as its user metadata.
func put(t *testing.T, sdk *awss3.Client, bucket, key string, body []byte, meta map[string]string) {
	t.Helper()
	_, err := sdk.PutObject(context.Background(), &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: bytes.NewReader(body), Metadata: meta})
	if err != nil {
		t.Fatal(err)
	}
}

// A bucket writer uploads junk whose metadata claims the checksum of the
// release the fleet runs. A host not yet on it fails the download's MD5
// check: it backs off and reports the failure, but the fleet's breaker
// is not tripped for the checksum the store merely claims, so the hosts
// running the good release stay on it (on_failure = "revert").
func TestJunkClaimingAGoodChecksumTripsNothing(t *testing.T) {
	t.Parallel()
	f, sdk, bucket := s3Fleet(t, 2, "trust-junk", "")
	v1 := testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "v1"})
	put(t, sdk, bucket, "app.tar.gz", v1, nil)
	f.start(f.hosts[0])
	f.waitAll(f.hosts[:1], "v1", 60*time.Second)
	good := testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "v2"})
	put(t, sdk, bucket, "app.tar.gz", good, nil)
	f.waitAll(f.hosts[:1], "v2", 60*time.Second)
	goodSum := fmt.Sprintf("%x", md5.Sum(good))

	junk := bytes.Repeat([]byte("junk"), len(good)/4+1)[:len(good)]
	put(t, sdk, bucket, "app.tar.gz", junk, map[string]string{"md5": goodSum})
	marks := f.marks()
	f.start(f.hosts[1])
	// host-1 fails on the junk, finishes that check, and backs off: a
	// check after the failure has been fully reported.
	f.waitLog(f.hosts[1:], marks, "update failed", goodSum, "MD5")
	f.waitLog(f.hosts[1:], marks, "result=skipped", "failed 1 time(s)")

	client, _ := api.NewClient(&api.Config{Address: consulServer(t).Addr})
	if pairs, _, err := client.KV().List(fleet.FailedKey(f.prefix, "app"), nil); err != nil || len(pairs) > 0 {
		var b []string
		for _, p := range pairs {
			b = append(b, string(p.Value))
		}
		t.Fatalf("a breaker was tripped by a download that failed verification: %v %v", b, err)
	}
	nodes := nodeStatus(t, client, f.prefix)
	if ns := nodes["host-1"]; ns.Result != "failed" || ns.Attempt != goodSum || ns.Counted || !strings.Contains(ns.Error, "MD5") {
		t.Fatalf("host-1's report: %+v", ns)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	if strings.Contains(out, "BREAKER") {
		t.Fatalf("fleet status shows a breaker:\n%s", out)
	}
	if f.hosts[0].version() != "v2" || f.hosts[1].version() != "" {
		t.Fatalf("host-0 on %q, host-1 on %q", f.hosts[0].version(), f.hosts[1].version())
	}
}

// plainTar is an uncompressed tar of one VERSION file: tars of versions
// of one length have one size.
func plainTar(t *testing.T, version string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := tar.NewWriter(&b)
	w.WriteHeader(&tar.Header{Name: "VERSION", Mode: 0o644, Size: int64(len(version)), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)})
	w.Write([]byte(version))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// With trusted_keys, the signature beside the object is checked before
// the object's body is read, and the bytes are unpacked only once they
// match it. A bucket writer who puts other bytes beside a good signature
// gets them refused: before download when the size differs, after the
// download but before any unpacking when only the content does. Either
// refusal is a failure, counted and backed off, not retried each check.
func TestBytesBesideAnOldSignatureAreNeverUnpacked(t *testing.T) {
	t.Parallel()
	bucket := "trust-unpack"
	minio := servers.MinIO(t)
	_, bucket = minioBucket(t, bucket)
	sdk := awss3.New(awss3.Options{Region: "us-east-1", BaseEndpoint: aws.String(minio.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(minio.AccessKey, minio.SecretKey, "")})
	dir := t.TempDir()
	if _, errOut, code := run(t, "keygen", "--out", filepath.Join(dir, "ci"), "--no-password"); code != 0 {
		t.Fatal(errOut)
	}
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = "state"
repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
service "app" {
  trusted_keys = [%q]
  artifact "s3" {
    bucket      = %q
    path        = "app.tar"
    destination = "srv/app"
  }
}
`, minio.Endpoint, minio.AccessKey, minio.SecretKey, filepath.Join(dir, "ci.pub"), bucket)), 0o600)
	once := func() string {
		t.Helper()
		_, errOut, _ := run(t, "agent", "--once", "-c", cfg, "--log-level", "debug")
		return errOut
	}
	v1 := filepath.Join(dir, "app.tar")
	os.WriteFile(v1, plainTar(t, "v1"), 0o644)
	if out, errOut, code := run(t, "publish", "-c", cfg, v1, "--to", "s3://"+bucket+"/app.tar", "--sign", filepath.Join(dir, "ci.key"), "--service", "app"); code != 0 {
		t.Fatalf("publish: %s%s", out, errOut)
	}
	if log := once(); !strings.Contains(log, "signature verified") || !strings.Contains(log, "result=installed") {
		t.Fatalf("signed v1 not installed:\n%s", log)
	}
	o, err := sdk.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("app.tar.minisig")})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := io.ReadAll(o.Body)
	o.Body.Close()
	if !strings.Contains(string(sig), fmt.Sprintf("size=%d", len(plainTar(t, "v1")))) {
		t.Fatalf("the trusted comment does not vouch for the size:\n%s", sig)
	}

	for _, c := range []struct {
		name, body string
		want       string
	}{
		// Other bytes of another size: refused before the body is read.
		{"other size", strings.Repeat("pwned ", 100), "nothing was downloaded"},
		// Other bytes of the same size, no digest in the store's
		// metadata: downloaded, compared with the signature, never
		// unpacked.
		{"same size", "v2", "the signature vouches for sha256"},
	} {
		put(t, sdk, bucket, "app.tar", plainTar(t, c.body), nil)
		log := once()
		if !hasLine(log, []string{"result=failed", "phase=signature", c.want}) {
			t.Fatalf("%s: not refused at the signature:\n%s", c.name, log)
		}
		if strings.Contains(log, "downloaded and verified") || strings.Contains(log, "unpack s3://") {
			t.Fatalf("%s: the bytes were unpacked:\n%s", c.name, log)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "srv", "app", "VERSION")); string(b) != "v1" {
			t.Fatalf("%s: installed %q", c.name, b)
		}
		// Counted: the next check backs off instead of fetching again.
		if log := once(); !hasLine(log, []string{"result=skipped", "failed 1 time(s) in signature"}) {
			t.Fatalf("%s: the refusal is not backed off:\n%s", c.name, log)
		}
	}
}
