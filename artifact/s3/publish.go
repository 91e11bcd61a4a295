package s3

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dropshipd/dropship/artifact"
)

// DefaultPartSize: files larger than this are uploaded in parts.
const DefaultPartSize = 64 << 20

// Publish uploads the file at path to bucket/key with its MD5 and SHA-256
// as metadata, so agents can verify it even when it is stored in parts
// (whose ETag is no MD5).
func Publish(ctx context.Context, c *Client, bucket, key, path string, partSize int64) (artifact.Info, error) {
	if partSize < manager.MinUploadPartSize {
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
	up := manager.NewUploader(c.Client, func(u *manager.Uploader) { u.PartSize = partSize })
	_, err = up.Upload(ctx, &s3.PutObjectInput{
		Bucket:   &bucket,
		Key:      &key,
		Body:     f,
		Metadata: map[string]string{artifact.MetaMD5: md5hex, artifact.MetaSHA256: shahex},
	})
	if err != nil {
		return artifact.Info{}, New(c, bucket, key).classify(ctx, "publish", err)
	}
	// Read back what agents will see.
	info, err := New(c, bucket, key).Stat(ctx)
	if err != nil {
		return info, err
	}
	if info.MD5 != md5hex || info.Size != size {
		return info, fmt.Errorf("publish s3://%s/%s: the store reports md5 %s size %d, uploaded %s %d", bucket, key, info.MD5, info.Size, md5hex, size)
	}
	return info, nil
}

// CreateBucket makes a bucket (tests and first-time setups).
func CreateBucket(ctx context.Context, c *Client, bucket string) error {
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	return err
}
