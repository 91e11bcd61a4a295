package rig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
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

// socketsOf returns the inodes of the sockets process pid holds open.
func socketsOf(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
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
// anything that made the bind fail.
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
