package chunks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/restic/chunker"
	"golang.org/x/sync/errgroup"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
)

// Sign signs the index file at path: the bytes of a minisign signature.
type Sign func(path string) ([]byte, error)

// Published says what Publish wrote.
type Published struct {
	Index    *Index
	Chunks   int   // in the index, each counted once
	Uploaded int   // new to the store
	Bytes    int64 // stored bytes uploaded
}

// Publish splits the tar inside the archive at path into chunks, uploads
// those the store lacks under Prefix of container, then the index's
// signature (when sign is set) and the index, beside key. It runs before
// the archive itself is uploaded: an agent that sees the new archive finds
// its index.
func Publish(ctx context.Context, store artifact.Store, container, key, path string, sign Sign) (Published, error) {
	var out Published
	size, md5hex, shahex, err := artifact.HashFile(path)
	if err != nil {
		return out, err
	}
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	tr, _, err := archive.TarStream(f, filepath.Base(key))
	if err != nil {
		return out, fmt.Errorf("chunk %s: %w", path, err)
	}
	if c, ok := tr.(io.Closer); ok {
		defer c.Close()
	}
	idx := &Index{Format: format, Archive: Digest{Size: size, MD5: md5hex, SHA256: shahex}}
	tmp, err := os.MkdirTemp("", "dropship-chunks-*")
	if err != nil {
		return out, err
	}
	defer os.RemoveAll(tmp)

	type job struct {
		i    int
		sum  string
		data []byte
	}
	jobs := make(chan job)
	g, gctx := errgroup.WithContext(ctx)
	var uploaded, bytes atomic.Int64
	var mu sync.Mutex // guards idx.Chunks[i].Stored
	for w := 0; w < 4; w++ {
		g.Go(func() error {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
			if err != nil {
				return err
			}
			defer enc.Close()
			var buf []byte
			for j := range jobs {
				buf = enc.EncodeAll(j.data, buf[:0])
				mu.Lock()
				idx.Chunks[j.i].Stored = int64(len(buf))
				mu.Unlock()
				ck := Key(j.sum)
				if _, err := store.Source(container, ck).Stat(gctx); err == nil {
					continue // stored by an earlier release, or another service
				} else if !errors.Is(err, artifact.ErrNotFound) {
					return fmt.Errorf("chunk %s: %w", ck, err)
				}
				p := filepath.Join(tmp, j.sum)
				if err := os.WriteFile(p, buf, 0o600); err != nil {
					return err
				}
				if _, err := store.Publish(gctx, container, ck, p, 0); err != nil {
					return fmt.Errorf("upload chunk %s: %w", ck, err)
				}
				os.Remove(p)
				uploaded.Add(1)
				bytes.Add(int64(len(buf)))
			}
			return nil
		})
	}
	// The chunker reads here; compression and uploads run in the workers.
	g.Go(func() error {
		defer close(jobs)
		th := sha256.New()
		ch := chunker.New(io.TeeReader(tr, th), Pol)
		seen := map[string]int{}
		buf := make([]byte, MaxChunk)
		for {
			c, err := ch.Next(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("chunk %s: %w", path, err)
			}
			sum := sumHex(sha256.New(), c.Data)
			mu.Lock()
			idx.Chunks = append(idx.Chunks, Chunk{SHA256: sum, Size: int64(c.Length)})
			i := len(idx.Chunks) - 1
			mu.Unlock()
			idx.Tar.Size += int64(c.Length)
			if _, ok := seen[sum]; ok {
				continue // the same chunk twice in one tar: uploaded once
			}
			seen[sum] = i
			select {
			case jobs <- job{i: i, sum: sum, data: append([]byte(nil), c.Data...)}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		idx.Tar.SHA256 = hex.EncodeToString(th.Sum(nil))
		out.Chunks = len(seen)
		return nil
	})
	if err := g.Wait(); err != nil {
		return out, err
	}
	// The duplicates' stored sizes, now that their first is compressed.
	for i := range idx.Chunks {
		if idx.Chunks[i].Stored == 0 {
			for j := 0; j < i; j++ {
				if idx.Chunks[j].SHA256 == idx.Chunks[i].SHA256 {
					idx.Chunks[i].Stored = idx.Chunks[j].Stored
					break
				}
			}
		}
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return out, err
	}
	ip := filepath.Join(tmp, "index")
	if err := os.WriteFile(ip, b, 0o600); err != nil {
		return out, err
	}
	if sign != nil {
		sig, err := sign(ip)
		if err != nil {
			return out, fmt.Errorf("sign the chunk index: %w", err)
		}
		sp := filepath.Join(tmp, "index.minisig")
		if err := os.WriteFile(sp, sig, 0o600); err != nil {
			return out, err
		}
		if _, err := store.Publish(ctx, container, key+IndexSuffix+".minisig", sp, 0); err != nil {
			return out, fmt.Errorf("upload the chunk index's signature: %w", err)
		}
	}
	if _, err := store.Publish(ctx, container, key+IndexSuffix, ip, 0); err != nil {
		return out, fmt.Errorf("upload the chunk index: %w", err)
	}
	out.Index, out.Uploaded, out.Bytes = idx, int(uploaded.Load()), bytes.Load()
	return out, nil
}

func sumHex(h hash.Hash, b []byte) string {
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}
