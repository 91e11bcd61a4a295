package artifact_test

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/dropshipd/dropship/artifact"
)

func TestVerifier(t *testing.T) {
	data := bytes.Repeat([]byte("release "), 1000)
	sum := md5.Sum(data)
	pin := artifact.Info{Key: "k", MD5: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	flipped := bytes.Clone(data)
	flipped[4000] ^= 1
	cases := []struct {
		name string
		body []byte
		ok   bool
	}{
		{"whole", data, true},
		{"truncated", data[:len(data)-1], false},
		{"longer", append(bytes.Clone(data), 'x'), false},
		{"flipped bit", flipped, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := artifact.NewVerifier(bytes.NewReader(c.body), pin)
			_, err := io.Copy(io.Discard, v)
			if c.ok != (err == nil) || c.ok != v.Verified() {
				t.Fatalf("err = %v, verified = %v", err, v.Verified())
			}
			if !c.ok && !errors.Is(err, artifact.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
		})
	}
}
