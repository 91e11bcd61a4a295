package signature_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"golang.org/x/crypto/blake2b"

	"github.com/dropshipd/dropship/artifact/signature"
)

func key(t *testing.T) (minisign.PublicKey, minisign.PrivateKey) {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func sign(priv minisign.PrivateKey, body []byte, c signature.Claims) []byte {
	r := minisign.NewReader(bytes.NewReader(body))
	io.Copy(io.Discard, r)
	return r.SignWithComments(priv, c.Comment(), "signed by dropship")
}

func read(body []byte) *minisign.Reader {
	r := minisign.NewReader(bytes.NewReader(body))
	io.Copy(io.Discard, r)
	return r
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestVerify(t *testing.T) {
	t.Parallel()
	pub, priv := key(t)
	otherPub, otherPriv := key(t)
	body := []byte("release v2")
	old := []byte("release v1")
	now := time.Now().UTC().Truncate(time.Second)
	claims := signature.Claims{Service: "api", Version: "v2", SHA256: sum(body), Publisher: "ci@build", Time: now}
	good := sign(priv, body, claims)
	ring := signature.NewKeyring([]minisign.PublicKey{pub}, nil)
	want := signature.Expect{Service: "api", SHA256: sum(body), After: now.Add(-time.Hour)}

	c, err := ring.Verify(good, read(body), want)
	if err != nil || c.Service != "api" || c.Version != "v2" || c.Publisher != "ci@build" || !c.Time.Equal(now) || c.KeyID != pub.ID() {
		t.Fatalf("good signature: %+v %v", c, err)
	}

	flipped := bytes.Clone(good)
	i := bytes.LastIndexByte(flipped[:len(flipped)-2], '\n') + 5
	flipped[i] ^= 1
	oldClaims := claims
	sized := claims
	sized.Size = int64(len(body))
	oldClaims.SHA256, oldClaims.Time = sum(old), now.Add(-2*time.Hour)
	for _, tc := range []struct {
		name string
		ring *signature.Keyring
		sig  []byte
		body []byte
		want signature.Expect
		err  error
	}{
		{"unsigned", ring, nil, body, want, signature.ErrUnsigned},
		{"garbage", ring, []byte("not a signature\n"), body, want, signature.ErrMalformed},
		{"corrupted signature", ring, flipped, body, want, signature.ErrRefused},
		{"other bytes, same claims", ring, good, []byte("release v2 with a backdoor"), signature.Expect{Service: "api"}, signature.ErrForged},
		{"key not trusted", ring, sign(otherPriv, body, claims), body, want, signature.ErrUntrustedKey},
		{"revoked", signature.NewKeyring([]minisign.PublicKey{pub, otherPub}, []minisign.PublicKey{pub}), good, body, want, signature.ErrRevokedKey},
		{"other service", ring, sign(priv, body, signature.Claims{Service: "billing", SHA256: sum(body), Time: now}), body, want, signature.ErrOtherService},
		{"no service: could be moved to any", ring, sign(priv, body, signature.Claims{SHA256: sum(body), Time: now}), body, want, signature.ErrOtherService},
		{"replayed old release", ring, sign(priv, old, oldClaims), old, signature.Expect{Service: "api", SHA256: sum(old), After: now.Add(-time.Hour)}, signature.ErrReplay},
		{"stale signature beside new bytes", ring, sign(priv, old, oldClaims), body, signature.Expect{Service: "api", SHA256: sum(body)}, signature.ErrStale},
		{"signed size differs", ring, sign(priv, body, sized), body, signature.Expect{Service: "api", SHA256: sum(body), Size: int64(len(body)) + 1}, signature.ErrStale},
		{"the newest release installed, put back after a rollback", ring, good, body,
			signature.Expect{Service: "api", SHA256: sum(body), After: now, AfterSHA256: sum(body), Current: sum(old)}, signature.ErrReplay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.ring.Verify(tc.sig, read(tc.body), tc.want)
			if !errors.Is(err, tc.err) || !errors.Is(err, signature.ErrRefused) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
		})
	}

	// The release that runs may be installed again (its directory removed
	// by hand); the newest one, put back, only then.
	if _, err := ring.Verify(good, read(body), signature.Expect{Service: "api", SHA256: sum(body), After: now, AfterSHA256: sum(body), Current: sum(body)}); err != nil {
		t.Fatalf("the current release again: %v", err)
	}

	// Rotation: either of two trusted keys verifies.
	both := signature.NewKeyring([]minisign.PublicKey{pub, otherPub}, nil)
	if _, err := both.Verify(sign(otherPriv, body, claims), read(body), want); err != nil {
		t.Fatalf("second trusted key: %v", err)
	}
}

func TestParseComment(t *testing.T) {
	t.Parallel()
	c := signature.ParseComment("timestamp:1700000000\tfile:api.tar.gz\thashed")
	if !c.Time.Equal(time.Unix(1700000000, 0)) || c.Service != "" {
		t.Fatalf("minisign default comment: %+v", c)
	}
	in := signature.Claims{Service: "api", Version: "build 42 \"rc\"", Publisher: `a b\c`, Time: time.Unix(1800000000, 0).UTC(), SHA256: strings.Repeat("ab", 32), Size: 1 << 33}
	if got := signature.ParseComment(in.Comment()); got != in {
		t.Fatalf("round trip:\n%+v\n%+v\n%s", got, in, in.Comment())
	}
}

// The trusted comment is signed too: editing it (another service, a
// later time to pass the replay rule) breaks the signature.
func TestTrustedCommentIsAuthenticated(t *testing.T) {
	t.Parallel()
	pub, priv := key(t)
	body := []byte("release")
	now := time.Now().UTC().Truncate(time.Second)
	sig := sign(priv, body, signature.Claims{Service: "api", SHA256: sum(body), Time: now})
	ring := signature.NewKeyring([]minisign.PublicKey{pub}, nil)
	for _, edit := range [][2]string{
		{"service=api", "service=web"},
		{fmt.Sprintf("time=%d", now.Unix()), fmt.Sprintf("time=%d", now.Add(time.Hour).Unix())},
	} {
		forged := bytes.Replace(sig, []byte(edit[0]), []byte(edit[1]), 1)
		if bytes.Equal(forged, sig) {
			t.Fatalf("%q not in the signature", edit[0])
		}
		_, err := ring.Verify(forged, read(body), signature.Expect{Service: "web", SHA256: sum(body)})
		if !errors.Is(err, signature.ErrForged) {
			t.Fatalf("edited comment (%s): err = %v", edit[1], err)
		}
	}
}

// A legacy signature (Ed25519 over the message itself, not its BLAKE2b
// digest) is refused as such: the agent only ever hashes the stream, so
// a legacy signature over the 64 bytes of that digest must not pass for
// a signature of the artifact, and one over the artifact must not be
// called a forgery.
func TestLegacySignatureRefused(t *testing.T) {
	t.Parallel()
	pub, priv := key(t)
	body := []byte("release v2")
	ring := signature.NewKeyring([]minisign.PublicKey{pub}, nil)
	c := signature.Claims{Service: "api", SHA256: sum(body), Time: time.Now()}
	digest := blake2b.Sum512(body)
	for name, sig := range map[string][]byte{
		"over the digest":   minisign.SignWithComments(priv, digest[:], c.Comment(), "legacy"),
		"over the artifact": minisign.SignWithComments(priv, body, c.Comment(), "legacy"),
	} {
		_, err := ring.Verify(sig, read(body), signature.Expect{Service: "api", SHA256: sum(body)})
		if !errors.Is(err, signature.ErrLegacy) {
			t.Errorf("legacy signature %s: %v, want ErrLegacy", name, err)
		}
	}
}

// The trusted comment is authenticated before a byte of the artifact is
// read: Open accepts a good signature, refuses an edited comment, and
// gives the size and SHA-256 it vouches for to compare with the object.
func TestOpenAuthenticatesTheCommentAlone(t *testing.T) {
	pub, priv := key(t)
	body := []byte("release v3")
	now := time.Now().UTC().Truncate(time.Second)
	sig := sign(priv, body, signature.Claims{Service: "api", SHA256: sum(body), Size: int64(len(body)), Time: now})
	ring := signature.NewKeyring([]minisign.PublicKey{pub}, nil)
	p, err := ring.Open(sig, signature.Expect{Service: "api", Now: now})
	if err != nil || p.Claims.Size != int64(len(body)) || p.Claims.SHA256 != sum(body) {
		t.Fatalf("open: %+v %v", p, err)
	}
	forged := bytes.Replace(sig, []byte(fmt.Sprintf("size=%d", len(body))), []byte(fmt.Sprintf("size=%d", len(body)+1)), 1)
	if _, err := ring.Open(forged, signature.Expect{Service: "api"}); !errors.Is(err, signature.ErrForged) {
		t.Fatalf("an edited size: %v", err)
	}
	if err := p.Check(read(body), sum(body), int64(len(body))); err != nil {
		t.Fatalf("the bytes: %v", err)
	}
}
