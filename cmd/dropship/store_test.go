package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A repo block's relative ca_file resolves against the agent file's
// directory, for the agent's services (in files of another directory) and
// for publish alike: the block is decoded once, where it is written. MinIO
// is reached through a TLS proxy whose certificate only that ca_file holds;
// the services directory holds another file of the same name, which would
// be refused.
func TestRepoCAFileResolvesWhereTheRepoIsWritten(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	ctx := context.Background()
	direct, err := s3.NewStore(ctx, s3.Config{Endpoint: aws.String(minio.Endpoint), Region: aws.String("us-east-1"),
		AccessKey: aws.String(minio.AccessKey), SecretKey: aws.String(minio.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	bucket := fmt.Sprintf("cafile-%d", bucketSeq.Add(1)) // new to this run (-count)
	if err := direct.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(minio.Endpoint)
	tlsSrv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	tlsSrv.StartTLS()
	defer tlsSrv.Close()

	dir := t.TempDir()
	agentDir, svcDir := filepath.Join(dir, "etc"), filepath.Join(dir, "etc", "services")
	os.MkdirAll(svcDir, 0o755)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	os.WriteFile(filepath.Join(agentDir, "ca.pem"), ca, 0o644)
	os.WriteFile(filepath.Join(svcDir, "ca.pem"), []byte("not a certificate"), 0o644)
	cfg := filepath.Join(agentDir, "dropship.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
service_path = "services"
repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
  ca_file    = "ca.pem"
}
`, filepath.Join(dir, "state"), tlsSrv.URL, minio.AccessKey, minio.SecretKey)), 0o644)
	os.WriteFile(filepath.Join(svcDir, "app.hcl"), []byte(fmt.Sprintf(`service "app" {
  artifact "s3" {
    bucket      = %q
    path        = "app.tar.gz"
    destination = %q
  }
}
`, bucket, filepath.Join(dir, "srv"))), 0o644)

	art := filepath.Join(dir, "app.tar.gz")
	os.WriteFile(art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "1"}), 0o644)
	out, errOut, code := run(t, "publish", "-c", cfg, art, "--to", "s3://"+bucket+"/app.tar.gz")
	if code != 0 || !strings.Contains(out, "published s3://"+bucket+"/app.tar.gz") {
		t.Fatalf("publish through the TLS proxy: exit %d\n%s%s", code, out, errOut)
	}
	loaded, diags := agent.Load(cfg, registry(), slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		t.Fatalf("load: %v", diags)
	}
	info, err := loaded.Services[0].Source.Stat(ctx)
	if err != nil || info.Size == 0 {
		t.Fatalf("the service's stat through the TLS proxy: %+v %v", info, err)
	}
}
