// Package artifact defines where releases come from: the Source interface,
// the facts a Stat returns, and the checks that make a download trustworthy.
package artifact

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/internal/hclx"
)

// Info describes one version of an artifact as the store reports it.
type Info struct {
	Key         string // where it lives, for messages: s3://bucket/key
	ETag        string // as the store sends it, quotes removed
	MD5         string // hex MD5 of the content, when known
	SHA256      string // hex SHA-256 of the content, when known
	VersionID   string // store version (S3 versioning), when any
	ContentType string
	Size        int64
	Modified    time.Time
	// ChecksumFrom says what Checksum is based on: "content" (computed
	// here), "etag" (a plain MD5 ETag), "metadata" (checksums the publisher
	// stored) or "opaque-etag" (a version token, not a content hash).
	ChecksumFrom string
}

// Checksum identifies the content: the MD5 when known, then the SHA-256,
// then the ETag as an opaque token.
func (i Info) Checksum() string {
	switch {
	case i.MD5 != "":
		return i.MD5
	case i.SHA256 != "":
		return "sha256:" + i.SHA256
	case i.ETag != "":
		return "etag:" + i.ETag
	}
	return ""
}

// Source is one artifact in one store.
type Source interface {
	// Stat reports the current version without downloading it.
	Stat(ctx context.Context) (Info, error)
	// Open streams exactly the version pin describes. If the store now holds
	// another version it returns an error wrapping ErrChanged.
	Open(ctx context.Context, pin Info) (io.ReadCloser, error)
	// String names the artifact for messages.
	String() string
}

var (
	// ErrNotFound: the object (or its bucket) does not exist.
	ErrNotFound = errors.New("artifact not found")
	// ErrAccess: the store refused the credentials.
	ErrAccess = errors.New("access denied")
	// ErrChanged: the object changed between Stat and Open.
	ErrChanged = errors.New("artifact changed since it was checked")
	// ErrCorrupt: the bytes read do not match the size or checksums pinned.
	ErrCorrupt = errors.New("artifact failed verification")
)

// Permanent reports whether err will not go away by retrying soon: a
// missing object or refused credentials are reported, not hammered.
func Permanent(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrAccess)
}

// Repo is a `repo "NAME"` block of the agent file: credentials and
// endpoints shared by services. Its body is decoded by the source plugin.
type Repo struct {
	Name  string
	Type  string
	Body  hcl.Body
	Range hcl.Range
}

// Env is what a source plugin may use while decoding its block.
type Env struct {
	BaseDir string           // directory of the file the block is in
	Repos   map[string]*Repo // by name
}

// Repo returns the repo block a source of kind uses: the one its `repo`
// attribute names (named), else the one called like its kind, if any. It
// must be of one of types. The block's own diagnostics were reported when
// the agent file loaded.
func (env Env) Repo(body hcl.Body, named *string, kind string, types ...string) (*Repo, hcl.Diagnostics) {
	name := kind
	if named != nil {
		name = *named
	}
	r, ok := env.Repos[name]
	if !ok {
		if named == nil {
			return nil, nil
		}
		return nil, hcl.Diagnostics{hclx.Errorf(body, "repo", "Unknown repo", "No repo %q is defined in the agent file.", name)}
	}
	for _, t := range types {
		if r.Type == t {
			return r, nil
		}
	}
	return nil, hcl.Diagnostics{hclx.Errorf(body, "repo", "Wrong repo type",
		"repo %q is of type %q; a %s artifact uses one of: %s.", name, r.Type, kind, strings.Join(types, ", "))}
}

// Factory builds a Source from the plugin-specific part of an artifact
// block. kind is the block label, so one factory can serve presets.
type Factory func(kind string, body hcl.Body, env Env) (Source, hcl.Diagnostics)
