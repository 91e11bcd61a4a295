package s3

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/dropshipd/dropship/artifact"
)

// DefaultPartSize: files larger than this are uploaded in parts.
const DefaultPartSize = 64 << 20

// MinPartSize is the smallest part S3 takes (but the last).
const MinPartSize = manager.MinUploadPartSize

// Publish uploads the file at path to bucket/key with its MD5 and SHA-256
// as metadata, so agents can verify it even when it is stored in parts
// (whose ETag is no MD5). The SDK's upload manager sends it in one PUT or
// in parts of partSize; each request carries a checksum the store checks,
// and a failed multipart upload is aborted, so no half object is ever
// visible. Then it reads back what agents will see.
func (s *Store) Publish(ctx context.Context, bucket, key, path string, partSize int64) (artifact.Info, error) {
	if partSize < MinPartSize {
		partSize = DefaultPartSize
	}
	size, md5hex, shahex, err := artifact.HashFile(path)
	if err != nil {
		return artifact.Info{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return artifact.Info{}, err
	}
	defer f.Close()
	key = strings.TrimPrefix(key, "/")
	src := &Source{store: s, bucket: bucket, key: key}
	up := manager.NewUploader(s.client, func(u *manager.Uploader) { u.PartSize = partSize })
	_, err = up.Upload(ctx, &awss3.PutObjectInput{
		Bucket:      &bucket,
		Key:         &key,
		Body:        f,
		ContentType: aws.String("application/octet-stream"),
		Metadata:    map[string]string{artifact.MetaMD5: md5hex, artifact.MetaSHA256: shahex},
	}, func(u *manager.Uploader) {
		u.ClientOptions = append(u.ClientOptions, func(o *awss3.Options) { o.Region = s.regionOf(bucket) })
	})
	if err != nil {
		return artifact.Info{}, src.classify(ctx, "publish", err)
	}
	info, err := src.Stat(ctx)
	if err != nil {
		return info, err
	}
	if info.MD5 != md5hex || info.Size != size {
		return info, fmt.Errorf("publish %s: the store reports md5 %s size %d, uploaded %s %d", src, info.MD5, info.Size, md5hex, size)
	}
	return info, nil
}

// CreateBucket makes a bucket in the store's region (tests and first-time
// setups).
func (s *Store) CreateBucket(ctx context.Context, bucket string) error {
	in := &awss3.CreateBucketInput{Bucket: &bucket}
	if s.region != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{LocationConstraint: types.BucketLocationConstraint(s.region)}
	}
	if _, err := s.client.CreateBucket(ctx, in); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	return nil
}
