package chunks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/dropshipd/dropship/artifact"
)

// Verify checks the signature sig of the index bytes; nil: not required.
type Verify func(ctx context.Context, sig, index []byte) error

// Load reads the index beside src's artifact and returns it if it was
// made from exactly the version pin describes. Without one (or with one
// for another version, or unsigned where verify requires a signature) it
// returns an error wrapping ErrNoIndex: the archive is fetched instead.
func Load(ctx context.Context, src artifact.Source, pin artifact.Info, verify Verify) (*Index, error) {
	sib, ok := src.(artifact.Sibling)
	if !ok || sib.Name() == "" {
		return nil, fmt.Errorf("%w: %s cannot hold one", ErrNoIndex, src)
	}
	is := sib.Sibling(sib.Name() + IndexSuffix)
	info, err := is.Stat(ctx)
	if errors.Is(err, artifact.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s: none", ErrNoIndex, is)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	if info.Size > MaxIndex {
		return nil, fmt.Errorf("%w: %s: %d bytes, over %d", ErrNoIndex, is, info.Size, MaxIndex)
	}
	body, err := is.Open(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	defer body.Close()
	raw, err := io.ReadAll(artifact.NewVerifier(body, info))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	idx, err := Parse(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	if !idx.Fits(pin) {
		return nil, fmt.Errorf("%w: %s was made from another version (%.12s…, %d bytes)", ErrNoIndex, is, idx.Archive.SHA256, idx.Archive.Size)
	}
	if verify != nil {
		signed, ok := is.(artifact.Signed)
		if !ok {
			return nil, fmt.Errorf("%w: %s cannot hold a signature", ErrNoIndex, is)
		}
		sig, err := signed.Signature(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: the signature of %s: %w", ErrNoIndex, is, err)
		}
		if err := verify(ctx, sig, raw); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
		}
	}
	return idx, nil
}

// Fetcher gets the chunks a cache lacks from the store.
type Fetcher struct {
	Src      artifact.Source // the artifact's source: its siblings are the chunks
	Cache    *Cache
	Parallel int // GETs at once; 0: 4
}

// Fetched says what Fetch got.
type Fetched struct {
	Chunks int
	Bytes  int64 // as stored: what came over the network
}

// Fetch gets the chunks of missing into the cache, several at once. Each
// is checked as it arrives (size and SHA-256 of its uncompressed bytes)
// and fetched once more when it does not match; then it is refused
// (artifact.ErrCorrupt). A chunk the store does not have is refused
// (artifact.ErrNotFound). Nothing enters the cache unchecked.
func (f *Fetcher) Fetch(ctx context.Context, missing []Chunk) (Fetched, error) {
	sib, ok := f.Src.(artifact.Sibling)
	if !ok {
		return Fetched{}, fmt.Errorf("%w: %s cannot hold chunks", ErrNoIndex, f.Src)
	}
	if err := os.MkdirAll(f.Cache.Dir, 0o700); err != nil {
		return Fetched{}, err
	}
	par := f.Parallel
	if par <= 0 {
		par = 4
	}
	var n, bytes atomic.Int64
	// The GETs overlap (their requests and first bytes); their bodies are
	// decompressed one at a time, by one decoder: each holds a whole
	// chunk's window, up to 8 MiB, and the install's peak memory is
	// that of one.
	dec := make(chan *zstd.Decoder, 1)
	dec <- nil
	defer func() {
		if d := <-dec; d != nil {
			d.Close()
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	for _, ch := range missing {
		g.Go(func() error {
			src := sib.Sibling(Key(ch.SHA256))
			var err1 error
			for try := 1; try <= 2; try++ {
				got, err := f.one(gctx, src, ch, dec)
				bytes.Add(got)
				if err == nil {
					n.Add(1)
					return nil
				}
				if !errors.Is(err, artifact.ErrCorrupt) {
					return err
				}
				if try == 1 {
					err1 = err
					f.Cache.logger().Warn("chunk failed its check; fetching it again", "chunk", src.String(), "error", err)
					continue
				}
				return fmt.Errorf("%w (and the first time: %v)", err, err1)
			}
			return nil
		})
	}
	err := g.Wait()
	return Fetched{Chunks: int(n.Load()), Bytes: bytes.Load()}, err
}

// One fetches one chunk into the cache, checked, fetched once more when
// it does not match: what a stream calls for a chunk it lacks.
func (f *Fetcher) One(ctx context.Context, ch Chunk) (Fetched, error) {
	return f.Fetch(ctx, []Chunk{ch})
}

// one fetches one chunk into the cache, checked; it returns the bytes
// received.
func (f *Fetcher) one(ctx context.Context, src artifact.Source, ch Chunk, decs chan *zstd.Decoder) (int64, error) {
	body, err := src.Open(ctx, artifact.Info{Key: src.String(), Size: ch.Stored})
	if err != nil {
		return 0, fmt.Errorf("fetch chunk %s: %w", src, err)
	}
	defer body.Close()
	var dec *zstd.Decoder
	select {
	case dec = <-decs:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { decs <- dec }()
	if dec == nil {
		if dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(MaxChunk+1)); err != nil {
			return 0, err
		}
	}
	counted := &counter{r: body}
	// The stored size is the index's: a longer body is refused too.
	limited := io.LimitReader(counted, ch.Stored+1)
	if err := dec.Reset(limited); err != nil {
		return counted.n, fmt.Errorf("%w: chunk %s: %v", artifact.ErrCorrupt, src, err)
	}
	tmp, err := os.CreateTemp(f.Cache.Dir, ".fetch-*")
	if err != nil {
		return counted.n, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(dec, ch.Size+1))
	if err == nil {
		_, err = io.Copy(io.Discard, limited) // what follows the frame counts too
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return counted.n, ctx.Err()
	case err != nil && !errors.Is(err, artifact.ErrNotFound) && !errors.Is(err, artifact.ErrAccess):
		return counted.n, fmt.Errorf("%w: chunk %s: %v", artifact.ErrCorrupt, src, err)
	case err != nil:
		return counted.n, fmt.Errorf("fetch chunk %s: %w", src, err)
	case counted.n != ch.Stored:
		return counted.n, fmt.Errorf("%w: chunk %s: %d bytes stored, the index says %d", artifact.ErrCorrupt, src, counted.n, ch.Stored)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != ch.Size || sum != ch.SHA256 {
		return counted.n, fmt.Errorf("%w: chunk %s: %d bytes with SHA-256 %s, the index says %d bytes", artifact.ErrCorrupt, src, n, sum, ch.Size)
	}
	return counted.n, os.Rename(tmp.Name(), f.Cache.path(ch.SHA256))
}

type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
