package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
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
func s3Fleet(t *testing.T, n int, bucket string, extra string) (*fleetRig, *awss3.Client) {
	c := consulServer(t)
	minioBucket(t, bucket)
	dir := t.TempDir()
	f := &fleetRig{t: t, dir: dir, shared: filepath.Join(dir, "timeline"), prefix: "test/" + strings.ToLower(t.Name())}
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
	return f, sdk
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
	const bucket = "trust-junk"
	f, sdk := s3Fleet(t, 2, bucket, "")
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
