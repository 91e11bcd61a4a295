// Package signature checks that a release was published by someone who
// holds a trusted key: minisign signatures (the format of the minisign
// CLI) over the artifact's bytes, pre-hashed, with a trusted comment that
// names the service, the version, the size and SHA-256 of the bytes, the
// publish time and the publisher.
//
// The check has two halves. Open authenticates the trusted comment alone
// (minisign signs it with the signature, a second Ed25519 signature), so
// its claims can be judged, and the object's size compared, before a
// byte of the artifact is read. Pending.Check then verifies the bytes.
package signature

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"
)

// Suffix is appended to the artifact's key to name its signature object.
const Suffix = ".minisig"

// Refusals. Each wraps ErrRefused.
var (
	ErrRefused      = errors.New("signature check refused the release")
	ErrUnsigned     = fmt.Errorf("%w: no signature", ErrRefused)
	ErrMalformed    = fmt.Errorf("%w: not a minisign signature", ErrRefused)
	ErrUntrustedKey = fmt.Errorf("%w: signed with a key that is not trusted", ErrRefused)
	ErrRevokedKey   = fmt.Errorf("%w: signed with a revoked key", ErrRefused)
	ErrForged       = fmt.Errorf("%w: the signature does not match the bytes", ErrRefused)
	ErrLegacy       = fmt.Errorf("%w: a legacy minisign signature (not pre-hashed)", ErrRefused)
	ErrOtherService = fmt.Errorf("%w: signed for another service", ErrRefused)
	ErrReplay       = fmt.Errorf("%w: older than the installed release (a replayed release?)", ErrRefused)
	// ErrFuture: installed, such a release would make every later one
	// look older than it, a replay.
	ErrFuture = fmt.Errorf("%w: signed in the future (the signing machine's clock?)", ErrRefused)
	// ErrStale: the signature's authenticated claims name other bytes
	// (another size or SHA-256) than the artifact's: it belongs to
	// another artifact and has not been replaced yet, or was put beside
	// bytes it does not vouch for.
	ErrStale = fmt.Errorf("%w: the signature is for other bytes (not yet replaced?)", ErrRefused)
)

// Claims are what a trusted comment says; authentic once Verify passed.
type Claims struct {
	Service   string
	Version   string
	SHA256    string // hex, of the artifact's bytes
	Size      int64  // of the artifact's bytes; 0 when the comment does not say
	Publisher string
	Time      time.Time // when it was signed
	KeyID     uint64
}

const commentTag = "dropship-release"

// Comment renders claims as the trusted comment `dropship publish --sign`
// writes: space-separated key=value pairs after a tag, values escaped
// with strconv.Quote when they need it.
func (c Claims) Comment() string {
	var b strings.Builder
	b.WriteString(commentTag)
	size := ""
	if c.Size > 0 {
		size = strconv.FormatInt(c.Size, 10)
	}
	for _, kv := range [][2]string{{"service", c.Service}, {"version", c.Version}, {"sha256", c.SHA256}, {"size", size},
		{"time", strconv.FormatInt(c.Time.Unix(), 10)}, {"publisher", c.Publisher}} {
		if kv[1] == "" {
			continue
		}
		v := kv[1]
		if strings.ContainsAny(v, " \t\"\\=") || !strconv.CanBackquote(v) {
			v = strconv.Quote(v)
		}
		b.WriteString(" " + kv[0] + "=" + v)
	}
	return b.String()
}

// ParseComment reads a trusted comment: dropship's own, or the minisign
// CLI's default ("timestamp:1700000000\tfile:api.tar.gz\thashed"), whose
// timestamp counts as the publish time. Other comments give no claims.
func ParseComment(tc string) Claims {
	var c Claims
	if rest, ok := strings.CutPrefix(tc, commentTag+" "); ok {
		for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
			k, v, ok := strings.Cut(rest, "=")
			if !ok {
				break
			}
			if strings.HasPrefix(v, `"`) {
				q, err := strconv.QuotedPrefix(v)
				if err != nil {
					break
				}
				rest = v[len(q):]
				v, _ = strconv.Unquote(q)
			} else {
				v, rest, _ = strings.Cut(v, " ")
			}
			switch k {
			case "service":
				c.Service = v
			case "version":
				c.Version = v
			case "sha256":
				c.SHA256 = strings.ToLower(v)
			case "size":
				if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
					c.Size = n
				}
			case "publisher":
				c.Publisher = v
			case "time":
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					c.Time = time.Unix(n, 0).UTC()
				}
			}
		}
		return c
	}
	for _, f := range strings.Split(tc, "\t") {
		if v, ok := strings.CutPrefix(f, "timestamp:"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				c.Time = time.Unix(n, 0).UTC()
			}
		}
	}
	return c
}

