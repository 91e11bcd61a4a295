package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/dropshipd/dropship/artifact"
)

// Signature reads the signature beside the artifact (path + ".minisig").
func (s *Source) Signature(ctx context.Context) ([]byte, error) {
	name := s.path + ".minisig"
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", "file://"+name, artifact.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", "file://"+name, err)
	}
	defer f.Close()
	return artifact.ReadSignature("file://"+name, f)
}

var _ artifact.Signed = (*Source)(nil)
