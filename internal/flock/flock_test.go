package flock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The lock file is the agent's alone: created 0600 (an older 0644 one is
// tightened), and a link in its place is refused, not followed.
func TestLockFileIsPrivateAndNeverALink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lock")
	l := New(p)
	if ok, err := l.TryAcquire(); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	l.Release(t.Context())
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}

	old := filepath.Join(dir, "old-lock")
	os.WriteFile(old, nil, 0o644)
	os.Chmod(old, 0o644)
	l = New(old)
	if ok, err := l.TryAcquire(); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	l.Release(t.Context())
	if fi, _ := os.Stat(old); fi.Mode().Perm() != 0o600 {
		t.Fatalf("an existing 0644 lock file stays %v", fi.Mode().Perm())
	}

	target := filepath.Join(dir, "elsewhere")
	os.WriteFile(target, nil, 0o644)
	link := filepath.Join(dir, "linked-lock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	l = New(link)
	ok, err := l.TryAcquire()
	if ok || err == nil || !strings.Contains(err.Error(), "too many levels of symbolic links") {
		t.Fatalf("a lock file that is a link: acquired %v, error %v", ok, err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o644 {
		t.Fatalf("the link's target was changed to %v", fi.Mode().Perm())
	}
}
