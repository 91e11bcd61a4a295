// Package artifact defines where releases come from: the Source interface,
// the facts a Stat returns, and the checks that make a download trustworthy.
package artifact

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/hashicorp/hcl/v2"
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

// ErrRejected: the store refused the request for another reason (an
// HTTP 4xx other than those above); asking again gets the same answer.
var ErrRejected = errors.New("request rejected by the store")

// Permanent reports whether err will not go away by retrying soon: a
// missing object, refused credentials or a request the store rejects are
// reported, not hammered.
func Permanent(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrAccess) || errors.Is(err, ErrRejected)
}

// Factory builds a Source from the plugin-specific part of an artifact
// block. kind is the block label, so one factory can serve presets.
type Factory func(kind string, body hcl.Body, env Env) (Source, hcl.Diagnostics)

// RangeOpener is a Source that can continue a download: OpenAt streams
// the pinned version from byte off on (a Range request pinned like Open).
// The retry wrapper resumes with it after a drop or a stall.
type RangeOpener interface {
	OpenAt(ctx context.Context, pin Info, off int64) (io.ReadCloser, error)
}

// Sibling is a Source that can name other objects of its store: the
// chunk index and the chunks `dropship publish` writes beside an archive.
type Sibling interface {
	// Name is the artifact's key in its bucket or container (a local
	// file's base name: its directory is its container).
	Name() string
	// Sibling is the object at key in the same bucket or container.
	Sibling(key string) Source
}
