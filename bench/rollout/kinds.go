package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/bench/internal/kinds"
	"github.com/dropshipd/dropship/fleet"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// counter is a reverse proxy to Consul per agent, on a listener of its
// own, counting what each agent asks Consul by kind (-kinds).
type counter struct {
	hosts     []*hostCount
	servers   []*http.Server
	listeners []net.Listener
}

// hostCount is one agent's requests by kind, and in all.
type hostCount struct {
	kinds     kinds.Table
	req, recv atomic.Int64
}

// newCounter starts a proxy to consul (host:port) for each of n agents.
func newCounter(consul string, n int) (*counter, error) {
	target := &url.URL{Scheme: "http", Host: consul}
	c := &counter{}
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.Close()
			return nil, err
		}
		h := &hostCount{}
		p := httputil.NewSingleHostReverseProxy(target)
		// Blocking queries: an answer is passed on as Consul sends it.
		p.FlushInterval = -1
		p.Transport = countingTransport{http.DefaultTransport, h}
		// An agent that stops waiting cancels its blocking query: no
		// error of the bench's.
		p.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "bench: proxy:", err)
			}
			w.WriteHeader(http.StatusBadGateway)
		}
		srv := &http.Server{Handler: p}
		go srv.Serve(l)
		c.hosts, c.servers, c.listeners = append(c.hosts, h), append(c.servers, srv), append(c.listeners, l)
	}
	return c, nil
}

// Addr is agent i's address of Consul: its proxy's.
func (c *counter) Addr(i int) string { return c.listeners[i].Addr().String() }

// Reset forgets what was counted. An answer to a request made before
// (a blocking query that Consul answers now) is counted in its bytes,
// not in its requests: as bench/scale counts.
func (c *counter) Reset() {
	for _, h := range c.hosts {
		h.kinds.Reset()
		h.req.Store(0)
		h.recv.Store(0)
	}
}

// Print writes the requests per host by kind, then each host's requests
// by kind (a column per host) with its total and KB.
func (c *counter) Print(w io.Writer) {
	var all kinds.Table
	for _, h := range c.hosts {
		all.Merge(&h.kinds)
	}
	rows := all.Rows(len(c.hosts))
	all.Format(w, fmt.Sprintf("requests per host by kind (the rollout of one release, %d agents)", len(c.hosts)), len(c.hosts))
	fmt.Fprintf(w, "    %-90s", "each host's requests by kind")
	for i := range c.hosts {
		fmt.Fprintf(w, " %4s", fmt.Sprintf("h%02d", i))
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		fmt.Fprintf(w, "    %-90s", r.Kind)
		for _, h := range c.hosts {
			fmt.Fprintf(w, " %4d", h.kinds.Count(r.Kind))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "    %-90s", "total")
	for _, h := range c.hosts {
		fmt.Fprintf(w, " %4d", h.req.Load())
	}
	fmt.Fprintf(w, "\n    %-90s", "KB")
	for _, h := range c.hosts {
		fmt.Fprintf(w, " %4.0f", float64(h.recv.Load())/1024)
	}
	fmt.Fprintln(w)
}

// Close stops the proxies.
func (c *counter) Close() {
	for _, s := range c.servers {
		s.Close()
	}
}

// countingTransport counts the requests an agent's proxy passes on, by
// kind, and the bytes Consul answers them with.
type countingTransport struct {
	base http.RoundTripper
	h    *hostCount
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.h.req.Add(1)
	recv := []*atomic.Int64{&t.h.recv, &t.h.kinds.Add(kinds.Of(r)).Recv}
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	return kinds.Counted(resp, recv), nil
}

// waitDone waits until every host reported sum and gave its slot back
// (no grant key is left).
func waitDone(c *api.Client, names []string, sum string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		done := 0
		for _, name := range names {
			kv, _, err := c.KV().Get(fleet.NodesKey("bench", "app")+name, nil)
			var st fleet.NodeStatus
			if err == nil && kv != nil && json.Unmarshal(kv.Value, &st) == nil && st.Checksum == sum && !strings.HasPrefix(st.Result, "fail") {
				done++
			}
		}
		keys, _, err := c.KV().Keys(lockconsul.GrantPrefix("bench", "app"), "", nil)
		if err == nil && done == len(names) && len(keys) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s, %d of %d hosts reported %s, %d grant keys left", timeout, done, len(names), sum, len(keys))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
