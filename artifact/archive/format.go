// Package archive unpacks a release into a directory it cannot escape.
// It reads the artifact as one stream (zip alone needs a spooled copy),
// chooses the format by magic bytes, then by name, unless told, and
// refuses hostile entries one by one with the entry's name and the reason.
package archive

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// Formats known to Extract.
const (
	Tar    = "tar"
	TarGz  = "tar.gz"
	TarZst = "tar.zst"
	TarXz  = "tar.xz"
	TarBz2 = "tar.bz2"
	Zip    = "zip"
	Plain  = "file"
)

// Detect returns the format of the stream behind br (peeked, not read)
// and of name. Magic bytes win over the name, so a .tar.gz served as
// application/octet-stream, or under any name, is still a .tar.gz.
func Detect(br *bufio.Reader, name string) string {
	head, _ := br.Peek(512)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return TarGz
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return TarZst
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return TarXz
	case bytes.HasPrefix(head, []byte("BZh")) && len(head) > 3 && head[3] >= '1' && head[3] <= '9':
		return TarBz2
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return Zip
	case len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return Tar
	}
	return ByName(name)
}

// ByName guesses the format from a file name; Plain when nothing fits.
func ByName(name string) string {
	n := strings.ToLower(name)
	switch {
	case strings.HasSuffix(n, ".tar.gz"), strings.HasSuffix(n, ".tgz"):
		return TarGz
	case strings.HasSuffix(n, ".tar.zst"), strings.HasSuffix(n, ".tzst"):
		return TarZst
	case strings.HasSuffix(n, ".tar.xz"), strings.HasSuffix(n, ".txz"):
		return TarXz
	case strings.HasSuffix(n, ".tar.bz2"), strings.HasSuffix(n, ".tbz2"):
		return TarBz2
	case strings.HasSuffix(n, ".tar"):
		return Tar
	case strings.HasSuffix(n, ".zip"):
		return Zip
	}
	return Plain
}

// FromContentType maps a `content_type` override (a MIME type or a format
// name) to a format.
func FromContentType(ct string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(ct)) {
	case "":
		return "", nil
	case "tar", "application/x-tar":
		return Tar, nil
	case "tar.gz", "tgz", "application/gzip", "application/x-gzip", "application/x-tar+gzip":
		return TarGz, nil
	case "tar.zst", "application/zstd", "application/x-zstd":
		return TarZst, nil
	case "tar.xz", "application/x-xz":
		return TarXz, nil
	case "tar.bz2", "application/x-bzip2":
		return TarBz2, nil
	case "zip", "application/zip":
		return Zip, nil
	case "file", "plain", "application/octet-stream":
		return Plain, nil
	}
	return "", fmt.Errorf("unknown content_type %q: use one of tar, tar.gz, tar.zst, tar.xz, tar.bz2, zip, file (or their MIME types)", ct)
}
