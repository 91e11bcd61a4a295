package script_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var quiet = slog.New(slog.DiscardHandler)

// alive reports whether pid runs; a zombie (dead, not yet reaped by an
// init that may not reap) counts as dead.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, 20*time.Second, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("the child has not written its pid: %w", err)
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}

func TestTimeoutKillsTheGroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// A child that ignores SIGTERM and keeps our stdout open, behind a
	// shell that waits for it.
	h := &script.Hook{Logger: quiet,
		Command: "sh -c 'trap \"\" TERM; echo $$ > " + pidFile + "; while :; do sleep 1; done' & wait",
		Timeout: 300 * time.Millisecond,
		Grace:   200 * time.Millisecond,
	}
	err := h.Run(context.Background(), hooks.Event{Phase: "before"})
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("err = %v", err)
	}
	pid := readPID(t, pidFile)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	testutil.Eventually(t, 20*time.Second, func() error {
		if alive(pid) {
			return errors.New("the child that ignored SIGTERM survived the timeout")
		}
		return nil
	})
}

func TestEscapedGrandchildDoesNotHangTheHook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// setsid leaves the process group: only WaitDelay frees us from the
	// pipe it holds.
	h := &script.Hook{Logger: quiet,
		Command: "setsid sh -c 'echo $$ > " + pidFile + "; sleep 30' & exit 0",
		Grace:   100 * time.Millisecond,
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(context.Background(), hooks.Event{}) }()
	select {
	case err := <-done:
		// The command exited 0: a held pipe does not make it fail.
		if err != nil {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hook hung on a grandchild holding stdout")
	}
	syscall.Kill(readPID(t, pidFile), syscall.SIGKILL)
}

func TestEnvironmentAndDirectory(t *testing.T) {
	t.Parallel()
	rel := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	h := &script.Hook{Logger: quiet, Command: `echo "$DROPSHIP_SERVICE $DROPSHIP_CHECKSUM $DROPSHIP_PREVIOUS_CHECKSUM $DROPSHIP_PHASE $DROPSHIP_HOSTNAME $DROPSHIP_RELEASE_DIR $(pwd)" > ` + out}
	ev := hooks.Event{Name: "api", Hash: "abc", PreviousHash: "def", Phase: "after", Hostname: "h1", ReleaseDir: rel}
	if err := h.Run(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	want := "api abc def after h1 " + rel + " " + rel + "\n"
	if string(b) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
}

func TestFailureCarriesOutput(t *testing.T) {
	t.Parallel()
	h := &script.Hook{Logger: quiet, Command: "echo something broke >&2; exit 7"}
	err := h.Run(context.Background(), hooks.Event{})
	if err == nil || !strings.Contains(err.Error(), "status 7") || !strings.Contains(err.Error(), "something broke") {
		t.Fatalf("err = %v", err)
	}
}

func TestOutputIsBounded(t *testing.T) {
	t.Parallel()
	h := &script.Hook{Logger: quiet, Command: "head -c 1000000 /dev/zero | tr '\\0' x; exit 1"}
	err := h.Run(context.Background(), hooks.Event{})
	if err == nil || len(err.Error()) > 1024 {
		t.Fatalf("error of %d bytes", len(err.Error()))
	}
}

func TestCancelKills(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	h := &script.Hook{Logger: quiet, Command: "sleep 30", Grace: 100 * time.Millisecond}
	if err := h.Run(ctx, hooks.Event{}); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("err = %v", err)
	}
}

// A hook sees PATH, HOME, LANG, its DROPSHIP_* variables and its own
// env, never the agent's credentials.
func TestHooksGetACleanEnvironment(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "agent-secret")
	t.Setenv("CONSUL_HTTP_TOKEN", "agent-token")
	t.Setenv("DROPSHIP_KEY_PASSWORD", "passphrase")
	t.Setenv("LANG", "C.UTF-8")
	out := filepath.Join(t.TempDir(), "env")
	h := &script.Hook{Logger: quiet, Command: "env > " + out, Env: []string{"APP_MODE=production"}}
	if err := h.Run(context.Background(), hooks.Event{Name: "api", ReleaseDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	env := string(b)
	for _, secret := range []string{"agent-secret", "agent-token", "passphrase"} {
		if strings.Contains(env, secret) {
			t.Fatalf("the hook saw the agent's %q:\n%s", secret, env)
		}
	}
	for _, want := range []string{"PATH=", "LANG=C.UTF-8", "DROPSHIP_SERVICE=api", "APP_MODE=production"} {
		if !strings.Contains(env, want) {
			t.Fatalf("the hook lacks %s:\n%s", want, env)
		}
	}
}
