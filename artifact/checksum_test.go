package artifact

import (
	"errors"
	"strings"
	"testing"
)

func TestSetChecksums(t *testing.T) {
	const md5 = "5d41402abc4b2a76b9719d911017c592"
	const sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	for _, c := range []struct {
		name             string
		etag, mMD5, mSHA string
		large            bool
		md5, sha, from   string
	}{
		{"metadata wins", `"abc-3"`, md5, sha, true, md5, sha, "metadata"},
		{"metadata upper case", `"x"`, " 5D41402ABC4B2A76B9719D911017C592 ", "", false, md5, "", "metadata"},
		{"plain etag", `"5D41402ABC4B2A76B9719D911017C592"`, "", "", false, md5, "", "etag"},
		{"bad metadata falls back to the etag", `"` + md5 + `"`, md5[:31] + "g", sha[:63], false, md5, "", "etag"},
		{"large object etag is opaque", `"` + md5 + `"`, "", "", true, "", "", "opaque-etag"},
		{"multipart etag is opaque", `"` + md5 + `-4"`, "", "", false, "", "", "opaque-etag"},
		{"too long", `"` + md5 + `0"`, "", "", false, "", "", "opaque-etag"},
	} {
		var i Info
		if err := i.SetChecksums(c.etag, c.mMD5, c.mSHA, c.large); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if i.MD5 != c.md5 || i.SHA256 != c.sha || i.ChecksumFrom != c.from {
			t.Errorf("%s: md5 %q sha %q from %q", c.name, i.MD5, i.SHA256, i.ChecksumFrom)
		}
	}
}

func TestWeakETagIsRefused(t *testing.T) {
	var i Info
	err := i.SetChecksums(`W/"5d41402abc4b2a76b9719d911017c592"`, "", "", false)
	if !errors.Is(err, ErrRejected) || !Permanent(err) || !strings.Contains(err.Error(), "weak ETag") {
		t.Fatalf("a weak ETag: %v", err)
	}
	if i.MD5 != "" || i.ETag != "" {
		t.Fatalf("a weak ETag left md5 %q etag %q", i.MD5, i.ETag)
	}
}
