package rig

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/dropshipd/dropship/internal/flock"
)

// Ports for the rig's servers come from below the kernel's ephemeral
// range, and each is reserved across processes while a server uses it.
//
// A port read from a listener on 127.0.0.1:0 and closed before the server
// binds it is ephemeral: the kernel may hand it to any outgoing
// connection in between (a test run makes thousands), or to another test
// binary's rig listening on :0, and then a server fails to bind or, worse,
// tests talk to another package's server. Outgoing connections never
// take a port below the ephemeral range, and a flock(2) on a file named
// after the port keeps every rig of the same user off it while the
// holder lives: the kernel drops the lock when the holder dies, so a
// crashed test binary leaves nothing stale behind. The files stay (one
// per port ever tried, at most portSpan): removing one while another
// process has it open would let two processes lock two different files
// for one port. Other users' rigs, and anything else, are kept off by
// the bind check here and the servers' listening checks after.

// ephemeralRangeFile holds the kernel's range for :0 and outgoing connections.
const ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// portSpan is how many ports below the ephemeral range are drawn from.
const portSpan = 12000

// Test hooks: where candidates come from, in the order they are tried,
// and where the reservations are kept.
var (
	portCandidates = defaultPortCandidates
	portLockDir    = filepath.Join(os.TempDir(), fmt.Sprintf("dropship-rig-ports-%d", os.Getuid()))
)

// portRange is [lo, hi): below the ephemeral range (32768 if it cannot be
// read), never below 1024. A kernel whose ephemeral range starts too low
// to leave room gets the ports above it, or, failing that, every
// unprivileged port, checked one by one as always.
func portRange() (lo, hi int) {
	low, high := 32768, 60999
	if b, err := os.ReadFile(ephemeralRangeFile); err == nil {
		var l, h int
		if _, err := fmt.Sscan(string(b), &l, &h); err == nil && 0 < l && l <= h && h <= 65535 {
			low, high = l, h
		}
	}
	const room = 1000
	switch {
	case low-max(low-portSpan, 1024) >= room:
		return max(low-portSpan, 1024), low
	case 65535-high >= room:
		return high + 1, min(high+1+portSpan, 65536)
	default:
		return 1024, 65536
	}
}

// defaultPortCandidates is the range from a random point on, wrapping
// around, so that rigs starting together rarely try the same ports.
func defaultPortCandidates() []int {
	lo, hi := portRange()
	n := hi - lo
	start := rand.IntN(n)
	ports := make([]int, n)
	for i := range ports {
		ports[i] = lo + (start+i)%n
	}
	return ports
}

// reservePorts reserves n distinct ports nobody listens on, TCP or UDP,
// on 127.0.0.1. Each stays reserved until its lock is released or this
// process ends.
func reservePorts(n int) ([]int, []*flock.Lock, error) {
	if err := os.MkdirAll(portLockDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("reserve ports: %w", err)
	}
	var ports []int
	var locks []*flock.Lock
	fail := func(err error) ([]int, []*flock.Lock, error) {
		releasePorts(locks)
		return nil, nil, err
	}
	for _, p := range portCandidates() {
		if len(ports) == n {
			break
		}
		l := flock.New(filepath.Join(portLockDir, strconv.Itoa(p)))
		ok, err := l.TryAcquire()
		if err != nil {
			return fail(fmt.Errorf("reserve port %d: %w", p, err))
		}
		if !ok {
			continue // another rig's
		}
		if !bindable(p) {
			l.Release(context.Background())
			continue
		}
		ports = append(ports, p)
		locks = append(locks, l)
	}
	if len(ports) < n {
		return fail(fmt.Errorf("reserve %d ports: only %d free and unreserved in %s", n, len(ports), portLockDir))
	}
	return ports, locks, nil
}

func releasePorts(locks []*flock.Lock) {
	for _, l := range locks {
		l.Release(context.Background()) // closes the file; never waits
	}
}

// bindable tells whether p is free on 127.0.0.1 for TCP and UDP (carbon
// and Consul's serf listen on both).
func bindable(p int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// kept holds the locks of FreePort's ports: a lock dropped to the garbage
// collector would be closed, and its port free again.
var kept struct {
	sync.Mutex
	locks []*flock.Lock
}

// FreePort returns a loopback port nobody listens on, below the ephemeral
// range and reserved against every other rig until this process ends.
func FreePort() (int, error) {
	ports, locks, err := reservePorts(1)
	if err != nil {
		return 0, err
	}
	kept.Lock()
	kept.locks = append(kept.locks, locks...)
	kept.Unlock()
	return ports[0], nil
}
