package artifact

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// HashFile reads path once and returns its size, MD5 and SHA-256, the
// checksums `dropship publish` stores as metadata.
func HashFile(path string) (size int64, md5hex, sha256hex string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", "", err
	}
	defer f.Close()
	m, s := md5.New(), sha256.New()
	size, err = io.Copy(io.MultiWriter(m, s), f)
	if err != nil {
		return 0, "", "", fmt.Errorf("hash %s: %w", path, err)
	}
	return size, hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(s.Sum(nil)), nil
}
