package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func minisignCLI(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("minisign")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("minisign CLI not installed (make rig installs it)")
		}
		t.Skip("minisign CLI not installed; run make rig")
	}
	return p
}

// Keys from `dropship keygen` work with the minisign CLI and back: a
// release signed by `minisign -S` (default trusted comment) verifies, and
// one signed by `dropship sign` verifies with `minisign -V`.
func TestSigningInteroperatesWithMinisign(t *testing.T) {
	t.Parallel()
	cli := minisignCLI(t)
	dir := t.TempDir()
	prefix := filepath.Join(dir, "keys", "ci")
	if out, errOut, code := run(t, "keygen", "--out", prefix, "--no-password"); code != 0 || !strings.Contains(out, "trusted_keys") {
		t.Fatalf("keygen: %d %s %s", code, out, errOut)
	}
	if fi, err := os.Stat(prefix + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret key mode: %v %v", fi, err)
	}
	if _, _, code := run(t, "keygen", "--out", prefix, "--no-password"); code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}
	art := filepath.Join(dir, "api.tar.gz")
	testutil.WriteFile(t, art, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "v1"}))

	// minisign signs, dropship verifies.
	cmd := exec.Command(cli, "-S", "-s", prefix+".key", "-m", art)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("minisign -S: %v\n%s", err, out)
	}
	out, errOut, code := run(t, "verify", art, "--key", prefix+".pub")
	if code != 0 || !strings.Contains(out, "ok, signed by key") || !strings.Contains(out, " at ") {
		t.Fatalf("verify of a minisign signature: %d %s %s", code, out, errOut)
	}

	// dropship signs, minisign verifies; the trusted comment names the service.
	os.Remove(art + ".minisig")
	if out, errOut, code := run(t, "sign", art, "--key", prefix+".key", "--service", "api", "--version", "42"); code != 0 {
		t.Fatalf("sign: %d %s %s", code, out, errOut)
	}
	cmd = exec.Command(cli, "-V", "-p", prefix+".pub", "-m", art)
	b, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), "dropship-release service=api version=42") {
		t.Fatalf("minisign -V: %v\n%s", err, b)
	}
	if _, errOut, code := run(t, "verify", art, "--key", prefix+".pub", "--service", "billing"); code != 1 || !strings.Contains(errOut, "another service") {
		t.Fatalf("verify for another service: %d %s", code, errOut)
	}
	// Bytes changed after signing: refused.
	os.WriteFile(art, []byte("tampered"), 0o644)
	if _, errOut, code := run(t, "verify", art, "--key", prefix+".pub"); code != 1 || !strings.Contains(errOut, "refused") {
		t.Fatalf("verify of tampered bytes: %d %s", code, errOut)
	}
}

// An encrypted key needs its passphrase, from the environment here.
func TestEncryptedSigningKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	prefix := filepath.Join(dir, "k")
	right := []string{passwordEnv + "=correct horse"}
	if _, errOut, code := runEnv(t, right, "keygen", "--out", prefix); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	art := filepath.Join(dir, "a.bin")
	os.WriteFile(art, []byte("payload"), 0o644)
	if _, errOut, code := runEnv(t, right, "sign", art, "--key", prefix+".key", "--service", "api"); code != 0 {
		t.Fatalf("sign with the right passphrase: %s", errOut)
	}
	if _, errOut, code := runEnv(t, []string{passwordEnv + "=wrong"}, "sign", art, "--key", prefix+".key", "--service", "api"); code == 0 || !strings.Contains(errOut, "passphrase") {
		t.Fatalf("sign with a wrong passphrase: %d %s", code, errOut)
	}
	if _, errOut, code := runEnv(t, []string{}, "sign", art, "--key", prefix+".key", "--service", "api"); code == 0 || !strings.Contains(errOut, passwordEnv) {
		t.Fatalf("sign with no passphrase and no terminal: %d %s", code, errOut)
	}
}

