package artifact

import "strings"

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
func (i *Info) SetChecksums(etag, metaMD5, metaSHA256 string, largeObject bool) {
	i.ETag = strings.Trim(strings.TrimSpace(etag), `"`)
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
}
