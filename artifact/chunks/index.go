// Package chunks makes and uses chunk indexes: the uncompressed tar of a
// release split into content-defined chunks (restic's chunker), each
// stored once, compressed, under a prefix of the bucket or container
// shared by every release and service, and content-addressed by its
// SHA-256. An agent reads the chunks its current release already holds
// back from that release's files and the skeleton of its tar (Skeleton,
// Backing), fetches only the others, and checks every chunk against its
// SHA-256 before any of it is unpacked.
package chunks

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/restic/chunker"

	"github.com/dropshipd/dropship/artifact"
)

// Where things live in a bucket or container.
const (
	// IndexSuffix is appended to the artifact's key to name its index.
	IndexSuffix = ".chunks"
	// Prefix is where the chunks of every release and service live.
	Prefix = ".dropship/chunks/"
)

// Key is the key of the chunk whose uncompressed content has SHA-256 sum.
func Key(sum string) string { return Prefix + sum }

// Chunking parameters. They are fixed: the same content always gives the
// same chunks, whoever publishes it.
const (
	// Pol is the chunker's irreducible polynomial of degree 53.
	Pol      = chunker.Pol(0x3DA3358B4DC173)
	MinChunk = chunker.MinSize // 512 KiB
	MaxChunk = chunker.MaxSize // 8 MiB; 1 MiB on average
	// MaxIndex bounds a signed index (its signature is checked before a
	// byte of it is parsed): 1 GiB of tar is about 1,000 chunks and
	// 110 KiB of index.
	MaxIndex = 64 << 20
	// MaxUnsignedIndex bounds an index read without a signature check
	// (a service without trusted_keys), which anyone who can write to the
	// bucket can put beside the archive: parsing costs about six times
	// its bytes. An entry takes about 110 bytes, so 4 MiB holds about
	// 38,000 chunks: 37 GiB of tar at the chunker's 1 MiB average (19 GiB
	// if every chunk were of the 512 KiB minimum), more than the largest
	// releases deploy agents are known to ship (25 GB).
	MaxUnsignedIndex = 4 << 20
	// entryBytes is what one chunk takes in an index, about.
	entryBytes = 110
	format     = 1
)

// Digest is the size and checksums of a stream.
type Digest struct {
	Size   int64  `json:"size"`
	MD5    string `json:"md5,omitempty"`
	SHA256 string `json:"sha256"`
}

// Chunk is one piece of the tar, in order.
type Chunk struct {
	SHA256 string `json:"sha256"` // of the uncompressed bytes: the chunk's name
	Size   int64  `json:"size"`   // uncompressed
	Stored int64  `json:"stored"` // compressed, as stored
}

// Index lists the chunks of one archive's tar.
type Index struct {
	Format int `json:"format"`
	// Archive is the published artifact this index was made from: an
	// agent uses the index only for that exact version.
	Archive Digest  `json:"archive"`
	Tar     Digest  `json:"tar"` // the uncompressed tar the chunks make
	Chunks  []Chunk `json:"chunks"`
}

// ErrNoIndex: there is no usable index for this artifact version; the
// archive is fetched instead.
var ErrNoIndex = errors.New("no chunk index for this version")

// ErrIndexTooLarge: the index is over the size an agent reads, signed
// (MaxIndex) or not (MaxUnsignedIndex). It wraps ErrNoIndex too.
var ErrIndexTooLarge = errors.New("chunk index too large")

// Parse reads and checks an index: well formed, every name a SHA-256,
// every size within the chunker's bounds, sizes adding up to the tar's.
func Parse(r io.Reader) (*Index, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxIndex+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxIndex {
		return nil, fmt.Errorf("%w: chunk index over %d bytes", artifact.ErrCorrupt, MaxIndex)
	}
	var idx Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%w: chunk index: %v", artifact.ErrCorrupt, err)
	}
	if idx.Format != format {
		return nil, fmt.Errorf("%w: chunk index format %d, this agent reads %d", ErrNoIndex, idx.Format, format)
	}
	if !hex64(idx.Tar.SHA256) || !hex64(idx.Archive.SHA256) {
		return nil, fmt.Errorf("%w: chunk index: the tar's or the archive's SHA-256 is missing", artifact.ErrCorrupt)
	}
	var sum int64
	for i, c := range idx.Chunks {
		if !hex64(c.SHA256) || c.Size <= 0 || c.Size > MaxChunk || c.Stored <= 0 || c.Stored > maxStored(c.Size) {
			return nil, fmt.Errorf("%w: chunk index: chunk %d (%.16s…, %d bytes, %d stored) out of bounds", artifact.ErrCorrupt, i, c.SHA256, c.Size, c.Stored)
		}
		sum += c.Size
	}
	if sum != idx.Tar.Size {
		return nil, fmt.Errorf("%w: chunk index: chunks add up to %d bytes, the tar has %d", artifact.ErrCorrupt, sum, idx.Tar.Size)
	}
	return &idx, nil
}

// maxStored is the most a compressed chunk of size bytes may take: zstd
// adds a few bytes per 128 KiB block to what does not compress.
func maxStored(size int64) int64 { return size + size/64 + 1024 }

// Fits reports whether the index was made from exactly the version pin
// describes: same size, and each checksum the store reports equal.
func (idx *Index) Fits(pin artifact.Info) bool {
	a := idx.Archive
	if pin.Size != a.Size || pin.MD5 == "" && pin.SHA256 == "" {
		return false
	}
	return (pin.MD5 == "" || pin.MD5 == a.MD5) && (pin.SHA256 == "" || pin.SHA256 == a.SHA256)
}

func hex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
