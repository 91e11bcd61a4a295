// Package kinds names the requests a host makes to Consul by kind, and
// counts them per host: bench/scale's simulated hosts and bench/rollout's
// agents are counted alike, so their tables compare kind by kind.
package kinds

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Of names a request: its method and path, the folder of a host's key
// rather than the key, "?recurse" or "?keys" for a listing of a folder
// (one key's folder and the folder's listing are told apart so), "
// (blocking)" for a blocking query (one with an index), and for a transaction its first two operations other than the
// coordinator's check of its lock (and how many operations when there
// are more than two, by tens from ten on). It reads a transaction's body
// and puts it back.
func Of(r *http.Request) string {
	p := r.URL.Path
	if p == "/v1/txn" && r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(b))
		var ops []struct{ KV struct{ Verb, Key string } }
		json.Unmarshal(b, &ops)
		var what []string
		for _, op := range ops {
			if op.KV.Verb == "check-session" || len(what) == 2 {
				continue
			}
			what = append(what, op.KV.Verb+" "+TrimKey(op.KV.Key))
		}
		switch {
		case len(ops) >= 10:
			what = append(what, fmt.Sprintf("(%d+ ops)", len(ops)/10*10))
		case len(ops) > 2:
			what = append(what, fmt.Sprintf("(%d ops)", len(ops)))
		}
		return r.Method + " /v1/txn " + strings.Join(what, ", ")
	}
	p = TrimKey(p)
	q := r.URL.Query()
	for _, f := range []string{"recurse", "keys"} {
		if q.Has(f) {
			p += " ?" + f
		}
	}
	if q.Has("index") {
		p += " (blocking)"
	}
	return r.Method + " " + p
}

// TrimKey cuts a host's own key (or a session's id) to its folder.
func TrimKey(p string) string {
	for _, cut := range []string{"/grant/", "/nodes/", "/wave/", "/failed/", "/audit/", "/session/create", "/session/renew/", "/session/destroy/", "/session/info/"} {
		if i := strings.Index(p, cut); i >= 0 {
			p = p[:i+len(cut)]
		}
	}
	if i := strings.Index(p, "/lock/"); i >= 0 && !strings.HasSuffix(p, ".lock") {
		p = p[:i+len("/lock/")]
	}
	return p
}

// Count is the requests of one kind and the bytes Consul answered them
// with.
type Count struct{ Req, Recv atomic.Int64 }

// Table counts requests by kind, for a number of hosts.
type Table struct{ m sync.Map }

// Add counts a request of kind, and returns its count, to which the
// bytes of its answer are added.
func (t *Table) Add(kind string) *Count {
	c, _ := t.m.LoadOrStore(kind, new(Count))
	c.(*Count).Req.Add(1)
	return c.(*Count)
}

// Count is the number of requests of kind.
func (t *Table) Count(kind string) int64 {
	c, ok := t.m.Load(kind)
	if !ok {
		return 0
	}
	return c.(*Count).Req.Load()
}

// Merge adds the counts of o to t.
func (t *Table) Merge(o *Table) {
	o.m.Range(func(k, v any) bool {
		c, _ := t.m.LoadOrStore(k, new(Count))
		c.(*Count).Req.Add(v.(*Count).Req.Load())
		c.(*Count).Recv.Add(v.(*Count).Recv.Load())
		return true
	})
}

// Clear forgets every count.
func (t *Table) Clear() { t.m.Clear() }

// Reset sets every count to zero, keeping its kind: the answer to a
// request made before (a blocking query that Consul answers now) is
// counted in its kind's bytes, though not in its requests.
func (t *Table) Reset() {
	t.m.Range(func(_, v any) bool {
		v.(*Count).Req.Store(0)
		v.(*Count).Recv.Store(0)
		return true
	})
}

// Row is a kind's requests and KB, per host.
type Row struct {
	Kind      string
	Req, Recv float64
}

// Rows returns the table's kinds, each divided by hosts, the most
// requests first (then by name); a kind with neither a request nor an
// answer since the last Reset is left out.
func (t *Table) Rows(hosts int) []Row {
	var rows []Row
	t.m.Range(func(k, v any) bool {
		c := v.(*Count)
		if c.Req.Load() == 0 && c.Recv.Load() == 0 {
			return true // not since the last Reset
		}
		rows = append(rows, Row{k.(string), float64(c.Req.Load()) / float64(hosts), float64(c.Recv.Load()) / float64(hosts) / 1024})
		return true
	})
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Req != rows[j].Req {
			return rows[i].Req > rows[j].Req
		}
		return rows[i].Kind < rows[j].Kind
	})
	return rows
}

// Format writes the table's rows per host under title, indented, with
// their total.
func (t *Table) Format(w io.Writer, title string, hosts int) {
	fmt.Fprintf(w, "    %-90s %8s %8s\n", title, "req", "KB")
	var req, recv float64
	for _, r := range t.Rows(hosts) {
		fmt.Fprintf(w, "    %-90s %8.3f %8.2f\n", r.Kind, r.Req, r.Recv)
		req, recv = req+r.Req, recv+r.Recv
	}
	fmt.Fprintf(w, "    %-90s %8.3f %8.2f\n", "total", req, recv)
}

// HeaderSize is about what an answer's status line and headers take on
// the wire.
func HeaderSize(resp *http.Response) int {
	n := len(resp.Status) + 11
	for k, vs := range resp.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// Body counts the bytes read from an answer's body into each of n.
type Body struct {
	io.ReadCloser
	N []*atomic.Int64
}

func (b *Body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	for _, c := range b.N {
		c.Add(int64(n))
	}
	return n, err
}

// Counted adds an answer's header to each of n, and its body's bytes as
// they are read.
func Counted(resp *http.Response, n []*atomic.Int64) *http.Response {
	h := HeaderSize(resp)
	for _, c := range n {
		c.Add(int64(h))
	}
	resp.Body = &Body{ReadCloser: resp.Body, N: n}
	return resp
}
