package swift_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ncw "github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/sourcetest"
	"github.com/dropshipd/dropship/artifact/swift"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/testutil"
)

var (
	server    *rig.Swift
	serverErr error
)

func TestMain(m *testing.M) {
	server, serverErr = rig.StartSwift()
	code := m.Run()
	if server != nil {
		server.Stop()
	}
	os.Exit(code)
}

func conn(t *testing.T, authURL, key string) *ncw.Connection {
	t.Helper()
	testutil.RequireServer(t, "OpenStack Swift", serverErr)
	c, err := swift.NewConnection("swift", swift.Repo{User: &server.User, Key: &key, AuthURL: &authURL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var seq struct {
	sync.Mutex
	n int
}

func container(t *testing.T, c *ncw.Connection) string {
	seq.Lock()
	seq.n++
	name := fmt.Sprintf("c%d-%s", seq.n, strings.ReplaceAll(t.Name(), "/", "-"))
	seq.Unlock()
	if err := c.ContainerCreate(context.Background(), name, nil); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestConformance(t *testing.T) {
	c := conn(t, server.AuthURL, server.Key)
	ct := container(t, c)
	ctx := context.Background()
	sourcetest.Run(t, sourcetest.Harness{
		Addr: server.Addr,
		Put: func(t *testing.T, key string, data []byte) {
			if err := c.ObjectPutBytes(ctx, ct, key, data, ""); err != nil {
				t.Fatal(err)
			}
		},
		Source: func(t *testing.T, key string) artifact.Source { return swift.New(c, ct, key) },
		PutWithChecksums: func(t *testing.T, key string, data []byte) {
			p := filepath.Join(t.TempDir(), "a")
			os.WriteFile(p, data, 0o644)
			if _, err := swift.Publish(ctx, c, ct, key, p, 0); err != nil {
				t.Fatal(err)
			}
		},
		PutMultipart: func(t *testing.T, key string, data []byte, withSums bool) {
			if withSums {
				p := filepath.Join(t.TempDir(), "a")
				os.WriteFile(p, data, 0o644)
				if _, err := swift.Publish(ctx, c, ct, key, p, 1<<20); err != nil {
					t.Fatal(err)
				}
				return
			}
			c.ContainerCreate(ctx, ct+"_segments", nil)
			w, err := c.StaticLargeObjectCreate(ctx, &ncw.LargeObjectOpts{Container: ct, ObjectName: key, ChunkSize: 1 << 20, SegmentContainer: ct + "_segments"})
			if err == nil {
				_, err = w.Write(data)
			}
			if err == nil {
				err = w.CloseWithContext(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
		},
		WrongCredentials: func(t *testing.T, key string) artifact.Source {
			return swift.New(conn(t, server.AuthURL, "not-the-key"), ct, key)
		},
		Through: func(t *testing.T, key, addr string) artifact.Source {
			return swift.New(conn(t, "http://"+addr+"/auth/v1.0", server.Key), ct, key)
		},
	})
}

func TestRackspacePreset(t *testing.T) {
	user, key := "u", "k"
	c, err := swift.NewConnection("rackspace", swift.Repo{User: &user, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	if c.AuthUrl != swift.RackspaceAuthURL || c.AuthVersion != 2 {
		t.Fatalf("rackspace preset: %s v%d", c.AuthUrl, c.AuthVersion)
	}
	if _, err := swift.NewConnection("swift", swift.Repo{User: &user, Key: &key}); err == nil {
		t.Fatal("swift without auth_url accepted")
	}
}

func TestErrorsNameContainerAndUser(t *testing.T) {
	c := conn(t, server.AuthURL, "wrong")
	_, err := swift.New(c, "x", "y").Stat(context.Background())
	if !errors.Is(err, artifact.ErrAccess) || !strings.Contains(err.Error(), `user "test:tester"`) || !strings.Contains(err.Error(), "swift://x/y") {
		t.Fatalf("err = %v", err)
	}
}

func TestIdleCheckRequests(t *testing.T) {
	c := conn(t, server.AuthURL, server.Key)
	ct := container(t, c)
	if err := c.ObjectPutBytes(context.Background(), ct, "app.tar.gz", []byte("x"), ""); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://" + server.Addr)
	var mu sync.Mutex
	counts := map[string]int{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		counts[r.Method+" "+strings.SplitN(r.URL.Path, "/", 3)[1]]++
		mu.Unlock()
		proxy.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	src := swift.New(conn(t, "http://"+ln.Addr().String()+"/auth/v1.0", server.Key), ct, "app.tar.gz")
	const checks = 10
	for range checks {
		if _, err := src.Stat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// One authentication, then one HEAD per check.
	if counts["HEAD v1"] != checks || counts["GET auth"] != 1 || len(counts) != 2 {
		t.Fatalf("%d idle checks made %v", checks, counts)
	}
	t.Logf("requests per idle check against Swift: 1 HEAD (+1 auth per token lifetime): %v", counts)
}

func TestPublishedSmallObjectVerifies(t *testing.T) {
	c := conn(t, server.AuthURL, server.Key)
	ct := container(t, c)
	p := filepath.Join(t.TempDir(), "a")
	data := bytes.Repeat([]byte("z"), 5000)
	os.WriteFile(p, data, 0o644)
	info, err := swift.Publish(context.Background(), c, ct, "a.tar.gz", p, 0)
	if err != nil || info.ChecksumFrom != "metadata" || info.SHA256 == "" {
		t.Fatalf("%+v %v", info, err)
	}
}
