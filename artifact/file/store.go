package file

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/artifact"
)

// Store is the local filesystem as a store: a container is a directory,
// a key a slash-separated path under it. `dropship publish --to
// file:///srv/releases/api.tar.zst` publishes through it.
type Store struct{}

// Source is the file at key under the directory container.
func (Store) Source(container, key string) artifact.Source {
	return &Source{path: filepath.Join(container, filepath.FromSlash(key)), root: container}
}

// Publish copies the file at path to container/key, atomically (a
// temporary file renamed), then stats it as agents will see it.
func (st Store) Publish(ctx context.Context, container, key, path string, _ int64) (artifact.Info, error) {
	dst := filepath.Join(container, filepath.FromSlash(key))
	src := st.Source(container, key).(*Source)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return artifact.Info{}, fmt.Errorf("publish %s: %w", src, err)
	}
	if a, b := absPath(path), absPath(dst); a != b {
		in, err := os.Open(path)
		if err != nil {
			return artifact.Info{}, err
		}
		defer in.Close()
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".publish-*")
		if err != nil {
			return artifact.Info{}, fmt.Errorf("publish %s: %w", src, err)
		}
		defer os.Remove(tmp.Name())
		_, err = io.Copy(tmp, ctxReader{ctx, in})
		if err == nil {
			err = tmp.Chmod(0o644)
		}
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), dst)
		}
		if err != nil {
			return artifact.Info{}, fmt.Errorf("publish %s: %w", src, err)
		}
	}
	return src.Stat(ctx)
}

func absPath(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// Settings: the local filesystem has no connection keys.
func (Store) Settings() artifact.Settings { return settings{} }

type settings struct{}

func (settings) Over(body hcl.Body, _ string) (artifact.Settings, hcl.Diagnostics) {
	attrs, diags := body.JustAttributes()
	for _, a := range attrs {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unsupported argument",
			Detail: "A local directory has no connection keys.", Subject: a.NameRange.Ptr()})
	}
	return settings{}, diags
}
func (settings) Key() string                   { return "file" }
func (settings) Open() (artifact.Store, error) { return Store{}, nil }

var _ artifact.Store = Store{}
