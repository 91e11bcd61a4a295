package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ncw "github.com/ncw/swift/v2"

	"github.com/dropshipd/dropship/artifact/swift"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// signedE2E runs the real binary against a real store with trusted_keys:
// a release published with --sign installs; one signed by another key is
// refused and the installed release stays; a signature uploaded ahead of
// its artifact (as publish --sign does) changes nothing until the
// artifact follows, which then installs.
func signedE2E(t *testing.T, repoBlock, artifactBlock, to string) {
	dir := t.TempDir()
	for _, k := range []string{"ci", "forger"} {
		if _, errOut, code := run(t, "keygen", "--out", filepath.Join(dir, k), "--no-password"); code != 0 {
			t.Fatal(errOut)
		}
	}
	cfg := filepath.Join(dir, "dropship.hcl")
	dest := filepath.Join(dir, "srv", "app")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = "state"
%s
service "app" {
  trusted_keys = [%q]
  %s
  before "script" { command = "echo $DROPSHIP_CHECKSUM >> %s/before.log" }
}
`, repoBlock, filepath.Join(dir, "ci.pub"), fmt.Sprintf(artifactBlock, dest), dir)), 0o600)
	art := func(v string) string {
		p := filepath.Join(dir, "app-"+v+".tar.gz")
		os.WriteFile(p, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: v}), 0o644)
		return p
	}
	publish := func(args ...string) {
		t.Helper()
		out, errOut, code := run(t, append([]string{"publish", "-c", cfg}, args...)...)
		if code != 0 {
			t.Fatalf("publish %v: %d\n%s%s", args, code, out, errOut)
		}
	}
	once := func(wantCode int) string {
		t.Helper()
		_, errOut, code := run(t, "agent", "--once", "-c", cfg, "--log-level", "debug")
		if code != wantCode {
			t.Fatalf("agent --once: exit %d, want %d\n%s", code, wantCode, errOut)
		}
		return errOut
	}
	version := func() string {
		b, _ := os.ReadFile(filepath.Join(dest, "VERSION"))
		return string(b)
	}
	before := func() int {
		b, _ := os.ReadFile(filepath.Join(dir, "before.log"))
		return strings.Count(string(b), "\n")
	}

	publish(art("v1"), "--to", to, "--sign", filepath.Join(dir, "ci.key"), "--service", "app", "--version", "1")
	if log := once(0); version() != "v1" || !strings.Contains(log, "signature verified") {
		t.Fatalf("signed v1 not installed (%q)\n%s", version(), log)
	}
	publish(art("v2"), "--to", to, "--sign", filepath.Join(dir, "forger.key"), "--service", "app")
	if log := once(1); version() != "v1" || !strings.Contains(log, "not trusted") || before() != 1 {
		t.Fatalf("forged v2: current %q, before hooks %d\n%s", version(), before(), log)
	}
	// The signature of v3 goes up first (as publish --sign does it); until
	// its artifact follows, the agent sees v2 and its failure, nothing new.
	v3 := art("v3")
	if _, errOut, code := run(t, "sign", v3, "--key", filepath.Join(dir, "ci.key"), "--service", "app"); code != 0 {
		t.Fatal(errOut)
	}
	publish(v3+".minisig", "--to", to+".minisig")
	once(0)
	if version() != "v1" || before() != 1 {
		t.Fatalf("a signature alone changed something: %q, %d before hooks", version(), before())
	}
	publish(v3, "--to", to)
	if log := once(0); version() != "v3" || before() != 2 {
		t.Fatalf("v3 with its signature: %q\n%s", version(), log)
	}
	// No signature object at all (the store answers 404): refused.
	publish(art("v4"), "--to", to+"-unsigned")
	unsigned := strings.Replace(string(must(os.ReadFile(cfg))), "app.tar.gz", "app.tar.gz-unsigned", 1)
	os.WriteFile(cfg, []byte(unsigned), 0o600)
	if log := once(1); version() != "v3" || !strings.Contains(log, "no signature") || before() != 2 {
		t.Fatalf("unsigned v4: %q\n%s", version(), log)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestSignedEndToEndS3(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	_, b := minioBucket(t, "signed-releases")
	signedE2E(t, fmt.Sprintf(`repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}`, minio.Endpoint, minio.AccessKey, minio.SecretKey),
		`artifact "s3" {
    bucket      = "`+b+`"
    path        = "app/app.tar.gz"
    destination = %q
  }`, "s3://"+b+"/app/app.tar.gz")
}

func TestSignedEndToEndSwift(t *testing.T) {
	t.Parallel()
	swiftSrv := servers.Swift(t)
	st, err := swift.NewStore("swift", swift.Config{User: &swiftSrv.User, Key: &swiftSrv.Key, AuthURL: &swiftSrv.AuthURL})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Connection().ContainerCreate(context.Background(), "signed-releases", ncw.Headers{}); err != nil {
		t.Fatal(err)
	}
	signedE2E(t, fmt.Sprintf(`repo "swift" {
  user     = %q
  key      = %q
  auth_url = %q
}`, swiftSrv.User, swiftSrv.Key, swiftSrv.AuthURL),
		`artifact "swift" {
    container   = "signed-releases"
    path        = "app.tar.gz"
    destination = %q
  }`, "swift://signed-releases/app.tar.gz")
}
