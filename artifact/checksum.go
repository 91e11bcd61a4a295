package artifact

import (
	"fmt"
	"strings"
)

// Metadata keys `dropship publish` stores with an object (S3:
// x-amz-meta-md5, Swift: X-Object-Meta-Md5, …).
const (
	MetaMD5    = "md5"
	MetaSHA256 = "sha256"
)

// lowerHex reports whether s is n lower-case hex digits.
func lowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// SetChecksums fills MD5, SHA256, ETag and ChecksumFrom from what a store
// reports. Checksums the publisher stored as metadata come first; then an
// ETag that is a plain MD5 (a single-part upload); otherwise the ETag is
// only an opaque version token (S3 multipart, Swift SLO/DLO manifests).
// largeObject says the store itself told us the ETag is not a content MD5.
//
// A weak ETag (W/"…") is refused: S3 and Swift never send one, so something
// between the agent and the store rewrote the object, and a GET can never
// be pinned to it (If-Match compares strongly: every download would fail).
func (i *Info) SetChecksums(etag, metaMD5, metaSHA256 string, largeObject bool) error {
	etag = strings.TrimSpace(etag)
	if strings.HasPrefix(etag, "W/") {
		return fmt.Errorf("%w: it answered a weak ETag (%.80s), which no download can be pinned to; a proxy or CDN between dropship and the store rewrites objects?", ErrRejected, etag)
	}
	i.ETag = strings.Trim(etag, `"`)
	m, s := strings.ToLower(strings.TrimSpace(metaMD5)), strings.ToLower(strings.TrimSpace(metaSHA256))
	if !lowerHex(m, 32) {
		m = ""
	}
	if !lowerHex(s, 64) {
		s = ""
	}
	switch {
	case m != "" || s != "":
		i.MD5, i.SHA256, i.ChecksumFrom = m, s, "metadata"
	case !largeObject && lowerHex(strings.ToLower(i.ETag), 32):
		i.MD5, i.ChecksumFrom = strings.ToLower(i.ETag), "etag"
	default:
		i.ChecksumFrom = "opaque-etag"
	}
	return nil
}
