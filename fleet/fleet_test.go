package fleet_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dropshipd/dropship/fleet"
)

// What a host writes into shared records is bounded: hook output may be
// long, and every host and operator reads it.
func TestClipBoundsSharedErrorText(t *testing.T) {
	short := "after hook 1: exit 1"
	if fleet.Clip(short) != short {
		t.Fatal("a short error was changed")
	}
	long := "after hook 1 (script): exit 1: " + strings.Repeat("é", 2000)
	got := fleet.Clip(long)
	if len(got) > fleet.MaxErrorText || !strings.HasPrefix(got, "after hook 1 (script): exit 1: ") ||
		!strings.HasSuffix(got, "…[cut]") || !utf8.ValidString(got) {
		t.Fatalf("clipped to %d bytes, valid UTF-8 %v: %q", len(got), utf8.ValidString(got), got[len(got)-20:])
	}
}
