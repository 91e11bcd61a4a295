package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Policy is how a Source is retried. It is the only retry layer: the S3
// SDK's and the Swift library's own retries are turned off, and the agent
// calls Open once.
type Policy struct {
	// Tries bounds the requests of one Stat, and the GETs of one download
	// all together (the first, then each resume or retry).
	Tries int
	// Backoff is the wait before the second request, doubled before each
	// next one up to MaxBackoff, with ±50 % jitter.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Stall: a request that gets no response, or a body that brings no new
	// byte, for this long is dropped and counts as a failed try.
	Stall time.Duration
}

// DefaultStall is the stall_timeout of an artifact block that sets none.
const DefaultStall = 60 * time.Second

// DefaultPolicy: at most 5 requests per Stat and 5 GETs per download,
// waiting about 0.5 s, 1 s, 2 s and 4 s in between. Never retried: a
// missing object, refused credentials, any other 4xx (ErrRejected), an
// object changed since it was pinned (ErrChanged: the update starts over
// from a new check), a verification failure, and the caller's own
// cancellation. Retried: network errors, dropped and stalled bodies, 5xx
// and throttling answers. A dropped body resumes from the byte reached.
var DefaultPolicy = Policy{Tries: 5, Backoff: 500 * time.Millisecond, MaxBackoff: 8 * time.Second, Stall: DefaultStall}

// ErrStalled: a request or a body brought nothing for the stall timeout.
var ErrStalled = errors.New("stalled")

// Retry wraps src in p. The Source it returns resumes a dropped or stalled
// download with a Range request pinned to the same version, when src is a
// RangeOpener, and starts one over otherwise.
func Retry(src Source, p Policy, logger *slog.Logger) Source {
	if p.Tries < 1 {
		p.Tries = 1
	}
	if p.Stall <= 0 {
		p.Stall = DefaultStall
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &retrying{src: src, p: p, logger: logger}
}

type retrying struct {
	src    Source
	p      Policy
	logger *slog.Logger
}

func (r *retrying) String() string { return r.src.String() }

// Unwrap returns the Source retried.
func (r *retrying) Unwrap() Source { return r.src }

// retryable reports whether err may go away by asking again.
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !Permanent(err) && !errors.Is(err, ErrChanged) && !errors.Is(err, ErrCorrupt)
}

