package rig

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// tcpListeners returns the inodes of the TCP sockets listening on each
// port, on any address, IPv4 and IPv6, whoever holds them (from
// /proc/net/tcp{,6}).
func tcpListeners() (map[int][]uint64, error) {
	socks := map[int][]uint64{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if errors.Is(err, fs.ErrNotExist) && name == "/proc/net/tcp6" {
			continue // a kernel without IPv6
		}
		if err != nil {
			return nil, fmt.Errorf("listening sockets: %w", err)
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[1:] {
			// sl local_address rem_address st ... uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" { // TCP_LISTEN
				continue
			}
			i := strings.LastIndexByte(f[1], ':')
			port, err1 := strconv.ParseUint(f[1][i+1:], 16, 16)
			inode, err2 := strconv.ParseUint(f[9], 10, 64)
			if i < 0 || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("listening sockets: %s: unexpected line %q", name, line)
			}
			socks[int(port)] = append(socks[int(port)], inode)
		}
	}
	return socks, nil
}

// errGone is a process with no open files left: it has exited, and may
// not be reaped yet (a zombie keeps its /proc entry, not its fd table).
var errGone = errors.New("process has exited")

// socketsOf returns the inodes of the sockets process pid holds open.
func socketsOf(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sockets of %d: %w", pid, errGone)
	}
	if err != nil {
		return nil, fmt.Errorf("sockets of %d: %w", pid, err)
	}
	socks := map[uint64]bool{}
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed since the listing
		}
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if inode, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				socks[inode] = true
			}
		}
	}
	return socks, nil
}

// errPortTaken is a server's port taken by another process: another
// rig's server sharing it with SO_REUSEPORT (Swift's servers set it), or
// anything that made the bind fail. A server whose check is answered on
// its port is not proof: the answer may come from the other process.
var errPortTaken = errors.New("port taken by another process")

// listenState tells whether pid listens on port and whether another
// process does too.
func listenState(all map[int][]uint64, pid, port int) (mine, others bool, err error) {
	socks, err := socketsOf(pid)
	if err != nil {
		return false, false, err
	}
	for _, inode := range all[port] {
		if socks[inode] {
			mine = true
		} else {
			others = true
		}
	}
	return mine, others, nil
}

// listener is a started server and a port it is to listen on.
type listener struct {
	port int
	p    *proc
}

// awaitListening waits until every server listens on its port, the only
// process to. A server that exits, or a port another process listens on,
// fails it, with errPortTaken if the port is the cause.
func awaitListening(ls []listener, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		all, err := tcpListeners()
		if err != nil {
			return err
		}
		ready := 0
		for _, l := range ls {
			ok, err := l.alone(all)
			if err != nil {
				return err
			}
			if ok {
				ready++
			}
		}
		if ready == len(ls) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every server listening after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkListening is awaitListening without the wait.
func checkListening(ls []listener) error {
	all, err := tcpListeners()
	if err != nil {
		return err
	}
	for _, l := range ls {
		ok, err := l.alone(all)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s stopped listening on 127.0.0.1:%d\n%s", l.p.name, l.port, tail(l.p.logPath))
		}
	}
	return nil
}

// alone tells whether the server listens on its port (false while it
// starts); an error if it exited or another process listens there too.
func (l listener) alone(all map[int][]uint64) (bool, error) {
	exited := func() error {
		log := tail(l.p.logPath)
		// EADDRINUSE as Go, C and Python word it, MinIO's "port is already
		// in use", Swift's after its retries.
		if lower := strings.ToLower(log); strings.Contains(lower, "already in use") || strings.Contains(lower, "could not bind") {
			return fmt.Errorf("%s on 127.0.0.1:%d: %w\n%s", l.p.name, l.port, errPortTaken, log)
		}
		return fmt.Errorf("%s exited: %v\n%s", l.p.name, l.p.cmd.ProcessState, log)
	}
	if l.p.exited() {
		return false, exited()
	}
	mine, others, err := listenState(all, l.p.cmd.Process.Pid, l.port)
	if errors.Is(err, errGone) {
		<-l.p.done // exited: its reaping, and its state, are moments away
		return false, exited()
	}
	if err != nil {
		return false, err
	}
	if others {
		return false, fmt.Errorf("%s on 127.0.0.1:%d: %w", l.p.name, l.port, errPortTaken)
	}
	return mine, nil
}

// serverStarts is how many times a server is started on new ports when
// one turns out taken.
const serverStarts = 3

// startOver calls start again, on new ports, while a port it was given
// turns out taken.
func startOver[T any](name string, start func() (T, error)) (T, error) {
	var errs []error
	for i := range serverStarts {
		v, err := start()
		if err == nil || !errors.Is(err, errPortTaken) {
			return v, err
		}
		slog.Warn("rig: a port was taken, starting over on new ones", "server", name, "start", i+1, "err", err)
		errs = append(errs, err)
	}
	var zero T
	return zero, fmt.Errorf("start %s: a port was taken at each of %d starts: %w", name, serverStarts, errors.Join(errs...))
}
