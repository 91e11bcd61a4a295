package dashboard_test

import (
	"bytes"
	"context"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/fleet/dashboard"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// faultyConsul is a proxy in front of the real Consul that can fail
// every request, or answer every blocking query at once with an index
// that did not move, went to 0, or went backwards.
type faultyConsul struct {
	mode     atomic.Value // "", "down", "same", "zero", "backwards"
	blocking atomic.Int64 // blocking queries answered at once
	limit    atomic.Int64 // … beyond which spun is told
	spun     chan struct{}
	*httptest.Server

	mu      sync.Mutex
	pending map[*http.Request]context.CancelFunc
}

// down fails every request from now on, those waiting in Consul too.
func (f *faultyConsul) down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode.Store("down")
	for _, cancel := range f.pending {
		cancel()
	}
}

func newFaultyConsul(t *testing.T) *faultyConsul {
	t.Helper()
	target, _ := url.Parse("http://" + servers.Consul(t).Addr)
	f := &faultyConsul{pending: map[*http.Request]context.CancelFunc{}, spun: make(chan struct{}, 1)}
	f.limit.Store(1 << 62)
	f.mode.Store("")
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			q := r.Out.URL.Query()
			if idx := q.Get("index"); idx != "" && idx != "0" && f.mode.Load() != "" {
				// Ask Consul without blocking; answer with the index
				// the fault says.
				q.Del("index")
				q.Del("wait")
				r.Out.URL.RawQuery = q.Encode()
				r.Out.Header.Set("X-Asked-Index", idx)
			}
		},
		ErrorLog: stdlog.New(io.Discard, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			asked := resp.Request.Header.Get("X-Asked-Index")
			if asked == "" {
				return nil
			}
			if f.blocking.Add(1) > f.limit.Load() {
				select {
				case f.spun <- struct{}{}:
				default:
				}
			}
			n, _ := strconv.ParseUint(asked, 10, 64)
			switch f.mode.Load() {
			case "zero":
				n = 0
			case "backwards":
				n /= 2
			}
			resp.Header.Set("X-Consul-Index", strconv.FormatUint(n, 10))
			return nil
		},
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Checked and registered at once: a request down() does not
		// cancel is one that sees the mode down.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		f.mu.Lock()
		if f.mode.Load() == "down" {
			f.mu.Unlock()
			http.Error(w, "no cluster leader", http.StatusInternalServerError)
			return
		}
		f.pending[r] = cancel
		f.mu.Unlock()
		defer func() { f.mu.Lock(); delete(f.pending, r); f.mu.Unlock() }()
		rp.ServeHTTP(w, r.WithContext(ctx))
	}))
	t.Cleanup(f.Close)
	return f
}

// lines is a log that counts its lines and tells of each.
type lines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return l.buf.Write(p)
}

// read lets the dashboard's loops wait (any number of times) until it
// has read the audit log of app.
func read(t *testing.T, s *dashboard.Server, waits <-chan time.Duration, timeout <-chan time.Time) {
	t.Helper()
	for len(s.Events("app")) == 0 {
		select {
		case <-waits:
		case <-time.After(10 * time.Millisecond):
		case <-timeout:
			t.Fatal("the audit log was never read")
		}
	}
}

func (l *lines) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// gated runs a dashboard through the proxy whose blocking queries wait
// only when the test lets them: each wait is a value taken from the
// channel returned.
//
// gap is the least time between two queries of a loop (0: the
// dashboard's own). A query that takes longer is followed by no wait: on a
// busy machine a test that counts queries per wait sets it far above any
// query's time.
func gated(t *testing.T, c *faultyConsul, log *lines, gap time.Duration) (*consul.Fleet, *dashboard.Server, <-chan time.Duration) {
	t.Helper()
	client, _ := api.NewClient(&api.Config{Address: c.Listener.Addr().String()})
	p := &consul.Fleet{Client: client, Prefix: "test/" + testutil.Unique(t), Node: "dash", SessionTTL: 10 * time.Second}
	client.KV().DeleteTree(p.Prefix+"/", nil)
	waits := make(chan time.Duration)
	o := dashboard.Options{Store: p, Logger: slog.New(slog.NewTextHandler(log, nil))}
	dashboard.WithGap(&o, gap)
	dashboard.WithSleep(&o, func(ctx context.Context, d time.Duration) bool {
		select {
		case waits <- d:
			return true
		case <-ctx.Done():
			return false
		}
	})
	s, err := dashboard.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := p.Record(ctx, "app", fleet.Event{Kind: fleet.EventInstall, Who: "host-0"}); err != nil {
		t.Fatal(err)
	}
	go s.Run(ctx)
	return p, s, waits
}

