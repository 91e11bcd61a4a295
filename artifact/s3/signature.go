package s3

import (
	"context"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dropshipd/dropship/artifact"
)

// Signature reads the object beside the artifact named like it plus
// ".minisig", as it is now: the agent checks it against the bytes it
// downloaded, so it needs no pin of its own.
func (s *Source) Signature(ctx context.Context) ([]byte, error) {
	sig := &Source{store: s.store, bucket: s.bucket, key: s.key + ".minisig"}
	o, err := inRegion(ctx, s.store, s.bucket, func(ctx context.Context, opt func(*awss3.Options)) (*awss3.GetObjectOutput, error) {
		return s.store.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &sig.bucket, Key: &sig.key}, opt)
	})
	if err != nil {
		return nil, sig.classify(ctx, "read signature", err)
	}
	defer o.Body.Close()
	return artifact.ReadSignature(sig.String(), o.Body)
}

var _ artifact.Signed = (*Source)(nil)
