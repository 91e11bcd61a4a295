package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A release published with --sign to MinIO, then the same with one file
// of nine changed: the real binary installs the second as a delta, the
// chunk index's signature verified, fetching a fraction of the archive;
// a release signed by an untrusted key is refused before its index is read.
func TestSignedDeltaEndToEndS3(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	_, bucket := minioBucket(t, "delta-releases")
	dir := t.TempDir()
	for _, k := range []string{"ci", "forger"} {
		if _, errOut, code := run(t, "keygen", "--out", filepath.Join(dir, k), "--no-password"); code != 0 {
			t.Fatal(errOut)
		}
	}
	cfg := filepath.Join(dir, "dropship.hcl")
	dest := filepath.Join(dir, "srv", "app")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
service "app" {
  trusted_keys = [%q]
  artifact "s3" {
    bucket      = %q
    path        = "app/app.tar"
    destination = %q
  }
}
`, filepath.Join(dir, "state"), minio.Endpoint, minio.AccessKey, minio.SecretKey, filepath.Join(dir, "ci.pub"), bucket, dest)), 0o600)
	// A plain tar: the test needs no compressor, and the chunks are the same.
	art := func(v string, changed byte) string {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		add := func(name string, data []byte) {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(1700000000, 0)})
			tw.Write(data)
		}
		add("VERSION", []byte(v))
		for i := range 8 {
			data := make([]byte, 1<<20)
			seed := [32]byte{byte(i)}
			if i == 5 {
				seed[1] = changed
			}
			rand.NewChaCha8(seed).Read(data)
			add(fmt.Sprintf("lib/part%d", i), data)
		}
		tw.Close()
		p := filepath.Join(dir, "app-"+v+".tar")
		os.WriteFile(p, b.Bytes(), 0o644)
		return p
	}
	publish := func(file, key string) string {
		t.Helper()
		out, errOut, code := run(t, "publish", file, "-c", cfg, "--to", "s3://"+bucket+"/app/app.tar", "--sign", filepath.Join(dir, key), "--service", "app")
		if code != 0 {
			t.Fatalf("publish: %d\n%s%s", code, out, errOut)
		}
		return out
	}
	once := func() string {
		t.Helper()
		_, errOut, code := run(t, "agent", "--once", "-c", cfg)
		if code != 0 {
			t.Fatalf("agent --once: exit %d\n%s", code, errOut)
		}
		return errOut
	}
	version := func() string {
		b, _ := os.ReadFile(filepath.Join(dest, "VERSION"))
		return string(b)
	}

	if out := publish(art("v1", 0), "ci.key"); !strings.Contains(out, "chunk index:") {
		t.Fatalf("publish wrote no chunk index:\n%s", out)
	}
	if log := once(); version() != "v1" || !strings.Contains(log, "chunk cache filled") {
		t.Fatalf("v1: %q\n%s", version(), log)
	}
	publish(art("v2", 1), "ci.key")
	log := once()
	m := regexp.MustCompile(`format=chunks .*fetched_bytes=(\d+) archive_bytes=(\d+)`).FindStringSubmatch(log)
	if version() != "v2" || m == nil || !strings.Contains(log, `of="chunk index"`) {
		t.Fatalf("v2 was not a signed delta: %q\n%s", version(), log)
	}
	if fetched, whole := must(strconv.Atoi(m[1])), must(strconv.Atoi(m[2])); fetched > whole/2 {
		t.Fatalf("the delta fetched %d bytes of %d", fetched, whole)
	}
	// A release signed by a key the service does not trust is refused
	// on its archive's signature, before its index or a chunk is read.
	publish(art("v3", 2), "forger.key")
	_, errOut, code := run(t, "agent", "--once", "-c", cfg)
	if code != 1 || version() != "v2" || !strings.Contains(errOut, "not trusted") || strings.Contains(errOut, "format=chunks") {
		t.Fatalf("forged v3: exit %d, %q\n%s", code, version(), errOut)
	}
}
