package artifact

import (
	"fmt"
	"strconv"
	"strings"
)

// CheckRange judges the Content-Range a store answered to a request for
// bytes off- of pin: it must start at off and run to the end of an
// object of the size pinned. Another start (or none: the range ignored)
// wraps ErrRejected; another size means another object, ErrChanged, so
// that the update starts over rather than splicing two.
func CheckRange(contentRange string, off int64, pin Info) error {
	var first, last, total int64 = -1, -1, -1
	spec, ok := strings.CutPrefix(strings.TrimSpace(contentRange), "bytes ")
	if ok {
		rng, size, _ := strings.Cut(spec, "/")
		a, b, _ := strings.Cut(rng, "-")
		first, _ = parseOff(a)
		last, _ = parseOff(b)
		if size != "*" {
			total, _ = parseOff(size)
		}
	}
	switch {
	case first != off || last < first:
		return fmt.Errorf("%w: asked from byte %d, the store answered range %q", ErrRejected, off, contentRange)
	case pin.Size > 0 && total >= 0 && total != pin.Size:
		return fmt.Errorf("%w: the store answered range %q of %d bytes, the object checked has %d", ErrChanged, contentRange, total, pin.Size)
	case total >= 0 && last != total-1:
		return fmt.Errorf("%w: asked from byte %d to the end, the store answered range %q", ErrRejected, off, contentRange)
	}
	return nil
}

func parseOff(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return -1, fmt.Errorf("bad offset %q", s)
	}
	return n, nil
}
