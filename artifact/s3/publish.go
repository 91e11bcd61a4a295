package s3

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dropshipd/dropship/artifact"
)

// DefaultPartSize: files larger than this are uploaded in parts.
const DefaultPartSize = 64 << 20

// MinPartSize is the smallest part S3 takes (but the last).
const MinPartSize = 5 << 20

// Publish uploads the file at path to bucket/key with its MD5 and SHA-256
// as metadata, so agents can verify it even when it is stored in parts
// (whose ETag is no MD5). Every request carries its body's MD5, which the
// store checks.
func Publish(ctx context.Context, c *Client, bucket, key, path string, partSize int64) (artifact.Info, error) {
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
	src := New(c, bucket, key)
	meta := map[string]string{artifact.MetaMD5: md5hex, artifact.MetaSHA256: shahex}
	if size <= partSize {
		sum, _ := hexToBase64(md5hex)
		if err := c.PutObject(ctx, bucket, key, f, size, sum, meta); err != nil {
			return artifact.Info{}, src.classify(ctx, "publish", err)
		}
	} else if err := putParts(ctx, c, bucket, key, f, size, partSize, meta); err != nil {
		return artifact.Info{}, src.classify(ctx, "publish", err)
	}
	// Read back what agents will see.
	info, err := src.Stat(ctx)
	if err != nil {
		return info, err
	}
	if info.MD5 != md5hex || info.Size != size {
		return info, fmt.Errorf("publish s3://%s/%s: the store reports md5 %s size %d, uploaded %s %d", bucket, key, info.MD5, info.Size, md5hex, size)
	}
	return info, nil
}

// putParts uploads f in parts of partSize, one after another, and drops
// the upload if a part fails: no half object ever becomes visible.
func putParts(ctx context.Context, c *Client, bucket, key string, f *os.File, size, partSize int64, meta map[string]string) (err error) {
	id, err := c.CreateMultipartUpload(ctx, bucket, key, meta)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.AbortMultipartUpload(context.WithoutCancel(ctx), bucket, key, id)
		}
	}()
	var parts []completedPart
	for n, off := 1, int64(0); off < size; n, off = n+1, off+partSize {
		part := io.NewSectionReader(f, off, min(partSize, size-off))
		h := md5.New()
		if _, err := io.Copy(h, part); err != nil {
			return err
		}
		etag, err := c.UploadPart(ctx, bucket, key, id, n, part, part.Size(), base64.StdEncoding.EncodeToString(h.Sum(nil)))
		if err != nil {
			return fmt.Errorf("part %d: %w", n, err)
		}
		parts = append(parts, completedPart{n, etag})
	}
	return c.CompleteMultipartUpload(ctx, bucket, key, id, parts)
}

func hexToBase64(h string) (string, error) {
	b, err := hex.DecodeString(h)
	return base64.StdEncoding.EncodeToString(b), err
}

// CreateBucket makes a bucket (tests and first-time setups).
func CreateBucket(ctx context.Context, c *Client, bucket string) error {
	return c.CreateBucket(ctx, bucket)
}
