// Package debtest builds the Debian package and exercises it for real:
// lintian, then install, upgrade, remove and purge in a throwaway Debian
// root (debootstrap, made by `make rig`) whose maintainer scripts run.
package debtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out))
	}
	return string(out)
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// build copies the tracked tree into a fresh directory, sets the version
// and runs dpkg-buildpackage; it returns the .deb.
func build(t *testing.T, work, version string) string {
	t.Helper()
	src := filepath.Join(work, "src-"+version)
	// The tracked tree (and new files not ignored), as a fresh checkout has it.
	os.MkdirAll(src, 0o755)
	list := run(t, "../../..", "git", "ls-files", "--cached", "--others", "--exclude-standard")
	var keep []string
	for _, f := range strings.Split(strings.TrimSpace(list), "\n") {
		if _, err := os.Lstat(filepath.Join("../../..", f)); f != "" && err == nil {
			keep = append(keep, f)
		}
	}
	tar := exec.Command("sh", "-c", "tar -cf - -T - | tar -xf - -C "+src)
	tar.Dir, tar.Stdin = "../../..", strings.NewReader(strings.Join(keep, "\n")+"\n")
	if out, err := tar.CombinedOutput(); err != nil {
		t.Fatalf("copy the tree: %v\n%s", err, out)
	}
	changelog := filepath.Join(src, "debian", "changelog")
	b, _ := os.ReadFile(changelog)
	b = regexp.MustCompile(`^dropship \([^)]*\)`).ReplaceAll(b, []byte("dropship ("+version+")"))
	os.WriteFile(changelog, b, 0o644)
	run(t, src, "dpkg-buildpackage", "-b", "-us", "-uc")
	debs, _ := filepath.Glob(filepath.Join(work, "dropship_"+version+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("no .deb for %s", version)
	}
	return debs[0]
}

func TestDebianPackage(t *testing.T) {
	for _, tool := range []string{"dpkg-buildpackage", "lintian", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.RequireServer(t, tool, err)
		}
	}
	home, _ := os.UserHomeDir()
	rootTar := filepath.Join(home, ".cache", "dropship-rig", "debian-root.tar")
	if d := os.Getenv("DROPSHIP_RIG_DIR"); d != "" {
		rootTar = filepath.Join(d, "debian-root.tar")
	}
	if _, err := os.Stat(rootTar); err != nil {
		testutil.RequireServer(t, "a debootstrap Debian root", err)
	}
	if os.Getuid() != 0 {
		testutil.RequireServer(t, "root (chroot, dpkg)", os.ErrPermission)
	}

	work := t.TempDir()
	deb1 := build(t, work, "0.1.0")
	deb2 := build(t, work, "0.1.1")

	// lintian: no errors (overrides carry their reasons in the package).
	if out, _ := exec.Command("lintian", "--allow-root", deb1).CombinedOutput(); strings.Contains(string(out), "\nE: ") || strings.HasPrefix(string(out), "E: ") {
		t.Fatalf("lintian errors:\n%s", out)
	}

	root := filepath.Join(work, "root")
	os.MkdirAll(root, 0o755)
	run(t, work, "tar", "-C", root, "-xf", rootTar)
	for _, d := range []string{deb1, deb2} {
		run(t, work, "cp", d, filepath.Join(root, "tmp"))
	}
	in := func(args ...string) string { return run(t, work, "chroot", append([]string{root}, args...)...) }
	mode := func(p string) string {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return fi.Mode().String()
	}

	// Install: files, modes, conffiles, the unit enabled, the binary runs.
	in("dpkg", "-i", "/tmp/"+filepath.Base(deb1))
	for p, want := range map[string]string{
		"usr/bin/dropship":                    "-rwxr-xr-x",
		"etc/dropship.d/dropship.hcl":         "-rw-------",
		"etc/dropship.d/services":             "drwxr-xr-x",
		"var/lib/dropship":                    "drwxr-xr-x",
		"lib/systemd/system/dropship.service": "-rw-r--r--",
	} {
		if got := mode(p); got != want {
			t.Errorf("%s: mode %s, want %s", p, got, want)
		}
	}
	if conf := in("dpkg-query", "-W", "-f=${Conffiles}", "dropship"); !strings.Contains(conf, "/etc/dropship.d/dropship.hcl") {
		t.Fatalf("conffiles: %q", conf)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/dropship.service")); err != nil {
		t.Errorf("unit not enabled: %v", err)
	}
	if v := in("dropship", "version"); strings.TrimSpace(v) != "dropship 0.1.0" {
		t.Fatalf("version %q", v)
	}
	if out := in("dropship", "validate"); !strings.Contains(out, "ok (0 services") {
		t.Fatalf("the packaged config does not validate: %s", out)
	}

	// Upgrade with a locally changed conffile: the change is kept.
	conf := filepath.Join(root, "etc/dropship.d/dropship.hcl")
	b, _ := os.ReadFile(conf)
	os.WriteFile(conf, append(b, []byte("\n# changed by the admin\n")...), 0o600)
	os.WriteFile(filepath.Join(root, "etc/dropship.d/services/api.hcl"), []byte("# a service\n"), 0o644)
	in("dpkg", "-i", "--force-confold", "/tmp/"+filepath.Base(deb2))
	if v := in("dropship", "version"); strings.TrimSpace(v) != "dropship 0.1.1" {
		t.Fatalf("after upgrade, version %q", v)
	}
	if b, _ := os.ReadFile(conf); !strings.Contains(string(b), "changed by the admin") {
		t.Fatal("the upgrade lost the changed conffile")
	}

	// Remove: the binary goes, configuration and state stay.
	os.WriteFile(filepath.Join(root, "var/lib/dropship/state-marker"), nil, 0o644)
	in("dpkg", "-r", "dropship")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/dropship")); err == nil {
		t.Fatal("binary still there after remove")
	}
	for _, p := range []string{"etc/dropship.d/dropship.hcl", "etc/dropship.d/services/api.hcl", "var/lib/dropship/state-marker"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("remove took %s: %v", p, err)
		}
	}

	// Purge: configuration and state go.
	in("dpkg", "-P", "dropship")
	for _, p := range []string{"etc/dropship.d", "var/lib/dropship"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("purge left %s", p)
		}
	}
}
