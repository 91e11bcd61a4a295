package archive_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
)

// allow_symlinks_to lets links leave the release into listed directories
// only, judged component by component and as the kernel will resolve
// them; nothing is ever written through such a link.
func TestSymlinksOutOfTheRelease(t *testing.T) {
	t.Parallel()
	final := "/var/lib/dropship/app/releases/R1"
	allow := []string{"/var/log/app", "/var/lib/dropship/app/shared"}
	for _, tc := range []struct {
		name    string
		entries []entry
		allow   []string
		want    string // "" : accepted
	}{
		{"absolute, allowed", []entry{symlink("log", "/var/log/app")}, allow, ""},
		{"below an allowed one", []entry{symlink("conf", "/var/log/app/sub/x.conf")}, allow, ""},
		{"relative into shared", []entry{symlink("uploads", "../../shared/uploads")}, allow, ""},
		{"anywhere with /", []entry{symlink("lib/libz.so", "/lib/x86_64-linux-gnu/libz.so.1")}, []string{"/"}, ""},
		{"default: refused, with the key to set", []entry{symlink("log", "/var/log/app")}, nil, `allow_symlinks_to = ["/var/log"]`},
		{"lookalike prefix", []entry{symlink("log", "/var/log/app-evil")}, allow, "allow_symlinks_to does not list"},
		{"dot-dot out of an allowed one", []entry{symlink("log", "/var/log/app/../../../etc")}, allow, "to /etc,"},
		{"through an allowed link and back up", []entry{symlink("log", "/var/log/app"), symlink("pw", "log/../../../etc/shadow")}, allow, "/etc/shadow"},
		{"relative, not listed", []entry{symlink("x", "../../../../../etc")}, allow, "allow_symlinks_to does not list"},
		{"a file written through an allowed link", []entry{symlink("log", "/var/log/app"), file("log/evil", "x")}, allow, "written through the symlink"},
		{"hard link out: always refused", []entry{hardlink("h", "/var/log/app/x")}, []string{"/"}, "hard link"},
		// Back into the release through the destination (which will point
		// at it): the release's own links count there, as the kernel
		// follows them. up -> / climbs out of /srv, wherever it stands.
		{"back in through the destination", []entry{symlink("d/up", "/srv"), symlink("pw", "/srv/app/d/up/../../etc/shadow")},
			[]string{"/srv"}, "/etc/shadow"},
		{"back in through the destination, relative", []entry{symlink("d/up", "/srv"), symlink("pw", "../../../../app/d/up/../../etc/shadow")},
			[]string{"/srv"}, "/etc/shadow"},
		{"back in through the destination, harmless", []entry{symlink("d/up", "/srv/data"), symlink("pw", "/srv/app/d/up/../x")},
			[]string{"/srv"}, ""},
		{"back in through the release's own directory", []entry{symlink("d/up", "/srv"), symlink("pw", "/srv/dropship/app/releases/R1/d/up/../../etc/shadow")},
			[]string{"/srv"}, "/etc/shadow"},
		{"into another release", []entry{symlink("pw", "/srv/dropship/app/releases/R0/d/x")}, []string{"/srv"}, "another release"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			final, aliases := final, []string(nil)
			if tc.allow != nil && tc.allow[0] == "/srv" {
				final, aliases = "/srv/dropship/app/releases/R1", []string{"/srv/app"}
			}
			dir, _, err := extract(t, makeTar(t, tc.entries...), archive.Options{AllowSymlinksTo: tc.allow, FinalDir: final, Aliases: aliases})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if tc.want == "" {
				fi, err := os.Lstat(filepath.Join(dir, tc.entries[0].name))
				if err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Fatalf("no link made: %v", err)
				}
			}
		})
	}
}

// A link that only leads out of the release through another link
// (d/s to ".", so d/up to "s/../../" climbs two levels, where read as a
// name it climbs none) is judged once the archive is all unpacked; an
// archive that fails before then (truncated, or refused for anything
// else) leaves no link behind, so none of its links leads out.
func TestAFailedUnpackLeavesNoLinkOut(t *testing.T) {
	t.Parallel()
	es := []entry{dir("d/"), symlink("d/s", "."), symlink("d/up", "s/../../")}
	whole := makeTar(t, es...)
	if _, _, err := extract(t, whole, archive.Options{}); err == nil || !strings.Contains(err.Error(), "outside the release") {
		t.Fatalf("whole archive: err = %v, want the link refused as leading outside", err)
	}
	for name, data := range map[string][]byte{
		"whole":     whole,
		"truncated": whole[:len(whole)-1024-100],
		"refused":   makeTar(t, append(es, file("../x", "evil"))...),
	} {
		dir := t.TempDir()
		if _, err := archive.Extract(t.Context(), bytes.NewReader(data), dir, archive.Options{}); err == nil {
			t.Fatalf("%s: accepted", name)
		}
		for _, l := range []string{"d/up", "d/s"} {
			if _, err := os.Lstat(filepath.Join(dir, l)); err == nil {
				t.Errorf("%s: the failed unpack left the link %s", name, l)
			}
		}
	}
}
