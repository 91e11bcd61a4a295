package sourcetest

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy that injects faults into responses: it can cut the
// connection after N response bytes, stop forwarding after N bytes (a
// stall), or flip one bit at an offset. Offsets count the bytes of each
// connection's response stream, headers included. It counts the requests
// that go through it, by method, and the response bytes it forwards.
type Proxy struct {
	ln     net.Listener
	target string
	cut    atomic.Int64 // <0: never
	cuts   atomic.Int64 // connections left to cut; <0: all
	reset  atomic.Bool  // cut with a reset, not a close
	pause  atomic.Int64 // <0: never
	pauses atomic.Int64 // connections left to stall
	flip   atomic.Int64 // <0: never
	bytes  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	live   map[net.Conn]bool
	reqs   map[string]int
}

// NewProxy listens on a free loopback port and forwards to target.
func NewProxy(t testing.TB, target string) *Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, live: map[net.Conn]bool{}, reqs: map[string]int{}}
	p.cut.Store(-1)
	p.pause.Store(-1)
	p.flip.Store(-1)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.dropLive(); p.wg.Wait() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CutAfter resets each later connection after n response bytes (-1:
// never). Open connections are closed, so the client dials one that has
// the fault. A reset also discards what the client had received but not
// read yet.
func (p *Proxy) CutAfter(n int64) {
	p.cut.Store(n)
	p.cuts.Store(-1)
	p.reset.Store(true)
	p.dropLive()
}

// CutTimes closes the next times connections after n response bytes each,
// as a server or middlebox that goes away mid-body; later ones go through
// whole. The client reads every byte forwarded, so the bytes counted are
// the bytes it got.
func (p *Proxy) CutTimes(n int64, times int) {
	p.cut.Store(n)
	p.cuts.Store(int64(times))
	p.reset.Store(false)
	p.dropLive()
}

// PauseAfter stops forwarding the response of the next connection after n
// bytes, holding it open until the client gives up; later connections go
// through whole.
func (p *Proxy) PauseAfter(n int64) {
	p.pause.Store(n)
	p.pauses.Store(1)
	p.dropLive()
}

// FlipAt flips the low bit of response byte n of each later connection.
func (p *Proxy) FlipAt(n int64) { p.flip.Store(n); p.dropLive() }

// Bytes is the number of response bytes forwarded to clients so far.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

// Requests is the number of requests with method seen so far.
func (p *Proxy) Requests(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reqs[method]
}

func (p *Proxy) dropLive() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.live {
		c.Close()
	}
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

// take reports whether this connection gets a fault of which left more
// are to be given (<0: every connection).
func take(left *atomic.Int64) bool {
	for {
		n := left.Load()
		if n == 0 {
			return false
		}
		if n < 0 || left.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// requests forwards the client's stream to up, counting its requests.
func (p *Proxy) requests(c net.Conn, up net.Conn) {
	br := bufio.NewReader(io.TeeReader(c, up))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.reqs[req.Method]++
		p.mu.Unlock()
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
	}
}

func (p *Proxy) handle(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	p.live[c] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.live, c)
		p.mu.Unlock()
		c.Close()
	}()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	clientGone := make(chan struct{})
	go func() {
		p.requests(c, up)
		close(clientGone)
		up.Close() // the client is gone: so is the forwarding
	}()
	cut, flip, pause := p.cut.Load(), p.flip.Load(), p.pause.Load()
	if cut >= 0 && !take(&p.cuts) {
		cut = -1
	}
	if pause >= 0 && !take(&p.pauses) {
		pause = -1
	}
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := up.Read(buf)
		if m > 0 {
			chunk := buf[:m]
			if flip >= n && flip < n+int64(m) {
				chunk[flip-n] ^= 1
			}
			if pause >= 0 && n+int64(m) > pause {
				w, _ := c.Write(chunk[:pause-n])
				p.bytes.Add(int64(w))
				<-clientGone // hold the connection, sending nothing
				return
			}
			if cut >= 0 && n+int64(m) > cut {
				w, _ := c.Write(chunk[:cut-n])
				p.bytes.Add(int64(w))
				if tc, ok := c.(*net.TCPConn); ok && p.reset.Load() {
					tc.SetLinger(0) // a reset, not a clean close
				}
				return
			}
			w, werr := c.Write(chunk)
			p.bytes.Add(int64(w))
			if werr != nil {
				return
			}
			n += int64(m)
		}
		if err != nil {
			return
		}
	}
}
