// Package script runs a shell command as a hook or a health check.
package script

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
)

// DefaultTimeout bounds a command that sets no timeout.
const DefaultTimeout = 5 * time.Minute

// outputLimit bounds what is kept of a command's output.
const outputLimit = 64 << 10

// logLimit bounds the output put in one log line.
const logLimit = 4 << 10

// Hook runs Command with /bin/sh -c.
type Hook struct {
	Command string
	Dir     string        // fixed working directory; "" = the release dir
	Timeout time.Duration // then the process group gets SIGTERM
	Grace   time.Duration // then SIGKILL
	Env     []string
	Logger  *slog.Logger
}

type config struct {
	Command string            `hcl:"command"`
	Timeout string            `hcl:"timeout,optional"`
	Grace   string            `hcl:"kill_grace,optional"`
	Dir     string            `hcl:"dir,optional"`
	Env     map[string]string `hcl:"env,optional"`
}

// Factory decodes `before|after|check "script" { command = "…" }`.
func Factory(_ string, body hcl.Body, env hooks.Env) (hooks.Hook, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	diags = append(diags, hclx.Required(body, "command", c.Command)...)
	timeout, d := hclx.Duration(body, "timeout", c.Timeout, DefaultTimeout)
	diags = append(diags, d...)
	grace, d := hclx.Duration(body, "kill_grace", c.Grace, 10*time.Second)
	diags = append(diags, d...)
	h := &Hook{Command: c.Command, Timeout: timeout, Grace: grace, Logger: env.Logger}
	if c.Dir != "" {
		h.Dir = hclx.Path(env.BaseDir, c.Dir)
	}
	for k, v := range c.Env {
		h.Env = append(h.Env, k+"="+v)
	}
	return h, diags
}

// Run runs the command and fails on a non-zero exit, a timeout or a
// cancelled context. The whole process group is killed on the way out.
// passed are the variables of the agent's environment a hook sees; the
// rest (cloud credentials, Consul tokens, key passphrases) stay with the
// agent. A hook needing more says so with env = { … }.
var passed = []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ"}

// defaultPath is PATH when the agent has none (systemd gives one).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func baseEnv() []string {
	env := []string{}
	for _, k := range passed {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		} else if k == "PATH" {
			env = append(env, "PATH="+defaultPath)
		}
	}
	return env
}

func (h *Hook) Run(ctx context.Context, ev hooks.Event) error {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	grace := h.Grace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	cmd := exec.Command("/bin/sh", "-c", h.Command)
	cmd.Dir = h.Dir
	if cmd.Dir == "" {
		cmd.Dir = workDir(ev)
	}
	cmd.Env = append(baseEnv(),
		"DROPSHIP_SERVICE="+ev.Name,
		"DROPSHIP_CHECKSUM="+ev.Hash,
		"DROPSHIP_PREVIOUS_CHECKSUM="+ev.PreviousHash,
		"DROPSHIP_RELEASE="+ev.Release,
		"DROPSHIP_RELEASE_DIR="+ev.ReleaseDir,
		"DROPSHIP_PREVIOUS_RELEASE_DIR="+ev.PreviousDir,
		"DROPSHIP_PHASE="+ev.Phase,
		"DROPSHIP_RESULT="+ev.Result,
		"DROPSHIP_HOSTNAME="+ev.Hostname,
	)
	if ev.RunID != "" {
		cmd.Env = append(cmd.Env, "DROPSHIP_RUN_ID="+ev.RunID)
	}
	cmd.Env = append(cmd.Env, h.Env...)
	out := &tail{max: outputLimit}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A grandchild that escaped the group may hold our pipe open; do not
	// wait for it forever.
	cmd.WaitDelay = grace + time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the script: %w", err)
	}
	pgid := cmd.Process.Pid
	done := make(chan struct{})
	reason := make(chan error, 1) // why the group was killed, nil if it was not
	go func() {
		var why error
		defer func() { reason <- why }()
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		select {
		case <-done:
			return
		case <-timer.C:
			why = fmt.Errorf("timed out after %s", timeout)
		case <-ctx.Done():
			why = fmt.Errorf("cancelled: %w", context.Cause(ctx))
		}
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(grace):
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}()
	err := cmd.Wait()
	close(done)
	why := <-reason
	// Whatever is left of the group goes with the hook.
	syscall.Kill(-pgid, syscall.SIGKILL)

	logger := h.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if errors.Is(err, exec.ErrWaitDelay) && why == nil {
		// The command exited 0; something it started still holds its output.
		logger.Warn("script exited but left a process holding its output", "command", h.Command)
		err = nil
	}
	text := out.String()
	logged := text
	if len(logged) > logLimit {
		logged = "…" + logged[len(logged)-logLimit:]
	}
	logger.Info("script finished", "phase", ev.Phase, "command", h.Command,
		"duration", time.Since(start).Round(time.Millisecond), "error", errString(err), "output", logged)
	// The error never quotes the command: it may carry secrets, and the
	// error goes to the state file, the fleet's records and the status
	// endpoint. The caller names the hook by its place in the config.
	if why != nil {
		return fmt.Errorf("script %w%s", why, lastLines(text))
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &ExitError{Code: ee.ExitCode(), msg: fmt.Sprintf("script exited with status %d%s", ee.ExitCode(), lastLines(text))}
		}
		return fmt.Errorf("script: %w%s", err, lastLines(text))
	}
	return nil
}

// ExitError is a command that ran and exited non-zero: callers that give
// exit codes a meaning (75, EX_TEMPFAIL: "not now") read Code.
type ExitError struct {
	Code int
	msg  string
}

func (e *ExitError) Error() string { return e.msg }

func workDir(ev hooks.Event) string {
	for _, d := range []string{ev.ReleaseDir, ev.PreviousDir} {
		if fi, err := os.Stat(d); d != "" && err == nil && fi.IsDir() {
			return d
		}
	}
	return "/"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func lastLines(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if len(s) > 512 {
		s = "…" + s[len(s)-512:]
	}
	return ": " + s
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
		t.dropped = true
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped {
		return "…" + t.buf.String()
	}
	return t.buf.String()
}

var _ hooks.Hook = (*Hook)(nil)
