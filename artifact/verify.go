package artifact

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

// Verifier hashes what passes through it and, at the end of the stream,
// compares size, MD5 and SHA-256 with what was pinned. A stream that ends
// early or differs by one bit returns an error wrapping ErrCorrupt instead
// of io.EOF, so nothing downstream can take it for a complete artifact.
type Verifier struct {
	r      io.Reader
	pin    Info
	md5    hash.Hash
	sha    hash.Hash
	n      int64
	done   bool
	result error
}

// NewVerifier wraps r, which is expected to carry exactly pin's content.
func NewVerifier(r io.Reader, pin Info) *Verifier {
	return &Verifier{r: r, pin: pin, md5: md5.New(), sha: sha256.New()}
}

func (v *Verifier) Read(p []byte) (int, error) {
	if v.done {
		if v.result != nil {
			return 0, v.result
		}
		return 0, io.EOF
	}
	n, err := v.r.Read(p)
	if n > 0 {
		v.md5.Write(p[:n])
		v.sha.Write(p[:n])
		v.n += int64(n)
		if v.pin.Size > 0 && v.n > v.pin.Size {
			v.done = true
			v.result = fmt.Errorf("%w: %s: more than the %d bytes expected", ErrCorrupt, v.pin.Key, v.pin.Size)
			return n, v.result
		}
	}
	if err == io.EOF {
		v.done = true
		v.result = v.check()
		if v.result != nil {
			return n, v.result
		}
	}
	return n, err
}

func (v *Verifier) check() error {
	if v.pin.Size >= 0 && v.n != v.pin.Size {
		return fmt.Errorf("%w: %s: got %d bytes, expected %d", ErrCorrupt, v.pin.Key, v.n, v.pin.Size)
	}
	if got := v.MD5(); v.pin.MD5 != "" && got != v.pin.MD5 {
		return fmt.Errorf("%w: %s: MD5 is %s, expected %s", ErrCorrupt, v.pin.Key, got, v.pin.MD5)
	}
	if got := v.SHA256(); v.pin.SHA256 != "" && got != v.pin.SHA256 {
		return fmt.Errorf("%w: %s: SHA-256 is %s, expected %s", ErrCorrupt, v.pin.Key, got, v.pin.SHA256)
	}
	return nil
}

// Verified reports whether the whole stream was read and matched.
func (v *Verifier) Verified() bool { return v.done && v.result == nil }

// Drain reads what is left (an unpacker may stop before the end of the
// stream: tar padding, gzip trailer) and returns the verdict.
func (v *Verifier) Drain() error {
	if !v.done {
		if _, err := io.Copy(io.Discard, v); err != nil {
			return err
		}
	}
	return v.result
}

// MD5 and SHA256 return the hex digests of what has been read so far.
func (v *Verifier) MD5() string    { return hex.EncodeToString(v.md5.Sum(nil)) }
func (v *Verifier) SHA256() string { return hex.EncodeToString(v.sha.Sum(nil)) }
func (v *Verifier) Size() int64    { return v.n }
