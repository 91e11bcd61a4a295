package swift_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ncw "github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/sourcetest"
	"github.com/dropshipd/dropship/artifact/swift"
	"github.com/dropshipd/dropship/internal/rig"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Swift: true}) }

func conn(t *testing.T, authURL, key string) *swift.Store {
	t.Helper()
	c, err := swift.NewStore("swift", swift.Config{User: &servers.Swift(t).User, Key: &key, AuthURL: &authURL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var seq struct {
	sync.Mutex
	n int
}

func container(t *testing.T, st *swift.Store) string {
	c := st.Connection()
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
	st := conn(t, servers.Swift(t).AuthURL, servers.Swift(t).Key)
	ct := container(t, st)
	c := st.Connection()
	ctx := context.Background()
	sourcetest.Run(t, sourcetest.Harness{
		Addr: servers.Swift(t).Addr,
		Put: func(t *testing.T, key string, data []byte) {
			if err := c.ObjectPutBytes(ctx, ct, key, data, ""); err != nil {
				t.Fatal(err)
			}
		},
		Source: func(t *testing.T, key string) artifact.Source { return st.Source(ct, key) },
		PutWithChecksums: func(t *testing.T, key string, data []byte) {
			p := filepath.Join(t.TempDir(), "a")
			os.WriteFile(p, data, 0o644)
			if _, err := st.Publish(ctx, ct, key, p, 0); err != nil {
				t.Fatal(err)
			}
		},
		PutMultipart: func(t *testing.T, key string, data []byte, withSums bool) {
			if withSums {
				p := filepath.Join(t.TempDir(), "a")
				os.WriteFile(p, data, 0o644)
				if _, err := st.Publish(ctx, ct, key, p, 1<<20); err != nil {
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
			return conn(t, servers.Swift(t).AuthURL, "not-the-key").Source(ct, key)
		},
		Through: func(t *testing.T, key, addr string) artifact.Source {
			return conn(t, "http://"+addr+"/auth/v1.0", servers.Swift(t).Key).Source(ct, key)
		},
	})
}

func TestRackspacePreset(t *testing.T) {
	user, key := "u", "k"
	st, err := swift.NewStore("rackspace", swift.Config{User: &user, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	c := st.Connection()
	if c.AuthUrl != swift.RackspaceAuthURL || c.AuthVersion != 2 {
		t.Fatalf("rackspace preset: %s v%d", c.AuthUrl, c.AuthVersion)
	}
	if _, err := swift.NewStore("swift", swift.Config{User: &user, Key: &key}); err == nil {
		t.Fatal("swift without auth_url accepted")
	}
}

func TestErrorsNameContainerAndUser(t *testing.T) {
	_, err := conn(t, servers.Swift(t).AuthURL, "wrong").Source("x", "y").Stat(context.Background())
	if !errors.Is(err, artifact.ErrAccess) || !strings.Contains(err.Error(), `user "test:tester"`) || !strings.Contains(err.Error(), "swift://x/y") {
		t.Fatalf("err = %v", err)
	}
}

func TestIdleCheckRequests(t *testing.T) {
	st := conn(t, servers.Swift(t).AuthURL, servers.Swift(t).Key)
	ct := container(t, st)
	if err := st.Connection().ObjectPutBytes(context.Background(), ct, "app.tar.gz", []byte("x"), ""); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://" + servers.Swift(t).Addr)
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
	src := conn(t, "http://"+ln.Addr().String()+"/auth/v1.0", servers.Swift(t).Key).Source(ct, "app.tar.gz")
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
	st := conn(t, servers.Swift(t).AuthURL, servers.Swift(t).Key)
	ct := container(t, st)
	p := filepath.Join(t.TempDir(), "a")
	data := bytes.Repeat([]byte("z"), 5000)
	os.WriteFile(p, data, 0o644)
	info, err := st.Publish(context.Background(), ct, "a.tar.gz", p, 0)
	if err != nil || info.ChecksumFrom != "metadata" || info.SHA256 == "" {
		t.Fatalf("%+v %v", info, err)
	}
}

// A large download cut three times resumes with a Range request pinned by
// If-Match: the bytes are right and the proxy forwards little more than
// the object. An expired token in between is renewed, not retried.
func TestDownloadResumesAfterCuts(t *testing.T) {
	st := conn(t, servers.Swift(t).AuthURL, servers.Swift(t).Key)
	ct := container(t, st)
	data := bytes.Repeat([]byte("0123456789abcdef"), 24<<20/16)
	for i := range data {
		data[i] ^= byte(i * 7 / 5)
	}
	if err := st.Connection().ObjectPutBytes(context.Background(), ct, "big", data, ""); err != nil {
		t.Fatal(err)
	}
	p := sourcetest.NewProxy(t, servers.Swift(t).Addr)
	through := conn(t, "http://"+p.Addr()+"/auth/v1.0", servers.Swift(t).Key)
	pol := artifact.DefaultPolicy
	pol.Backoff = time.Millisecond
	src := artifact.Retry(through.Source(ct, "big"), pol, nil)
	pin, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// An expired token: the store answers 401, the store authenticates
	// again and asks once more, within the same try.
	through.Connection().AuthToken = "expired"
	auths := p.Requests("GET")
	if _, err := through.Source(ct, "big").Stat(context.Background()); err != nil {
		t.Fatalf("stat with an expired token: %v", err)
	}
	if p.Requests("GET") != auths+1 || p.Requests("HEAD") != 3 {
		t.Fatalf("renewing the token: %d GETs, %d HEADs", p.Requests("GET")-auths, p.Requests("HEAD"))
	}
	p.CutTimes(5<<20, 3)
	before, gets := p.Bytes(), p.Requests("GET")
	rc, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	v := artifact.NewVerifier(rc, pin)
	got, err := io.ReadAll(v)
	if err != nil || !bytes.Equal(got, data) || !v.Verified() {
		t.Fatalf("download cut three times: %d bytes, %v", len(got), err)
	}
	fetched := p.Bytes() - before
	if limit := int64(len(data)) * 11 / 10; fetched > limit {
		t.Fatalf("fetched %d bytes for a %d-byte object (limit %d)", fetched, len(data), limit)
	}
	if n := p.Requests("GET") - gets; n != 4 {
		t.Fatalf("%d GETs, want 4 (three cut, then the rest)", n)
	}
	t.Logf("%d bytes through the proxy for %d, in 4 GETs", fetched, len(data))
}

// A dynamic large object (X-Object-Manifest) downloads: its ETag is
// computed from the segments, which the object server holding the
// manifest cannot match an If-Match against.
func TestDynamicLargeObjectDownloads(t *testing.T) {
	st := conn(t, servers.Swift(t).AuthURL, servers.Swift(t).Key)
	ct := container(t, st)
	c := st.Connection()
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	c.ContainerCreate(ctx, ct+"_segments", nil)
	w, err := c.DynamicLargeObjectCreate(ctx, &ncw.LargeObjectOpts{Container: ct, ObjectName: "dlo", ChunkSize: 256 << 10, SegmentContainer: ct + "_segments"})
	if err == nil {
		_, err = w.Write(data)
	}
	if err == nil {
		err = w.CloseWithContext(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	src := st.Source(ct, "dlo")
	pin, err := src.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := src.Open(ctx, pin)
	if err != nil {
		t.Fatalf("open a DLO (etag %s, checksum from %s): %v", pin.ETag, pin.ChecksumFrom, err)
	}
	defer rc.Close()
	v := artifact.NewVerifier(rc, pin)
	got, err := io.ReadAll(v)
	if err == nil {
		err = v.Drain()
	}
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a DLO: %d bytes, %v", len(got), err)
	}
}

// A redirect to another host is refused before anything is sent there:
// the token (and, for auth, the key) would follow it.
func TestRedirectToAnotherHostIsRefused(t *testing.T) {
	server := servers.Swift(t)
	st := conn(t, server.AuthURL, server.Key)
	ct := container(t, st)
	if err := st.Connection().ObjectPutBytes(context.Background(), ct, "app.tar.gz", []byte("x"), ""); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var stolen []string
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		stolen = append(stolen, r.Method+" "+r.URL.Path+" token="+r.Header.Get("X-Auth-Token")+" key="+r.Header.Get("X-Auth-Key"))
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer thief.Close()
	target, _ := url.Parse("http://" + server.Addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	for _, c := range []struct{ name, redirect string }{{"object", "/v1/"}, {"auth", "/auth/"}} {
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, c.redirect) {
				http.Redirect(w, r, thief.URL+r.URL.Path, http.StatusFound)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		src := conn(t, front.URL+"/auth/v1.0", server.Key).Source(ct, "app.tar.gz")
		_, err := src.Stat(context.Background())
		front.Close()
		if err == nil || !strings.Contains(err.Error(), "redirect to another host refused") {
			t.Fatalf("%s redirected to another host: Stat error %v", c.name, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stolen) > 0 {
		t.Fatalf("requests reached the other host: %v", stolen)
	}
}

func TestChunks(t *testing.T) {
	server := servers.Swift(t)
	st := conn(t, server.AuthURL, server.Key)
	sourcetest.RunChunks(t, sourcetest.ChunkHarness{
		Store: func(t *testing.T) (artifact.Store, string) { return st, container(t, st) },
	})
}