// Keyring is the keys a service trusts and those it refuses even where
// trusted (a leaked key being rotated out).
type Keyring struct {
	trusted map[uint64]minisign.PublicKey
	revoked map[uint64]bool
}

// Len is the number of trusted keys; 0 means signatures are not required.
func (k *Keyring) Len() int {
	if k == nil {
		return 0
	}
	return len(k.trusted)
}

// RevokedID says whether the key of hex id (as a release's record holds
// it, "%016X") is in revoked_keys.
func (k *Keyring) RevokedID(id string) bool {
	if k == nil {
		return false
	}
	n, err := strconv.ParseUint(id, 16, 64)
	return err == nil && k.revoked[n]
}

// ParseKey reads one key: the base64 of a minisign public key ("RWQ…"),
// or the path of a .pub file (relative to baseDir).
func ParseKey(v, baseDir string) (minisign.PublicKey, error) {
	var pk minisign.PublicKey
	v = strings.TrimSpace(v)
	if err := pk.UnmarshalText([]byte(v)); err == nil {
		return pk, nil
	}
	p := v
	if !filepath.IsAbs(p) {
		p = filepath.Join(baseDir, p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return pk, fmt.Errorf("%q is neither a minisign public key (RW…) nor a readable key file: %w", v, err)
	}
	if err := pk.UnmarshalText(b); err != nil {
		return pk, fmt.Errorf("key file %s: %w", p, err)
	}
	return pk, nil
}

// NewKeyring builds a keyring from parsed keys.
func NewKeyring(trusted, revoked []minisign.PublicKey) *Keyring {
	k := &Keyring{trusted: map[uint64]minisign.PublicKey{}, revoked: map[uint64]bool{}}
	for _, pk := range trusted {
		k.trusted[pk.ID()] = pk
	}
	for _, pk := range revoked {
		k.revoked[pk.ID()] = true
	}
	return k
}

// Expect is what the release being installed must match.
type Expect struct {
	Service string
	SHA256  string // computed over the bytes fetched (Verify only)
	Size    int64  // of the bytes fetched (Verify only); 0 unknown
	// After is the newest signing time of a release ever installed: one
	// signed earlier is a replay. AfterSHA256 is that release's digest:
	// signed at the same second, only it is (the same signature put back
	// after a rollback); Current is the installed release's digest, which
	// may always be installed again.
	After       time.Time
	AfterSHA256 string
	Current     string
	Now         time.Time // this host's time: a signature dated past it (and MaxSkew) is refused
}

// MaxSkew is how far ahead of a host's clock a signing time may be.
const MaxSkew = time.Hour

// Pending is a signature whose trusted comment is authentic, its claims
// accepted, and whose bytes are still to be checked.
type Pending struct {
	Claims Claims
	sig    []byte
	pk     minisign.PublicKey
}

// Open reads sig (the text of a .minisig), checks that a trusted key that
// is not revoked made it, authenticates its trusted comment, and judges
// the claims against want: all before the artifact is read. The bytes
// are checked by Pending.Check.
func (k *Keyring) Open(sig []byte, want Expect) (*Pending, error) {
	if len(sig) == 0 {
		return nil, ErrUnsigned
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	keyID := fmt.Sprintf("%016X", s.KeyID)
	if s.Algorithm != minisign.HashEdDSA {
		// The stream is only ever hashed: the library would check a legacy
		// signature against the 64-byte digest as if it were the message.
		return nil, fmt.Errorf("%w (key id %s; sign with `dropship sign`, or minisign without -l)", ErrLegacy, keyID)
	}
	if k.revoked[s.KeyID] {
		return nil, fmt.Errorf("%w (key id %s is in revoked_keys)", ErrRevokedKey, keyID)
	}
	pk, ok := k.trusted[s.KeyID]
	if !ok {
		return nil, fmt.Errorf("%w (key id %s; add its public key to trusted_keys if it is yours)", ErrUntrustedKey, keyID)
	}
	// minisign's global signature covers the signature and the trusted
	// comment: checked alone, it makes the comment authentic.
	raw, err := base64.StdEncoding.DecodeString(pk.String())
	if err != nil || len(raw) != 10+ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w (key id %s: unreadable public key)", ErrMalformed, keyID)
	}
	global := append(append([]byte(nil), s.Signature[:]...), s.TrustedComment...)
	if !ed25519.Verify(ed25519.PublicKey(raw[10:]), global, s.CommentSignature[:]) {
		return nil, fmt.Errorf("%w (key id %s: the trusted comment is not signed by it)", ErrForged, keyID)
	}
	c := ParseComment(s.TrustedComment)
	c.KeyID = s.KeyID
	if err := c.judge(want, strings.HasPrefix(s.TrustedComment, commentTag)); err != nil {
		return nil, err
	}
	return &Pending{Claims: c, sig: sig, pk: pk}, nil
}

// judge checks authentic claims against want.
func (c Claims) judge(want Expect, ours bool) error {
	switch {
	case c.Service != "" && want.Service != "" && c.Service != want.Service:
		return fmt.Errorf("%w (signed for %q, this is %q)", ErrOtherService, c.Service, want.Service)
	case c.Service == "" && want.Service != "" && ours:
		// dropship's own signatures always name their service: one
		// that does not could be moved to any service trusting the key.
		return fmt.Errorf("%w (signed for no service; sign with --service %s)", ErrOtherService, want.Service)
	case !want.Now.IsZero() && c.Time.After(want.Now.Add(MaxSkew)):
		return fmt.Errorf("%w (signed %s, this host's time is %s)", ErrFuture,
			c.Time.Format(time.RFC3339), want.Now.UTC().Format(time.RFC3339))
	case !want.After.IsZero() && c.Time.IsZero():
		return fmt.Errorf("%w (the signature carries no time, so it cannot be told apart from a replay; sign with `dropship publish --sign` or minisign's default trusted comment)", ErrReplay)
	case !want.After.IsZero() && c.Time.Before(want.After):
		return fmt.Errorf("%w (signed %s, a release signed %s was installed here)", ErrReplay,
			c.Time.Format(time.RFC3339), want.After.Format(time.RFC3339))
	case !want.After.IsZero() && c.Time.Equal(want.After) && want.AfterSHA256 != "" &&
		(c.SHA256 == "" || c.SHA256 == want.AfterSHA256) && (c.SHA256 == "" || c.SHA256 != want.Current):
		// The newest release installed, signed again at the same second
		// or put back after a rollback from it: a replay, unless it is
		// what runs now (installed again).
		return fmt.Errorf("%w (the release signed %s was installed here and rolled back from)", ErrReplay,
			c.Time.Format(time.RFC3339))
	}
	return nil
}

// Check verifies the bytes r read (whose SHA-256 and size, computed over
// them, are given) against the signature. A signature that names other
// bytes is ErrStale; one the bytes do not match otherwise, ErrForged.
func (p *Pending) Check(r *minisign.Reader, sha256 string, size int64) error {
	c := p.Claims
	switch {
	case c.Size > 0 && size > 0 && size != c.Size:
		return fmt.Errorf("%w (the signature vouches for %d bytes, %d were read)", ErrStale, c.Size, size)
	case c.SHA256 != "" && sha256 != "" && sha256 != c.SHA256:
		return fmt.Errorf("%w (the signature vouches for sha256 %.12s…, the bytes are %.12s…)", ErrStale, c.SHA256, sha256)
	case !r.Verify(p.pk, p.sig):
		return fmt.Errorf("%w (key id %016X)", ErrForged, c.KeyID)
	}
	return nil
}

// Verify checks sig against the bytes r read, and its claims against
// want, in one step (`dropship verify`). It returns the authentic claims.
func (k *Keyring) Verify(sig []byte, r *minisign.Reader, want Expect) (Claims, error) {
	p, err := k.Open(sig, want)
	if err != nil {
		return Claims{}, err
	}
	if err := p.Check(r, want.SHA256, want.Size); err != nil {
		return p.Claims, err
	}
	return p.Claims, nil
}
