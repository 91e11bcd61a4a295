package artifact_test

import (
	"errors"
	"testing"

	"github.com/dropshipd/dropship/artifact"
)

// A resumed GET is taken only when its range starts where the download
// was and runs to the end of the object checked; a range of another size
// is another object.
func TestCheckRange(t *testing.T) {
	pin := artifact.Info{Size: 3000}
	for _, tc := range []struct {
		cr   string
		want error
	}{
		{"bytes 1000-2999/3000", nil},
		{"bytes 1000-2999/*", nil},
		{"", artifact.ErrRejected},                  // range ignored (200)
		{"bytes 0-2999/3000", artifact.ErrRejected}, // from the start
		{"bytes 10000-2999/3000", artifact.ErrRejected},
		{"bytes 1000-1499/3000", artifact.ErrRejected}, // not to the end
		{"bytes 1000-3999/4000", artifact.ErrChanged},  // another object
		{"bytes 1000-1999/2000", artifact.ErrChanged},
		{"bytes 1000-x/3000", artifact.ErrRejected},
		{"items 1000-2999/3000", artifact.ErrRejected},
	} {
		err := artifact.CheckRange(tc.cr, 1000, pin)
		if (tc.want == nil) != (err == nil) || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%q: %v, want %v", tc.cr, err, tc.want)
		}
	}
}
