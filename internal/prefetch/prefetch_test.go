package prefetch_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/dropshipd/dropship/internal/prefetch"
)

func TestPrefetchPassesBytesAndErrors(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100_003)
	got, err := io.ReadAll(prefetch.New(iotest.OneByteReader(bytes.NewReader(data)), 4096, 3))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	boom := errors.New("boom")
	r := prefetch.New(io.MultiReader(bytes.NewReader(data[:5000]), iotest.ErrReader(boom)), 1024, 2)
	got, err = io.ReadAll(r)
	if !errors.Is(err, boom) || len(got) != 5000 {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	// Closing early stops the goroutine even when nobody reads.
	r = prefetch.New(bytes.NewReader(data), 1024, 2)
	r.Close()
}
