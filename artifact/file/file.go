// Package file is the local-directory artifact source: the embedded
// default, needing no cloud account. Its checksum is the file's MD5,
// recomputed only when the size or modification time changes.
package file

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Source serves one file of the local filesystem.
type Source struct {
	path string
	root string // the container: the directory its siblings' keys start from

	mu     sync.Mutex
	cached artifact.Info // valid while size and mtime match
}

// New returns a source for the file at path.
func New(path string) *Source { return &Source{path: path, root: filepath.Dir(path)} }

type config struct {
	Path string `hcl:"path"`
}

// Factory decodes `artifact "file" { path = "…" }`.
func Factory(_ string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	diags = append(diags, hclx.Required(body, "path", c.Path)...)
	return New(hclx.Path(env.BaseDir, c.Path)), diags
}

func (s *Source) String() string { return "file://" + s.path }

// Stat hashes the file when it is new or changed since the last Stat.
func (s *Source) Stat(ctx context.Context) (artifact.Info, error) {
	fi, err := os.Stat(s.path)
	if err != nil {
		return artifact.Info{}, fmt.Errorf("check %w", s.wrap(err))
	}
	if !fi.Mode().IsRegular() {
		return artifact.Info{}, fmt.Errorf("stat %s: not a regular file", s)
	}
	s.mu.Lock()
	c := s.cached
	s.mu.Unlock()
	if c.Key != "" && c.Size == fi.Size() && c.Modified.Equal(fi.ModTime()) {
		return c, nil
	}
	info, err := s.hash(ctx, fi)
	if err != nil {
		return artifact.Info{}, err
	}
	s.mu.Lock()
	s.cached = info
	s.mu.Unlock()
	return info, nil
}

func (s *Source) hash(ctx context.Context, fi fs.FileInfo) (artifact.Info, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return artifact.Info{}, s.wrap(err)
	}
	defer f.Close()
	m, h := md5.New(), sha256.New()
	n, err := io.Copy(io.MultiWriter(m, h), ctxReader{ctx, f})
	if err != nil {
		return artifact.Info{}, fmt.Errorf("hash %s: %w", s, err)
	}
	// A writer still busy with the file: hash it again next time.
	after, err := f.Stat()
	if err != nil {
		return artifact.Info{}, s.wrap(err)
	}
	if n != fi.Size() || after.Size() != fi.Size() || !after.ModTime().Equal(fi.ModTime()) {
		return artifact.Info{}, fmt.Errorf("hash %s: %w (the file is being written)", s, artifact.ErrChanged)
	}
	return artifact.Info{
		Key:          s.String(),
		MD5:          hex.EncodeToString(m.Sum(nil)),
		SHA256:       hex.EncodeToString(h.Sum(nil)),
		Size:         fi.Size(),
		Modified:     fi.ModTime(),
		ChecksumFrom: "content",
	}, nil
}

// Open streams the file if it is still the version pinned; the caller's
// Verifier catches a change that happens while it reads.
func (s *Source) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	return s.OpenAt(ctx, pin, 0)
}

// OpenAt is Open from byte off on.
func (s *Source) OpenAt(_ context.Context, pin artifact.Info, off int64) (io.ReadCloser, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, s.wrap(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, s.wrap(err)
	}
	// A pin without a time (a chunk, named by its content) is checked
	// by its size alone.
	if fi.Size() != pin.Size || !pin.Modified.IsZero() && !fi.ModTime().Equal(pin.Modified) {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", s, artifact.ErrChanged)
	}
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, s.wrap(err)
		}
	}
	return f, nil
}

func (s *Source) wrap(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: %w", s, artifact.ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: %w: %v", s, artifact.ErrAccess, err)
	}
	return fmt.Errorf("%s: %w", s, err)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

var (
	_ artifact.Source      = (*Source)(nil)
	_ artifact.RangeOpener = (*Source)(nil)
)

// Name is the file's key in its container: its path under the
// directory it was opened in (the file's own directory, for a source of
// an artifact block).
func (s *Source) Name() string {
	if rel, err := filepath.Rel(s.root, s.path); err == nil {
		return filepath.ToSlash(rel)
	}
	return filepath.Base(s.path)
}

// Sibling is the file at key (slash-separated) in the same container.
func (s *Source) Sibling(key string) artifact.Source {
	return &Source{path: filepath.Join(s.root, filepath.FromSlash(key)), root: s.root}
}

var _ artifact.Sibling = (*Source)(nil)
