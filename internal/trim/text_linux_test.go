package trim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// written lives in the executable's writable data mapping, whose pages
// once written are the process's own: Text must never drop them.
var written = 41

// exeResident is the resident kB of the executable's mappings, read-only
// ones and writable ones apart.
func exeResident(t *testing.T) (ro, rw int) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mine, writable bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			mine = len(fields) >= 6 && fields[5] == exe
			writable = len(fields[1]) == 4 && fields[1][1] == 'w'
			continue
		}
		if mine && fields[0] == "Rss:" {
			n, _ := strconv.Atoi(fields[1])
			if writable {
				rw += n
			} else {
				ro += n
			}
		}
	}
	return ro, rw
}

func TestTextDropsCodeAndKeepsData(t *testing.T) {
	written++
	ro, _ := exeResident(t)
	if ro == 0 {
		t.Fatal("no resident read-only mapping of the executable found in /proc/self/smaps")
	}
	Text()
	after, rw := exeResident(t)
	if after >= ro {
		t.Errorf("read-only mappings of the executable: %d kB resident before Text, %d kB after; want fewer", ro, after)
	}
	if rw == 0 {
		t.Error("the writable data mapping was dropped")
	}
	if written != 42 {
		t.Errorf("a written variable reads %d after Text, want 42: its page was dropped", written)
	}
	// The dropped code still runs: it comes back from the page cache.
	if got := strconv.Itoa(written); got != "42" {
		t.Errorf("Itoa after Text = %q", got)
	}
}
