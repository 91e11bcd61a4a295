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
	limit := int64(MaxIndex)
	if verify == nil {
		limit = MaxUnsignedIndex
	}
	if info.Size > limit {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, tooLarge(info.Size, verify == nil))
	}
	body, err := is.Open(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	defer body.Close()
	// Read whole, in one buffer of the size the store gave (no more),
	// and its signature checked before a byte of it is parsed: an index
	// nobody trusted signed costs no more memory than its bytes.
	raw, err := readIndex(artifact.NewVerifier(body, info), info.Size, limit)
	if errors.Is(err, errOverLimit) {
		err = tooLarge(-1, verify == nil)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
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
	idx, err := Parse(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoIndex, is, err)
	}
	if !idx.Fits(pin) {
		return nil, fmt.Errorf("%w: %s was made from another version (%.12s…, %d bytes)", ErrNoIndex, is, idx.Archive.SHA256, idx.Archive.Size)
	}
	return idx, nil
}

// tooLarge says that an index of size bytes (-1: not known) is over the
// limit an agent reads, unsigned or signed.
func tooLarge(size int64, unsigned bool) error {
	what := "it is"
	if size >= 0 {
		what = fmt.Sprintf("its %d bytes are", size)
	}
	if unsigned {
		return fmt.Errorf("%w: %s over the %d bytes (MaxUnsignedIndex, about %d chunks) an agent reads of an unsigned index; sign it (publish --sign) and give the service trusted_keys for up to %d bytes",
			ErrIndexTooLarge, what, MaxUnsignedIndex, MaxUnsignedIndex/entryBytes, MaxIndex)
	}
	return fmt.Errorf("%w: %s over the %d bytes (MaxIndex, about %d chunks) an agent reads of a signed index", ErrIndexTooLarge, what, MaxIndex, MaxIndex/entryBytes)
}

var errOverLimit = errors.New("over the limit")

// readIndex reads r to its end (where a Verifier checks it) into a
// buffer of size bytes, or of what r holds, up to limit, when size is
// not known.
func readIndex(r io.Reader, size, limit int64) ([]byte, error) {
	if size <= 0 {
		b, err := io.ReadAll(io.LimitReader(r, limit+1))
		if err == nil && int64(len(b)) > limit {
			err = errOverLimit
		}
		return b, err
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	var one [1]byte
	if n, err := r.Read(one[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("more than the %d bytes expected", size)
		}
		return nil, err
	}
	return b, nil
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
	// The body is read whole as it comes, into a file of the cache: the
	// GETs overlap, their decoding does not, and a body left waiting for
	// its turn would look stalled to the store's retries.
	z, err := os.CreateTemp(f.Cache.Dir, ".fetch-*.zst")
	if err != nil {
		body.Close()
		return 0, err
	}
	defer func() {
		z.Close()
		os.Remove(z.Name())
	}()
	counted := &counter{r: body}
	zw := &errWriter{w: z}
	// The stored size is the index's: a longer body is refused too.
	_, err = io.Copy(zw, io.LimitReader(counted, ch.Stored+1))
	body.Close()
	switch {
	case err != nil && ctx.Err() != nil:
		return counted.n, ctx.Err()
	case err != nil && zw.err != nil:
		// The cache's disk (full, say), not the chunk.
		return counted.n, fmt.Errorf("chunk %s into the cache: %w", src, zw.err)
	case err != nil && errors.Is(err, artifact.ErrCorrupt):
		return counted.n, fmt.Errorf("chunk %s: %w", src, err)
	case err != nil:
		// The download (dropped or stalled past the store's retries),
		// not the chunk's bytes.
		return counted.n, fmt.Errorf("fetch chunk %s: %w", src, err)
	case counted.n != ch.Stored:
		return counted.n, fmt.Errorf("%w: chunk %s: %d bytes stored, the index says %d", artifact.ErrCorrupt, src, counted.n, ch.Stored)
	}
	var dec *zstd.Decoder
	select {
	case dec = <-decs:
	case <-ctx.Done():
		return counted.n, ctx.Err()
	}
	defer func() { decs <- dec }()
	if dec == nil {
		if dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(MaxChunk+1)); err != nil {
			return counted.n, err
		}
	}
	if err := dec.Reset(io.NewSectionReader(z, 0, ch.Stored)); err != nil {
		return counted.n, fmt.Errorf("%w: chunk %s: %v", artifact.ErrCorrupt, src, err)
	}
	tmp, err := os.CreateTemp(f.Cache.Dir, ".fetch-*")
	if err != nil {
		return counted.n, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	w := &errWriter{w: tmp}
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(dec, ch.Size+1))
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err, w.err = cerr, cerr
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return counted.n, ctx.Err()
	case err != nil && w.err != nil:
		return counted.n, fmt.Errorf("chunk %s into the cache: %w", src, w.err)
	case err != nil:
		return counted.n, fmt.Errorf("%w: chunk %s: %v", artifact.ErrCorrupt, src, err)
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

// errWriter keeps the error of the writes to w.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}
