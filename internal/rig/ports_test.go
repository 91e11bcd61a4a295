package rig

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// The rig's ports come from outside the kernel's ephemeral range, which
// outgoing connections and :0 listeners draw from: below it, when it
// leaves room there.
func TestFreePortIsBelowTheEphemeralRange(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	testutil.Require(t, "the kernel's ephemeral port range", err)
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	below := low-1024 >= 1000
	for range 20 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if p < 1024 || p >= low && p <= high || below && p >= low {
			t.Fatalf("port %d, want one in [1024, %d) below the ephemeral range %d-%d (or above it when there is no room below)", p, low, low, high)
		}
	}
}

// privatePorts makes the rig draw from cands alone, in that order, with
// its reservations in dir: a range small enough to run out of, which no
// other test binary's rig uses.
func privatePorts(t *testing.T, dir string, cands []int) {
	t.Helper()
	oldCands, oldDir := portCandidates, portLockDir
	portCandidates = func() []int { return slices.Clone(cands) }
	portLockDir = dir
	t.Cleanup(func() { portCandidates, portLockDir = oldCands, oldDir })
}

// testPorts are eight ports for a test's private range, reserved in the
// real registry meanwhile so that no other rig starts a server on one.
func testPorts(t *testing.T) []int {
	t.Helper()
	ports, locks, err := reservePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { releasePorts(locks) })
	return ports
}

func overlap(a, b []int) []int {
	var both []int
	for _, p := range a {
		if slices.Contains(b, p) {
			both = append(both, p)
		}
	}
	return both
}

// Two reservations never share a port while held; a released port is
// handed out again.
func TestReservationsNeverOverlap(t *testing.T) {
	cands := testPorts(t)
	privatePorts(t, t.TempDir(), cands)
	a, aLocks, err := reservePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	b, bLocks, err := reservePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	defer releasePorts(bLocks)
	if both := overlap(a, b); len(both) > 0 {
		t.Fatalf("ports %v handed out twice (%v and %v)", both, a, b)
	}
	if p, locks, err := reservePorts(1); err == nil {
		releasePorts(locks)
		t.Fatalf("port %v handed out with all %d of %v held", p, len(cands), cands)
	}
	releasePorts(aLocks)
	again, locks, err := reservePorts(4)
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	defer releasePorts(locks)
	slices.Sort(a)
	slices.Sort(again)
	if !slices.Equal(a, again) {
		t.Fatalf("after releasing %v, got %v", a, again)
	}
}

// holdPortsEnv makes the test binary a process that reserves ports and
// holds them until killed: "n dir port,port,...".
const holdPortsEnv = "RIG_TEST_HOLD_PORTS"

// Two test binaries never hold the same port, and a holder that dies
// (killed, with no chance to clean up) leaves its ports free.
func TestReservationsNeverOverlapAcrossProcesses(t *testing.T) {
	if spec := os.Getenv(holdPortsEnv); spec != "" {
		holdPorts(t, spec)
		return
	}
	cands := testPorts(t)
	dir := t.TempDir()
	privatePorts(t, dir, cands)

	var list []string
	for _, p := range cands {
		list = append(list, strconv.Itoa(p))
	}
	child := exec.Command(os.Args[0], "-test.run=^TestReservationsNeverOverlapAcrossProcesses$", "-test.count=1")
	child.Env = append(os.Environ(), fmt.Sprintf("%s=4 %s %s", holdPortsEnv, dir, strings.Join(list, ",")))
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			child.Process.Kill()
			child.Wait()
		}
	}()
	// The child's first line is the ports it holds.
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %q %v", line, err)
	}
	theirs, err := parsePorts(strings.TrimSpace(strings.TrimPrefix(line, "holding ")))
	if err != nil || len(theirs) != 4 {
		t.Fatalf("child: %q %v", line, err)
	}

	mine, locks, err := reservePorts(4)
	if err != nil {
		t.Fatalf("four ports of %v with the child holding %v: %v", cands, theirs, err)
	}
	if both := overlap(mine, theirs); len(both) > 0 {
		t.Fatalf("ports %v handed out to both processes (child %v, here %v)", both, theirs, mine)
	}
	if p, l, err := reservePorts(1); err == nil {
		releasePorts(l)
		t.Fatalf("port %v handed out with all of %v held by two processes", p, cands)
	}
	releasePorts(locks)

	child.Process.Kill()
	child.Wait()
	killed = true
	again, locks, err := reservePorts(8)
	if err != nil {
		t.Fatalf("with the child dead: %v", err)
	}
	releasePorts(locks)
	if both := overlap(again, theirs); len(both) != len(theirs) {
		t.Fatalf("the dead child's ports %v not free again: got %v", theirs, again)
	}
}

// holdPorts is the child of TestReservationsNeverOverlapAcrossProcesses.
func holdPorts(t *testing.T, spec string) {
	var n int
	var dir, list string
	if _, err := fmt.Sscan(spec, &n, &dir, &list); err != nil {
		t.Fatalf("%s=%q: %v", holdPortsEnv, spec, err)
	}
	cands, err := parsePorts(list)
	if err != nil {
		t.Fatal(err)
	}
	privatePorts(t, dir, cands)
	ports, locks, err := reservePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	defer releasePorts(locks)
	var out []string
	for _, p := range ports {
		out = append(out, strconv.Itoa(p))
	}
	fmt.Printf("holding %s\n", strings.Join(out, ","))
	io.Copy(io.Discard, os.Stdin) // until killed
}

func parsePorts(s string) ([]int, error) {
	var ports []int
	for f := range strings.SplitSeq(s, ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}
