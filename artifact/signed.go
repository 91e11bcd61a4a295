package artifact

import (
	"context"
	"fmt"
	"io"
)

// Signed is a Source whose artifact may have a detached signature beside
// it: an object named like the artifact plus ".minisig".
type Signed interface {
	// Signature returns the bytes of the signature object as the store
	// holds it now, or an error wrapping ErrNotFound when there is none.
	Signature(ctx context.Context) ([]byte, error)
}

// MaxSignatureSize bounds a signature object: a minisign signature is a
// few hundred bytes; anything much larger is not one.
const MaxSignatureSize = 8 << 10

// ReadSignature reads a signature body, refusing one over the bound.
func ReadSignature(name string, r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSignatureSize+1))
	if err != nil {
		return nil, fmt.Errorf("read signature %s: %w", name, err)
	}
	if len(b) > MaxSignatureSize {
		return nil, fmt.Errorf("signature %s: more than %d bytes: %w", name, MaxSignatureSize, ErrCorrupt)
	}
	return b, nil
}
