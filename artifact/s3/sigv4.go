package s3

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Signature Version 4, the request signing of S3 and STS:
// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html

const (
	sigAlgorithm = "AWS4-HMAC-SHA256"
	amzDate      = "20060102T150405Z"
	// emptySHA256 is the hex SHA-256 of no bytes: the payload hash of
	// HEAD, GET and DELETE.
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	// unsignedPayload lets a body be sent without hashing it first; its
	// integrity is then carried by Content-MD5.
	unsignedPayload = "UNSIGNED-PAYLOAD"
)

// unsignedHeaders are never signed: proxies and the transport may change
// them (the same set the AWS SDKs leave out).
var unsignedHeaders = map[string]bool{
	"authorization":     true,
	"user-agent":        true,
	"x-amzn-trace-id":   true,
	"expect":            true,
	"transfer-encoding": true,
}

// sign adds the SigV4 Authorization header (and X-Amz-Date,
// X-Amz-Content-Sha256, X-Amz-Security-Token) to req. Every header already
// on req is signed, besides the few above; so are Host and a non-zero
// Content-Length.
func sign(req *http.Request, c Credentials, region, service, payloadHash string, now time.Time) {
	now = now.UTC()
	stamp := now.Format(amzDate)
	day := stamp[:8]
	req.Header.Set("X-Amz-Date", stamp)
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	if c.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", c.SessionToken)
	}

	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	headers := map[string]string{"host": host}
	if req.ContentLength > 0 {
		headers["content-length"] = strconv.FormatInt(req.ContentLength, 10)
	}
	for k, vs := range req.Header {
		lk := strings.ToLower(k)
		if unsignedHeaders[lk] {
			continue
		}
		vals := make([]string, len(vs))
		for i, v := range vs {
			vals[i] = strings.Join(strings.Fields(v), " ")
		}
		headers[lk] = strings.Join(vals, ",")
	}
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	slices.Sort(names)
	var canon strings.Builder
	for _, k := range names {
		canon.WriteString(k)
		canon.WriteByte(':')
		canon.WriteString(headers[k])
		canon.WriteByte('\n')
	}
	signed := strings.Join(names, ";")

	creq := strings.Join([]string{
		req.Method,
		req.URL.EscapedPath(),
		canonicalQuery(req.URL.Query()),
		canon.String(),
		signed,
		payloadHash,
	}, "\n")
	scope := day + "/" + region + "/" + service + "/aws4_request"
	sum := sha256.Sum256([]byte(creq))
	toSign := sigAlgorithm + "\n" + stamp + "\n" + scope + "\n" + hex.EncodeToString(sum[:])

	sig := hex.EncodeToString(hmacSHA256(signingKey(c.SecretKey, day, region, service), toSign))

	req.Header.Set("Authorization", sigAlgorithm+" Credential="+c.AccessKey+"/"+scope+
		", SignedHeaders="+signed+", Signature="+sig)
}

// signingKeys keeps the derived keys: they change once a day, and every
// check would otherwise derive one again (four HMACs).
var signingKeys struct {
	sync.Mutex
	m map[[4]string][]byte
}

func signingKey(secret, day, region, service string) []byte {
	id := [4]string{secret, day, region, service}
	signingKeys.Lock()
	defer signingKeys.Unlock()
	if k, ok := signingKeys.m[id]; ok {
		return k
	}
	k := hmacSHA256([]byte("AWS4"+secret), day)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	k = hmacSHA256(k, "aws4_request")
	if len(signingKeys.m) >= 64 { // yesterday's keys, rotated secrets
		clear(signingKeys.m)
	}
	if signingKeys.m == nil {
		signingKeys.m = map[[4]string][]byte{}
	}
	signingKeys.m[id] = k
	return k
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}

// canonicalQuery sorts parameters by name, then value, each encoded.
func canonicalQuery(q url.Values) string {
	type kv struct{ k, v string }
	var all []kv
	for k, vs := range q {
		for _, v := range vs {
			all = append(all, kv{uriEncode(k, true), uriEncode(v, true)})
		}
	}
	slices.SortFunc(all, func(a, b kv) int {
		if c := strings.Compare(a.k, b.k); c != 0 {
			return c
		}
		return strings.Compare(a.v, b.v)
	})
	parts := make([]string, len(all))
	for i, e := range all {
		parts[i] = e.k + "=" + e.v
	}
	return strings.Join(parts, "&")
}

// uriEncode percent-encodes everything but the unreserved characters of
// RFC 3986 (and '/' unless encodeSlash), with upper-case hex.
func uriEncode(s string, encodeSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') ||
			c == '-' || c == '_' || c == '.' || c == '~' || (c == '/' && !encodeSlash) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// setPath puts an object path on u, encoded the way it is signed.
func setPath(u *url.URL, path string) {
	u.Path = path
	u.RawPath = uriEncode(path, false)
}