// A key others may read is refused when it has no passphrase, and
// warned about when it has one.
func TestSigningKeyOthersMayReadIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	art := filepath.Join(dir, "a.bin")
	os.WriteFile(art, []byte("payload"), 0o644)
	plain := filepath.Join(dir, "plain")
	if _, errOut, code := run(t, "keygen", "--out", plain, "--no-password"); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	if _, errOut, code := run(t, "sign", art, "--key", plain+".key", "--service", "api"); code != 0 || strings.Contains(errOut, "warning") {
		t.Fatalf("sign with a private key: %d %s", code, errOut)
	}
	os.Chmod(plain+".key", 0o644)
	if _, errOut, code := run(t, "sign", art, "--key", plain+".key", "--service", "api"); code == 0 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("sign with a readable key without passphrase: %d %s", code, errOut)
	}
	enc := filepath.Join(dir, "enc")
	right := []string{passwordEnv + "=correct horse"}
	if _, errOut, code := runEnv(t, right, "keygen", "--out", enc); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	os.Chmod(enc+".key", 0o640)
	if _, errOut, code := runEnv(t, right, "sign", art, "--key", enc+".key", "--service", "api"); code != 0 || !strings.Contains(errOut, "warning: signing key") {
		t.Fatalf("sign with a readable encrypted key: %d %s", code, errOut)
	}
}

// trusted_keys on a repo block apply to every service of that repo; a
// service's own replace them, and its revoked_keys add to the repo's.
func TestRepoTrustedKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, k := range []string{"ci", "other"} {
		if _, errOut, code := run(t, "keygen", "--out", filepath.Join(dir, k), "--no-password"); code != 0 {
			t.Fatal(errOut)
		}
	}
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(`state_path = "state"
repo "s3" {
  region       = "us-east-1"
  endpoint     = "http://127.0.0.1:9"
  access_key   = "x"
  secret_key   = "y"
  trusted_keys = ["ci.pub"]
}
service "api" {
  artifact "s3" {
    bucket      = "b"
    path        = "api.tar.gz"
    destination = "srv/api"
  }
}
service "web" {
  trusted_keys = ["other.pub"]
  artifact "s3" {
    bucket      = "b"
    path        = "web.tar.gz"
    destination = "srv/web"
  }
}
`), 0o600)
	art := filepath.Join(dir, "a.tar.gz")
	os.WriteFile(art, []byte("release"), 0o644)
	if _, errOut, code := run(t, "sign", art, "--key", filepath.Join(dir, "ci.key"), "--service", "api"); code != 0 {
		t.Fatal(errOut)
	}
	if out, errOut, code := run(t, "verify", "-c", cfg, "--service", "api", art); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("api inherits the repo's key: %d %s%s", code, out, errOut)
	}
	if _, errOut, code := run(t, "verify", "-c", cfg, "--service", "web", art); code != 1 || !strings.Contains(errOut, "not trusted") {
		t.Fatalf("web's own keys replace the repo's: %d %s", code, errOut)
	}
}

// The mode judged is that of the file whose bytes are read: a key path
// replaced while it is read (a rotated secret mount, a re-deployed file)
// never lets a key others may read through on the mode of another file.
func TestSigningKeyModeIsOfTheFileRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := &globals{stdout: io.Discard, stderr: io.Discard}
	readable, private := filepath.Join(dir, "readable.key"), filepath.Join(dir, "private.key")
	for p, mode := range map[string]os.FileMode{readable: 0o644, private: 0o600} {
		_, priv, err := minisign.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := priv.MarshalText()
		if err := writeFileMode(p, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(readable)
	var exposed minisign.PrivateKey
	if err := exposed.UnmarshalText(b); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "ci.key")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tmp := filepath.Join(dir, "ci.key.tmp")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			src := readable
			if i%2 == 1 {
				src = private
			}
			os.Remove(tmp)
			if err := os.Link(src, tmp); err == nil {
				os.Rename(tmp, key)
			}
		}
	}()
	defer func() { close(stop); <-done }()
	deadline := time.Now().Add(2 * time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		k, err := loadSecretKey(g, key)
		if err == nil && k.ID() == exposed.ID() {
			t.Fatalf("after %d reads: the key others may read was taken, on the mode of another file", n)
		}
	}
}
