package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact"
)

// flaky serves data, failing as told: errs are what successive Stats and
// Opens return before they work; each body drops after cut bytes.
type flaky struct {
	data  []byte
	errs  []error
	cut   int
	clean bool // a cut body ends as if it were whole (io.EOF)
	calls int
	from  []int64 // offset of each open
}

func (f *flaky) String() string { return "flaky://x" }

func (f *flaky) next() error {
	f.calls++
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return err
	}
	return nil
}

func (f *flaky) Stat(context.Context) (artifact.Info, error) {
	if err := f.next(); err != nil {
		return artifact.Info{}, err
	}
	return artifact.Info{Key: "flaky://x", Size: int64(len(f.data))}, nil
}

func (f *flaky) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	return f.OpenAt(ctx, pin, 0)
}

func (f *flaky) OpenAt(_ context.Context, _ artifact.Info, off int64) (io.ReadCloser, error) {
	if err := f.next(); err != nil {
		return nil, err
	}
	f.from = append(f.from, off)
	end := min(int(off)+f.cut, len(f.data))
	if end == len(f.data) {
		return io.NopCloser(bytes.NewReader(f.data[off:])), nil
	}
	if f.clean {
		return io.NopCloser(bytes.NewReader(f.data[off:end])), nil
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(f.data[off:end]), errReader{})), nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

func policy(tries int) artifact.Policy {
	return artifact.Policy{Tries: tries, Backoff: time.Millisecond, MaxBackoff: time.Millisecond, Stall: time.Minute}
}

func TestRetryStatStopsAtPermanentErrors(t *testing.T) {
	transient := errors.New("503 Service Unavailable")
	for _, tc := range []struct {
		errs  []error
		calls int
		ok    bool
	}{
		{[]error{transient, transient}, 3, true},
		{[]error{transient, transient, transient, transient, transient}, 3, false},
		{[]error{fmt.Errorf("x: %w", artifact.ErrAccess)}, 1, false},
		{[]error{fmt.Errorf("x: %w", artifact.ErrNotFound)}, 1, false},
		{[]error{fmt.Errorf("x: %w", artifact.ErrRejected)}, 1, false},
		{[]error{fmt.Errorf("x: %w", artifact.ErrChanged)}, 1, false},
	} {
		f := &flaky{errs: tc.errs}
		_, err := artifact.Retry(f, policy(3), nil).Stat(context.Background())
		if (err == nil) != tc.ok || f.calls != tc.calls {
			t.Errorf("%v: err %v after %d calls, want ok=%v after %d", tc.errs, err, f.calls, tc.ok, tc.calls)
		}
	}
}

// A body that drops resumes from the byte reached, and the stream read is
// the object, whole and once.
func TestRetryResumesFromTheByteReached(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	f := &flaky{data: data, cut: 3000}
	rc, err := artifact.Retry(f, policy(4), nil).Open(context.Background(), artifact.Info{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if fmt.Sprint(f.from) != "[0 3000 6000 9000]" {
		t.Fatalf("opened from %v", f.from)
	}
}

// A body that ends cleanly before the size pinned (a response delimited
// by the connection's close, cut mid-way) is a drop too: resumed, not
// handed on as the whole object.
func TestRetryResumesABodyThatEndsEarly(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	f := &flaky{data: data, cut: 3000, clean: true}
	rc, err := artifact.Retry(f, policy(4), nil).Open(context.Background(), artifact.Info{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, data) || fmt.Sprint(f.from) != "[0 3000 6000 9000]" {
		t.Fatalf("%d bytes, %v, opened from %v", len(got), err, f.from)
	}
	// Out of tries, it is an error, not an end.
	f = &flaky{data: data, cut: 3000, clean: true}
	rc, _ = artifact.Retry(f, policy(2), nil).Open(context.Background(), artifact.Info{Size: int64(len(data))})
	if got, err := io.ReadAll(rc); err == nil || len(got) != 6000 {
		t.Fatalf("out of tries: %d bytes, %v", len(got), err)
	}
	// A size unknown (-1 or 0) is not judged here: the verifier does.
	f = &flaky{data: data, cut: 3000, clean: true}
	rc, _ = artifact.Retry(f, policy(2), nil).Open(context.Background(), artifact.Info{Size: -1})
	if got, err := io.ReadAll(rc); err != nil || len(got) != 3000 {
		t.Fatalf("size unknown: %d bytes, %v", len(got), err)
	}
}

// A resume that finds the object changed stops there: ErrChanged, not a
// mix of two versions.
func TestRetryStopsWhenTheObjectChanged(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 5000)
	f := &flaky{data: data, cut: 2000}
	rc, err := artifact.Retry(f, policy(4), nil).Open(context.Background(), artifact.Info{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	f.errs = []error{fmt.Errorf("download: %w", artifact.ErrChanged)}
	_, err = io.ReadAll(rc)
	if !errors.Is(err, artifact.ErrChanged) || len(f.from) != 1 {
		t.Fatalf("err %v after opens from %v", err, f.from)
	}
}

// stalling sends a few bytes, then nothing until its request is
// cancelled.
type stalling struct{ opens int }

func (s *stalling) String() string                              { return "stalling://x" }
func (s *stalling) Stat(context.Context) (artifact.Info, error) { return artifact.Info{Size: 100}, nil }
func (s *stalling) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	return s.OpenAt(ctx, pin, 0)
}

func (s *stalling) OpenAt(ctx context.Context, _ artifact.Info, _ int64) (io.ReadCloser, error) {
	s.opens++
	return io.NopCloser(io.MultiReader(bytes.NewReader([]byte("abc")), ctxReader{ctx})), nil
}

type ctxReader struct{ ctx context.Context }

func (c ctxReader) Read([]byte) (int, error) { <-c.ctx.Done(); return 0, c.ctx.Err() }

func TestRetryDropsAStalledBody(t *testing.T) {
	s := &stalling{}
	p := policy(2)
	p.Stall = 50 * time.Millisecond
	rc, err := artifact.Retry(s, p, nil).Open(context.Background(), artifact.Info{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if !errors.Is(err, artifact.ErrStalled) || s.opens != 2 || string(got) != "abcabc" {
		t.Fatalf("read %q, err %v, %d opens", got, err, s.opens)
	}
}
