// Package prefetch decouples the stages of an install (download and
// hashing, decompression, unpacking) so that they run on different cores.
package prefetch

import (
	"io"
	"sync"
)

// New reads r in a goroutine of its own, up to depth chunks of size bytes
// ahead of the consumer: the download and its hashing run on one core
// while decompression and unpacking run on another. Memory stays
// bounded at depth×size whatever the artifact's size. Close stops the
// goroutine and waits until it no longer touches r, so r may be read
// again after it; reading to the end returns r's final error.
func New(r io.Reader, size, depth int) io.ReadCloser {
	p := &prefetch{ch: make(chan []byte, depth), done: make(chan struct{}), exited: make(chan struct{}), free: make(chan []byte, depth+2)}
	for range depth + 2 {
		p.free <- make([]byte, size)
	}
	go p.run(r)
	return p
}

type prefetch struct {
	ch     chan []byte
	free   chan []byte
	done   chan struct{}
	exited chan struct{}
	once   sync.Once
	err    error // set before ch closes
	cur    []byte
	buf    []byte // backing array of cur, returned to free when used up
}

func (p *prefetch) run(r io.Reader) {
	defer close(p.exited)
	defer close(p.ch)
	for {
		var b []byte
		select {
		case b = <-p.free:
		case <-p.done:
			return
		}
		n, err := io.ReadFull(r, b)
		if n > 0 {
			select {
			case p.ch <- b[:n]:
			case <-p.done:
				return
			}
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err != nil {
			p.err = err
			return
		}
	}
}

func (p *prefetch) Read(out []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.buf != nil {
			p.free <- p.buf[:cap(p.buf)]
			p.buf = nil
		}
		b, ok := <-p.ch
		if !ok {
			return 0, p.err
		}
		p.cur, p.buf = b, b
	}
	n := copy(out, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// Close stops the reading goroutine and waits for it.
func (p *prefetch) Close() error {
	p.once.Do(func() { close(p.done) })
	<-p.exited
	return nil
}
