package trim

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Text unmaps the pages of the executable's read-only mappings from the
// process: its machine code and read-only data, about 20 MiB of the
// agent's resident set at rest, most of it touched once (at start, by the
// config loader and the SDKs' set-up, or by the last install) and not
// again. The pages stay in the page cache; the next use of one maps it
// back (a minor fault), so what a check runs comes back and the rest does
// not. Only mappings with no anonymous (copy-on-write) page are dropped:
// such a mapping holds nothing but the file's own bytes, and dropping it
// loses nothing. Errors are ignored: it is only an optimisation.
func Text() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return
	}
	defer f.Close()
	type span struct{ start, end uintptr }
	var (
		drop []span
		cur  span
		ok   bool // cur is a read-only mapping of exe
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if fields := bytes.Fields(line); len(fields) >= 5 && bytes.IndexByte(fields[0], '-') > 0 && !bytes.HasSuffix(fields[0], []byte(":")) {
			ok = false
			lo, hi, _ := strings.Cut(string(fields[0]), "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			perms := string(fields[1])
			if err1 == nil && err2 == nil && len(fields) >= 6 && string(fields[5]) == exe &&
				len(perms) == 4 && perms[1] == '-' && perms[3] == 'p' {
				cur, ok = span{uintptr(start), uintptr(end)}, true
			}
			continue
		}
		if ok && bytes.HasPrefix(line, []byte("Anonymous:")) {
			if n, err := strconv.Atoi(string(bytes.Fields(line[len("Anonymous:"):])[0])); err == nil && n == 0 {
				drop = append(drop, cur)
			}
			ok = false
		}
	}
	f.Close()
	for _, s := range drop {
		syscall.Syscall(syscall.SYS_MADVISE, s.start, s.end-s.start, syscall.MADV_DONTNEED)
	}
}
