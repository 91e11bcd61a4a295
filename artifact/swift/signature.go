package swift

import (
	"context"

	"github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact"
)

// Signature reads the object beside the artifact named like it plus
// ".minisig", as it is now: the agent checks it against the bytes it
// downloaded, so it needs no pin of its own.
func (s *Source) Signature(ctx context.Context) ([]byte, error) {
	sig := &Source{store: s.store, container: s.container, name: s.name + ".minisig"}
	var f *swift.ObjectOpenFile
	err := s.store.call(func() (err error) {
		f, _, err = s.store.conn.ObjectOpen(ctx, sig.container, sig.name, false, nil)
		return err
	})
	if err != nil {
		return nil, sig.classify("read signature", err)
	}
	defer f.Close()
	return artifact.ReadSignature(sig.String(), f)
}

var _ artifact.Signed = (*Source)(nil)
