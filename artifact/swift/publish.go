package swift

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact"
)

// DefaultSegmentSize: files larger than this are stored as a Static Large
// Object of segments this size.
const DefaultSegmentSize = 64 << 20

// Publish uploads the file at path to container/name with its MD5 and
// SHA-256 as metadata (X-Object-Meta-Md5, -Sha256), as one object or, when
// larger than segmentSize, as a Static Large Object.
func (st *Store) Publish(ctx context.Context, container, name, path string, segmentSize int64) (artifact.Info, error) {
	c := st.conn
	if segmentSize <= 0 {
		segmentSize = DefaultSegmentSize
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
	name = strings.TrimPrefix(name, "/")
	src := &Source{store: st, container: container, name: name}
	h := swift.Headers{"X-Object-Meta-" + artifact.MetaMD5: md5hex, "X-Object-Meta-" + artifact.MetaSHA256: shahex}
	if size <= segmentSize {
		_, err = c.ObjectPut(ctx, container, name, f, true, md5hex, "", h)
	} else {
		var w swift.LargeObjectFile
		segments := container + "_segments"
		if err = c.ContainerCreate(ctx, segments, nil); err != nil {
			return artifact.Info{}, fmt.Errorf("publish %s: create segment container %s: %w", src, segments, err)
		}
		w, err = c.StaticLargeObjectCreate(ctx, &swift.LargeObjectOpts{
			Container: container, ObjectName: name, Headers: h, ChunkSize: segmentSize, CheckHash: true,
			SegmentContainer: segments,
		})
		if err == nil {
			if _, err = io.Copy(w, f); err == nil {
				err = w.CloseWithContext(ctx)
			}
		}
	}
	if err != nil {
		return artifact.Info{}, src.classify("publish", err)
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
