package archive_test

import (
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, err := extract(t, makeTar(t, tc.entries...), archive.Options{AllowSymlinksTo: tc.allow, FinalDir: final})
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
