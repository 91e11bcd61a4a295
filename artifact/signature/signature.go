// Package signature checks that a release was published by someone who
// holds a trusted key: minisign signatures (the format of the minisign
// CLI) over the artifact's bytes, pre-hashed, with a trusted comment that
// names the service, the version, the publish time and the publisher.
package signature

import (
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
	// ErrStale: the signature names other bytes than those fetched: it
	// belongs to an earlier artifact and has not been replaced yet.
	ErrStale = fmt.Errorf("%w: the signature is for other bytes (not yet replaced?)", ErrRefused)
)

// Claims are what a trusted comment says; authentic once Verify passed.
type Claims struct {
	Service   string
	Version   string
	SHA256    string // hex, of the artifact's bytes
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
	for _, kv := range [][2]string{{"service", c.Service}, {"version", c.Version}, {"sha256", c.SHA256},
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
	SHA256  string    // computed over the bytes fetched
	After   time.Time // the installed release's signing time: older is a replay
	Now     time.Time // this host's time: a signature dated past it (and MaxSkew) is refused
}

// MaxSkew is how far ahead of a host's clock a signing time may be.
const MaxSkew = time.Hour

// Verify checks sig (the text of a .minisig) against the bytes r read,
// and its claims against want. It returns the authentic claims.
func (k *Keyring) Verify(sig []byte, r *minisign.Reader, want Expect) (Claims, error) {
	if len(sig) == 0 {
		return Claims{}, ErrUnsigned
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return Claims{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	keyID := fmt.Sprintf("%016X", s.KeyID)
	if s.Algorithm != minisign.HashEdDSA {
		// The stream is only ever hashed: the library would check a legacy
		// signature against the 64-byte digest as if it were the message.
		return Claims{}, fmt.Errorf("%w (key id %s; sign with `dropship sign`, or minisign without -l)", ErrLegacy, keyID)
	}
	if k.revoked[s.KeyID] {
		return Claims{}, fmt.Errorf("%w (key id %s is in revoked_keys)", ErrRevokedKey, keyID)
	}
	pk, ok := k.trusted[s.KeyID]
	if !ok {
		return Claims{}, fmt.Errorf("%w (key id %s; add its public key to trusted_keys if it is yours)", ErrUntrustedKey, keyID)
	}
	// The claims are read before they are authentic only to tell a stale
	// signature (other bytes) from a forged one; nothing is trusted yet.
	c := ParseComment(s.TrustedComment)
	if !r.Verify(pk, sig) {
		if c.SHA256 != "" && want.SHA256 != "" && c.SHA256 != want.SHA256 {
			return Claims{}, fmt.Errorf("%w (signature names sha256 %.12s…, the artifact is %.12s…)", ErrStale, c.SHA256, want.SHA256)
		}
		return Claims{}, fmt.Errorf("%w (key id %s)", ErrForged, keyID)
	}
	c.KeyID = s.KeyID
	switch {
	case c.Service != "" && want.Service != "" && c.Service != want.Service:
		return c, fmt.Errorf("%w (signed for %q, this is %q)", ErrOtherService, c.Service, want.Service)
	case c.Service == "" && want.Service != "" && strings.HasPrefix(s.TrustedComment, commentTag):
		// dropship's own signatures always name their service: one
		// that does not could be moved to any service trusting the key.
		return c, fmt.Errorf("%w (signed for no service; sign with --service %s)", ErrOtherService, want.Service)
	case c.SHA256 != "" && want.SHA256 != "" && c.SHA256 != want.SHA256:
		return c, fmt.Errorf("%w (the trusted comment names sha256 %s)", ErrForged, c.SHA256)
	case !want.Now.IsZero() && c.Time.After(want.Now.Add(MaxSkew)):
		return c, fmt.Errorf("%w (signed %s, this host's time is %s)", ErrFuture,
			c.Time.Format(time.RFC3339), want.Now.UTC().Format(time.RFC3339))
	case !want.After.IsZero() && c.Time.IsZero():
		return c, fmt.Errorf("%w (the signature carries no time, so it cannot be told apart from a replay; sign with `dropship publish --sign` or minisign's default trusted comment)", ErrReplay)
	case !want.After.IsZero() && c.Time.Before(want.After):
		return c, fmt.Errorf("%w (signed %s, the installed release was signed %s)", ErrReplay,
			c.Time.Format(time.RFC3339), want.After.Format(time.RFC3339))
	}
	return c, nil
}
