package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// publish --consul makes its client as a lock "consul" block does: a
// Consul with ACLs that deny by default, reached through TLS whose
// certificate only --consul-ca-file holds, takes the announcement with the
// token of --consul-token-file, and refuses it without the token or the CA.
func TestPublishConsulHonoursTokenAndCAFiles(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	acl := servers.ACLConsul(t)
	prefix := "test/" + testutil.Unique(t)
	target, _ := url.Parse("http://" + acl.Addr)
	tlsSrv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake of "no CA"
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	ctx := context.Background()
	direct, err := s3.NewStore(ctx, s3.Config{Endpoint: aws.String(minio.Endpoint), Region: aws.String("us-east-1"),
		AccessKey: aws.String(minio.AccessKey), SecretKey: aws.String(minio.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	bucket := fmt.Sprintf("consul-tls-%d", bucketSeq.Add(1)) // new to this run (-count)
	if err := direct.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, tok := filepath.Join(dir, "consul-ca.pem"), filepath.Join(dir, "consul-token")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644)
	os.WriteFile(tok, []byte(acl.Root+"\n"), 0o600)
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
`, filepath.Join(dir, "state"), minio.Endpoint, minio.AccessKey, minio.SecretKey)), 0o644)
	art := filepath.Join(dir, "app.tar.gz")
	os.WriteFile(art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "1"}), 0o644)
	publish := func(service string, extra ...string) (string, string, int) {
		args := append([]string{"publish", "-c", cfg, art, "--to", "s3://" + bucket + "/app.tar.gz", "--service", service,
			"--consul", tlsSrv.URL, "--consul-prefix", prefix}, extra...)
		return run(t, args...)
	}

	out, errOut, code := publish("app", "--consul-ca-file", ca, "--consul-token-file", tok)
	if code != 0 || !strings.Contains(out, "announced app to the fleet") {
		t.Fatalf("publish with the CA and token files: exit %d\n%s%s", code, out, errOut)
	}
	admin := acl.Admin(t)
	kv, _, err := admin.KV().Get(fleet.PublishedPrefix(prefix)+"app", nil)
	if err != nil || kv == nil {
		t.Fatalf("no announcement in Consul: %v", err)
	}
	var pub fleet.Published
	if err := json.Unmarshal(kv.Value, &pub); err != nil || pub.Key != "s3://"+bucket+"/app.tar.gz" || !strings.Contains(out, "md5 "+pub.Checksum) {
		t.Fatalf("announced %+v (%v); publish said:\n%s", pub, err, out)
	}

	for _, c := range []struct {
		name  string
		extra []string
	}{
		{"no token", []string{"--consul-ca-file", ca}},
		{"no CA", []string{"--consul-token-file", tok}},
	} {
		service := "app-" + strings.ReplaceAll(c.name, " ", "-")
		out, errOut, code := publish(service, c.extra...)
		if code != 3 || !strings.Contains(errOut, "not announced") {
			t.Errorf("%s: exit %d, want 3 (published, not announced)\n%s%s", c.name, code, out, errOut)
		}
		if kv, _, err := admin.KV().Get(fleet.PublishedPrefix(prefix)+service, nil); err != nil || kv != nil {
			t.Errorf("%s: announced all the same (%v)", c.name, err)
		}
	}
}
