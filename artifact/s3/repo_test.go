package s3_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/s3"
)

// Artifact blocks over a repo block, against MinIO: one without keys of
// its own goes through the repo's store; two that write the same endpoint
// share one store of their own, so one connection carries both their
// checks; the repo's store never goes through that endpoint.
func TestArtifactKeysOverTheRepo(t *testing.T) {
	minio := servers.MinIO(t)
	c := client(t, minio.Endpoint, minio.SecretKey)
	b := bucket(t, c)
	put(t, c, b, "k", []byte("x"))
	target, _ := url.Parse(minio.Endpoint)
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	var conns, requests atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	proxy := srv.Config.Handler
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1); proxy.ServeHTTP(w, r) })
	srv.Start()
	defer srv.Close()

	p := hclparse.NewParser()
	repoFile, diags := p.ParseHCL([]byte(fmt.Sprintf(`region = "us-east-1"
endpoint   = %q
access_key = %q
secret_key = %q
`, minio.Endpoint, minio.AccessKey, minio.SecretKey)), "repo.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	repoStore, diags := s3.RepoFactory("s3", repoFile.Body, t.TempDir())
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	env := artifact.Env{BaseDir: t.TempDir(), Repos: map[string]*artifact.Repo{"s3": {Name: "s3", Type: "s3", Store: repoStore}}, Stores: &artifact.Stores{}}
	source := func(name, keys string) artifact.Source {
		f, diags := p.ParseHCL([]byte(fmt.Sprintf("bucket = %q\npath = \"k\"\n%s\n", b, keys)), "artifact-"+name+".hcl")
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		src, diags := s3.Factory("s3", f.Body, env)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", name, diags)
		}
		return src
	}
	viaProxy := fmt.Sprintf("endpoint = %q", srv.URL)
	own1, own2, repos := source("own1", viaProxy), source("own2", viaProxy), source("repo", "")

	for _, src := range []artifact.Source{own1, own2, own1, own2} {
		if _, err := src.Stat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := conns.Load(), requests.Load(); n != 1 || m != 4 {
		t.Fatalf("4 checks of two blocks with the same keys: %d connections, %d requests; want 1 and 4", n, m)
	}
	if _, err := repos.Stat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := requests.Load(); m != 4 {
		t.Fatalf("the repo's store went through the blocks' endpoint (%d requests)", m)
	}
}
