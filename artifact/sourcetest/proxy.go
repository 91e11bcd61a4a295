package sourcetest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy that injects faults into responses: it can cut the
// connection after N response bytes or flip one bit at an offset. Offsets
// count the bytes of each connection's response stream, headers included.
type Proxy struct {
	ln     net.Listener
	target string
	cut    atomic.Int64 // <0: never
	flip   atomic.Int64 // <0: never
	wg     sync.WaitGroup
	mu     sync.Mutex
	live   map[net.Conn]bool
}

// NewProxy listens on a free loopback port and forwards to target.
func NewProxy(t testing.TB, target string) *Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, live: map[net.Conn]bool{}}
	p.cut.Store(-1)
	p.flip.Store(-1)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CutAfter drops each later connection after n response bytes (-1: never).
// Open connections are closed, so the client dials one that has the fault.
func (p *Proxy) CutAfter(n int64) { p.cut.Store(n); p.dropLive() }

// FlipAt flips the low bit of response byte n of each later connection.
func (p *Proxy) FlipAt(n int64) { p.flip.Store(n); p.dropLive() }

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
		go p.handle(c)
	}
}

func (p *Proxy) handle(c net.Conn) {
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
	go io.Copy(up, c)
	cut, flip := p.cut.Load(), p.flip.Load()
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := up.Read(buf)
		if m > 0 {
			chunk := buf[:m]
			if flip >= n && flip < n+int64(m) {
				chunk[flip-n] ^= 1
			}
			if cut >= 0 && n+int64(m) > cut {
				c.Write(chunk[:cut-n])
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0) // a reset, not a clean close
				}
				return
			}
			if _, werr := c.Write(chunk); werr != nil {
				return
			}
			n += int64(m)
		}
		if err != nil {
			return
		}
	}
}
