// Package sourcetest is the conformance suite every artifact.Source runs:
// the same behaviour asked of the local directory, MinIO and Swift.
package sourcetest

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact"
)

// Harness adapts one store to the suite. Each test gets its own key (and
// the harness may give it its own bucket or container).
type Harness struct {
	// Put publishes data under key, replacing what was there.
	Put func(t *testing.T, key string, data []byte)
	// Source returns a source for key.
	Source func(t *testing.T, key string) artifact.Source
	// PutWithChecksums publishes with MD5/SHA-256 metadata, as
	// `dropship publish` does; nil where the store has no metadata.
	PutWithChecksums func(t *testing.T, key string, data []byte)
	// PutMultipart publishes data in parts (S3 multipart, Swift SLO) so
	// that the ETag is not the content's MD5; nil where not possible.
	PutMultipart func(t *testing.T, key string, data []byte, withChecksums bool)
	// WrongCredentials returns a source for key whose credentials the
	// store refuses; nil where there are none.
	WrongCredentials func(t *testing.T, key string) artifact.Source
	// Through returns a source for key that reaches the store through a
	// TCP proxy at addr; nil for stores not reached over the network.
	Through func(t *testing.T, key, proxyAddr string) artifact.Source
	// Addr is the store's host:port (for the proxy).
	Addr string
}

func payload(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 42))
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

func md5hex(b []byte) string    { s := md5.Sum(b); return hex.EncodeToString(s[:]) }
func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// fetch downloads pin through a verifier, as the agent does.
func fetch(ctx context.Context, src artifact.Source, pin artifact.Info) ([]byte, error) {
	rc, err := src.Open(ctx, pin)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	v := artifact.NewVerifier(rc, pin)
	b, err := io.ReadAll(v)
	if err != nil {
		return b, err
	}
	return b, v.Drain()
}

// Run runs every case of the suite against h.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	key := func(t *testing.T) string { return "suite/" + t.Name() + "/app.tar.gz" }

	t.Run("Stat", func(t *testing.T) {
		k, data := key(t), payload(100_000)
		h.Put(t, k, data)
		info, err := h.Source(t, k).Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != int64(len(data)) || info.Checksum() != md5hex(data) {
			t.Fatalf("stat = size %d checksum %s; want %d %s", info.Size, info.Checksum(), len(data), md5hex(data))
		}
		got, err := fetch(ctx, h.Source(t, k), info)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("fetch: %d bytes, %v", len(got), err)
		}
	})

	t.Run("Unchanged", func(t *testing.T) {
		k := key(t)
		h.Put(t, k, payload(5000))
		src := h.Source(t, k)
		a, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a.Checksum() != b.Checksum() || a.Checksum() == "" {
			t.Fatalf("checksum moved without a change: %s then %s", a.Checksum(), b.Checksum())
		}
	})

	t.Run("Changed", func(t *testing.T) {
		k := key(t)
		h.Put(t, k, payload(5000))
		src := h.Source(t, k)
		a, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		newData := payload(5001)
		time.Sleep(10 * time.Millisecond) // a new mtime for the local store
		h.Put(t, k, newData)
		b, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a.Checksum() == b.Checksum() || b.Checksum() != md5hex(newData) {
			t.Fatalf("change not seen: %s then %s", a.Checksum(), b.Checksum())
		}
	})

	t.Run("Missing", func(t *testing.T) {
		_, err := h.Source(t, key(t)+".missing").Stat(ctx)
		if !errors.Is(err, artifact.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})

	t.Run("WrongCredentials", func(t *testing.T) {
		if h.WrongCredentials == nil {
			t.Skip("this store has no credentials")
		}
		k := key(t)
		h.Put(t, k, payload(10))
		_, err := h.WrongCredentials(t, k).Stat(ctx)
		if !errors.Is(err, artifact.ErrAccess) {
			t.Fatalf("err = %v, want ErrAccess", err)
		}
	})

	t.Run("ReplacedDuringDownload", func(t *testing.T) {
		k := key(t)
		h.Put(t, k, payload(20_000))
		src := h.Source(t, k)
		pin, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		h.Put(t, k, payload(20_001))
		got, err := fetch(ctx, src, pin)
		if err == nil {
			t.Fatalf("fetched %d bytes of a replaced object without error", len(got))
		}
		if !errors.Is(err, artifact.ErrChanged) && !errors.Is(err, artifact.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrChanged (or ErrCorrupt)", err)
		}
	})

	t.Run("MetadataChecksum", func(t *testing.T) {
		if h.PutWithChecksums == nil {
			t.Skip("this store keeps no metadata")
		}
		k, data := key(t), payload(3000)
		h.PutWithChecksums(t, k, data)
		info, err := h.Source(t, k).Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.MD5 != md5hex(data) || info.SHA256 != sha256hex(data) {
			t.Fatalf("metadata checksums not read: md5 %s sha256 %s", info.MD5, info.SHA256)
		}
	})

	t.Run("Multipart", func(t *testing.T) {
		if h.PutMultipart == nil {
			t.Skip("this store has no multipart objects")
		}
		data := payload(11 << 20)
		for _, withSums := range []bool{true, false} {
			k := key(t) + map[bool]string{true: ".sums", false: ".bare"}[withSums]
			h.PutMultipart(t, k, data, withSums)
			src := h.Source(t, k)
			info, err := src.Stat(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if withSums {
				if info.Checksum() != md5hex(data) || info.ChecksumFrom != "metadata" {
					t.Fatalf("multipart with metadata: checksum %s from %s", info.Checksum(), info.ChecksumFrom)
				}
			} else if info.ChecksumFrom != "opaque-etag" || info.MD5 != "" {
				t.Fatalf("multipart without metadata: checksum %s from %s, md5 %q", info.Checksum(), info.ChecksumFrom, info.MD5)
			}
			got, err := fetch(ctx, src, info)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("fetch multipart: %d bytes, %v", len(got), err)
			}
		}
	})

	t.Run("CutMidStream", func(t *testing.T) {
		if h.Through == nil {
			t.Skip("this store is not reached over the network")
		}
		k, data := key(t), payload(2<<20)
		h.Put(t, k, data)
		p := NewProxy(t, h.Addr)
		src := h.Through(t, k, p.Addr())
		pin, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.CutAfter(200_000) // response bytes, then the connection drops
		got, err := fetch(ctx, src, pin)
		if err == nil {
			t.Fatalf("a cut download verified (%d bytes)", len(got))
		}
		p.CutAfter(-1)
		if got, err = fetch(ctx, src, pin); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("retry after the cut: %d bytes, %v", len(got), err)
		}
	})

	t.Run("CorruptBody", func(t *testing.T) {
		if h.Through == nil {
			t.Skip("this store is not reached over the network")
		}
		k, data := key(t), payload(1<<20)
		h.Put(t, k, data)
		p := NewProxy(t, h.Addr)
		src := h.Through(t, k, p.Addr())
		pin, err := src.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.FlipAt(500_000) // one bit of the response, deep in the body
		_, err = fetch(ctx, src, pin)
		if !errors.Is(err, artifact.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrCorrupt", err)
		}
	})
}