// With Consul down, the log readers and the watch back off (doubling,
// with jitter, up to 30 s) and warn once per outage, not once per retry.
func TestConsulDownIsOneWarningAndBackoff(t *testing.T) {
	c := newFaultyConsul(t)
	log := &lines{wrote: make(chan struct{}, 1)}
	_, s, waits := gated(t, c, log, 0)
	timeout := time.After(30 * time.Second)
	read(t, s, waits, timeout) // up
	c.down()
	var longest time.Duration
	// 24 waits for the back-off to grow, and until both readers met the
	// outage: one loop's waits can all come before the other's cancelled
	// query has come back as an error.
	warned := func() bool {
		return log.count("could not read the audit log") >= 1 && log.count("could not read the fleet") >= 1
	}
	for i := 0; i < 24 || !warned(); {
		select {
		case d := <-waits:
			if d > 30*time.Second {
				t.Fatalf("a back-off of %v", d)
			}
			longest = max(longest, d)
			i++
		case <-log.wrote:
		case <-timeout:
			t.Fatalf("the readers stopped waiting after %d waits", i)
		}
		if n := log.count("could not read the audit log"); n > 1 {
			t.Fatalf("%d warnings for one outage of the audit log:\n%s", n, log.buf.String())
		}
		if n := log.count("could not read the fleet"); n > 1 {
			t.Fatalf("%d warnings for one outage of the watch:\n%s", n, log.buf.String())
		}
	}
	if longest < 8*time.Second {
		t.Fatalf("the back-off never grew: at most %v", longest)
	}
	if n := log.count("could not read the audit log"); n != 1 {
		t.Fatalf("%d warnings for the outage of the audit log, want 1", n)
	}
	if n := log.count("could not read the fleet"); n != 1 {
		t.Fatalf("%d warnings for the outage of the watch, want 1:\n%s", n, log.buf.String())
	}
}

// Consul answering blocking queries at once, with an index that did not
// move, with 0, or with one that went backwards: the watch and the log
// readers make one query per wait, not as many as Consul can answer.
func TestBlockingQueriesAnsweredAtOnceDoNotSpin(t *testing.T) {
	for _, mode := range []string{"same", "zero", "backwards"} {
		t.Run(mode, func(t *testing.T) {
			c := newFaultyConsul(t)
			c.mode.Store(mode) // from the first blocking query on
			_, s, waits := gated(t, c, &lines{}, time.Hour)
			timeout := time.After(30 * time.Second)
			before := c.blocking.Load()
			const rounds = 20
			for i := 0; i < rounds; {
				// Two loops (the watch, the log of app), each may make
				// one more query than it waited.
				c.limit.Store(before + int64(i+1) + 2)
				select {
				case <-waits:
					i++
				case <-c.spun:
					t.Fatalf("%d blocking queries answered at once for %d waits: it spins", c.blocking.Load()-before, i)
				case <-timeout:
					t.Fatalf("the readers stopped waiting after %d waits", i)
				}
			}
			read(t, s, waits, timeout)                // and the log was read meanwhile
			if n := c.blocking.Load(); n < rounds/4 { // after 0 or a step back, every other query is on index 0
				t.Fatalf("only %d blocking queries answered at once", n)
			}
		})
	}
}
