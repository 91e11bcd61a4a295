package rig

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// reaped starts a process that prints msg and exits, and returns it
// reaped, its done not yet closed: as the rig's proc is between the end
// of its Wait and the close that tells it.
func reaped(t *testing.T, msg string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "server.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd := exec.Command("sh", "-c", `echo "$0"; exit 1`, msg)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err == nil {
		t.Fatal("the server did not fail")
	}
	return &proc{name: "server", cmd: cmd, log: f, logPath: logPath, done: make(chan struct{})}
}

// An exited process has no fd table: its sockets are errGone, not a
// failure to read /proc.
func TestSocketsOfAnExitedProcess(t *testing.T) {
	p := reaped(t, "bye")
	_, err := socketsOf(p.cmd.Process.Pid)
	if !errors.Is(err, errGone) {
		t.Fatalf("sockets of an exited process: %v, want %v", err, errGone)
	}
}

// A server that exits on a taken port, seen before the rig has told its
// exit, is a taken port (so the rig starts over), not a /proc error.
func TestListenerExitedBeforeItIsTold(t *testing.T) {
	p := reaped(t, "failed to listen on TCP port 1234: Address already in use")
	go close(p.done)
	_, err := listener{port: 1234, p: p}.alone(map[int][]uint64{})
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("alone: %v, want %v", err, errPortTaken)
	}
}