// wait sleeps before try (from 2 on), or returns false when ctx ends.
func (r *retrying) wait(ctx context.Context, try int) bool {
	if r.p.Backoff <= 0 {
		return ctx.Err() == nil
	}
	d := r.p.Backoff << (try - 2)
	if r.p.MaxBackoff > 0 && (d > r.p.MaxBackoff || d <= 0) {
		d = r.p.MaxBackoff
	}
	d = d/2 + rand.N(d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// attempt is one request's context: cancelled when ctx ends or when
// nothing moves for the stall timeout. poke marks progress.
type attempt struct {
	ctx     context.Context
	cancel  context.CancelFunc
	timer   *time.Timer
	stalled atomic.Bool
	stall   time.Duration
}

func newAttempt(ctx context.Context, stall time.Duration) *attempt {
	a := &attempt{stall: stall}
	a.ctx, a.cancel = context.WithCancel(ctx)
	a.timer = time.AfterFunc(stall, func() { a.stalled.Store(true); a.cancel() })
	return a
}

func (a *attempt) poke() { a.timer.Reset(a.stall) }

func (a *attempt) end() {
	a.timer.Stop()
	a.cancel()
}

// explain turns the cancellation a stall caused into ErrStalled.
func (a *attempt) explain(what string, err error) error {
	if a.stalled.Load() {
		return fmt.Errorf("%s: %w: nothing received for %s", what, ErrStalled, a.stall)
	}
	return err
}

func (r *retrying) Stat(ctx context.Context) (Info, error) {
	for try := 1; ; try++ {
		a := newAttempt(ctx, r.p.Stall)
		info, err := r.src.Stat(a.ctx)
		a.end()
		if err == nil {
			return info, nil
		}
		err = a.explain("check "+r.src.String(), err)
		if !retryable(ctx, err) || try >= r.p.Tries {
			return Info{}, err
		}
		r.logger.Warn("check failed; retrying", "artifact", r.src.String(), "error", err, "try", try)
		if !r.wait(ctx, try+1) {
			return Info{}, err
		}
	}
}

// Open returns the pinned version as one stream, however many requests it
// takes within the policy.
func (r *retrying) Open(ctx context.Context, pin Info) (io.ReadCloser, error) {
	d := &download{ctx: ctx, r: r, pin: pin}
	if err := d.connect(); err != nil {
		return nil, err
	}
	return d, nil
}

// download is one pinned download across drops. It keeps the context of
// Open, as an HTTP response body does.
type download struct {
	ctx  context.Context
	r    *retrying
	pin  Info
	off  int64 // bytes handed to the reader so far
	gets int
	body io.ReadCloser
	a    *attempt
	last error // why the last request failed or dropped
	err  error // final
}

// connect opens the body at off, within the tries left.
func (d *download) connect() error {
	last := d.last
	for {
		if d.gets >= d.r.p.Tries {
			if last == nil {
				last = errors.New("no tries left")
			}
			return fmt.Errorf("%w (after %d requests)", last, d.gets)
		}
		if d.gets > 0 && !d.r.wait(d.ctx, d.gets+1) {
			return last
		}
		d.gets++
		a := newAttempt(d.ctx, d.r.p.Stall)
		var body io.ReadCloser
		var err error
		if d.off == 0 {
			body, err = d.r.src.Open(a.ctx, d.pin)
		} else if ro, ok := d.r.src.(RangeOpener); ok {
			body, err = ro.OpenAt(a.ctx, d.pin, d.off)
		} else {
			a.end()
			return fmt.Errorf("%w (the store cannot resume a download)", last)
		}
		if err == nil {
			d.body, d.a = body, a
			a.poke()
			return nil
		}
		a.end()
		err = a.explain("download "+d.r.src.String(), err)
		if !retryable(d.ctx, err) {
			return err
		}
		last = err
		d.r.logger.Warn("download failed; retrying", "artifact", d.r.src.String(), "error", err, "from", d.off, "request", d.gets)
	}
}

func (d *download) Read(p []byte) (int, error) {
	for {
		if d.err != nil {
			return 0, d.err
		}
		if d.body == nil {
			if err := d.connect(); err != nil {
				d.err = err
				return 0, err
			}
		}
		n, err := d.body.Read(p)
		if n > 0 {
			d.off += int64(n)
			d.a.poke()
		}
		if err == io.EOF && d.pin.Size > 0 && d.off < d.pin.Size {
			// Ended before the size pinned: a body delimited by the
			// connection's close that was cut looks whole. A drop.
			err = fmt.Errorf("download %s: the body ended at byte %d of %d: %w", d.r.src, d.off, d.pin.Size, io.ErrUnexpectedEOF)
		}
		if err == nil || err == io.EOF {
			return n, err
		}
		// The body dropped or stalled: resume from off on the next read.
		a := d.a
		d.drop()
		err = a.explain("download "+d.r.src.String(), err)
		if !retryable(d.ctx, err) {
			d.err = err
			return n, err
		}
		d.last = err
		d.r.logger.Warn("download interrupted; resuming", "artifact", d.r.src.String(), "error", err, "at", d.off, "request", d.gets)
		if n > 0 {
			return n, nil
		}
	}
}

func (d *download) drop() {
	if d.body != nil {
		d.body.Close()
		d.a.end()
		d.body, d.a = nil, nil
	}
}

func (d *download) Close() error {
	d.drop()
	if d.err == nil {
		d.err = errors.New("download closed")
	}
	return nil
}

var (
	_ Source      = (*retrying)(nil)
	_ RangeOpener = (*retrying)(nil)
)

// OpenAt is Open from byte off on.
func (r *retrying) OpenAt(ctx context.Context, pin Info, off int64) (io.ReadCloser, error) {
	d := &download{ctx: ctx, r: r, pin: pin, off: off}
	if err := d.connect(); err != nil {
		return nil, err
	}
	return d, nil
}

// Signature reads the signature beside the artifact, under the same
// policy as Stat, when the source can hold one.
func (r *retrying) Signature(ctx context.Context) ([]byte, error) {
	src, ok := r.src.(Signed)
	if !ok {
		return nil, fmt.Errorf("%s cannot hold signatures", r.src)
	}
	for try := 1; ; try++ {
		a := newAttempt(ctx, r.p.Stall)
		b, err := src.Signature(a.ctx)
		a.end()
		if err == nil {
			return b, nil
		}
		err = a.explain("read the signature of "+r.src.String(), err)
		if !retryable(ctx, err) || try >= r.p.Tries {
			return nil, err
		}
		if !r.wait(ctx, try+1) {
			return nil, err
		}
	}
}

// Name is the retried source's key, when it has siblings.
func (r *retrying) Name() string {
	if s, ok := r.src.(Sibling); ok {
		return s.Name()
	}
	return ""
}

// Sibling is another object of the retried source's store, retried by
// the same policy; nil when the store cannot name one.
func (r *retrying) Sibling(key string) Source {
	s, ok := r.src.(Sibling)
	if !ok {
		return nil
	}
	return &retrying{src: s.Sibling(key), p: r.p, logger: r.logger}
}
