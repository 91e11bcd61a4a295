package chunks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/artifact/file"
)

// An index whose signature does not verify is refused before it is
// parsed: an index of a few hundred thousand chunks that a bucket writer
// put beside the archive costs an agent that trusts keys the index's
// bytes, not the hundreds of MiB its parsing takes.
func TestLoadChecksTheSignatureBeforeParsing(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "app.tar"), []byte("x"), 0o644)
	var b bytes.Buffer
	sum := strings.Repeat("a", 64)
	const n = 100_000
	fmt.Fprintf(&b, `{"format":1,"archive":{"size":1,"sha256":"%s"},"tar":{"size":%d,"sha256":"%s"},"chunks":[`, sum, n, sum)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sha256":"%064x","size":1,"stored":1}`, i)
	}
	b.WriteString("]}")
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix), b.Bytes(), 0o644)
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix+".minisig"), []byte("not a signature"), 0o644)
	src := file.New(filepath.Join(dir, "app.tar"))
	info, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	refused := errors.New("refused")
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err = Load(context.Background(), src, info, func(context.Context, []byte, []byte) error { return refused })
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, refused) || !errors.Is(err, ErrNoIndex) {
		t.Fatalf("the index was not refused for its signature: %v", err)
	}
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 2*uint64(b.Len()) {
		t.Fatalf("an index of %d bytes, refused, took %d bytes", b.Len(), got)
	}
}
