// Package rig starts the real servers the tests talk to (MinIO, OpenStack
// Swift, Consul, graphite-web and carbon) on free loopback ports, from the
// binaries and packages `make rig` installs. Each package starts what it
// needs once, in TestMain, and stops it at the end.
package rig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dropshipd/dropship/internal/flock"
)

// Bin finds a rig binary: on PATH, else in $DROPSHIP_RIG_DIR/bin, else in
// ~/.cache/dropship-rig/bin.
func Bin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dirs := []string{os.Getenv("DROPSHIP_RIG_DIR")}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".cache", "dropship-rig"))
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, "bin", name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in the rig directory (run `make rig`)", name)
}

// procs is a set of started processes, each in its own process group,
// with the ports reserved for them and their data directories.
type procs struct {
	mu    sync.Mutex
	cmds  []*proc
	dirs  []string
	ports []*flock.Lock
}

// proc is one started process.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     *os.File
	logPath string
	done    chan struct{} // closed once it has exited
}

// exited tells whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill kills the process group and waits for the process to end.
func (p *proc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.log.Close()
}

// portsReserved, when set, is called with the ports reserved for a
// server before it starts: a test takes one.
var portsReserved func(ports []int)

// reserve reserves n ports for the servers, until stop.
func (p *procs) reserve(n int) ([]int, error) {
	ports, locks, err := reservePorts(n)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.ports = append(p.ports, locks...)
	p.mu.Unlock()
	if portsReserved != nil {
		portsReserved(ports)
	}
	return ports, nil
}

func (p *procs) start(logDir, name string, cmd *exec.Cmd) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pr := &proc{name: name, cmd: cmd, log: f, logPath: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(pr.done)
	}()
	p.mu.Lock()
	p.cmds = append(p.cmds, pr)
	p.mu.Unlock()
	return pr, nil
}

// stop kills every process group, frees the ports and removes the data
// directories.
func (p *procs) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cmds {
		c.kill()
	}
	releasePorts(p.ports)
	for _, d := range p.dirs {
		os.RemoveAll(d)
	}
	p.cmds, p.dirs, p.ports = nil, nil, nil
}

// tail returns the end of a log, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// waitHTTP polls url until check accepts the response or timeout passes.
func waitHTTP(url string, timeout time.Duration, check func(*http.Response, []byte) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if check(resp, body) {
				return nil
			}
			last = fmt.Errorf("%s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(fmt.Errorf("%s not ready after %s", url, timeout), last)
}

func ok200(r *http.Response, _ []byte) bool { return r.StatusCode == 200 }

// ---- MinIO ----

// MinIO is a running MinIO server.
type MinIO struct {
	Endpoint  string // http://127.0.0.1:PORT
	Addr      string // 127.0.0.1:PORT
	AccessKey string
	SecretKey string
	procs
}

// StartMinIO starts MinIO on a fresh data directory, starting over on
// new ports if one is taken.
func StartMinIO() (*MinIO, error) {
	bin, err := Bin("minio")
	if err != nil {
		return nil, err
	}
	return startOver("minio", func() (*MinIO, error) { return startMinIO(bin) })
}

func startMinIO(bin string) (*MinIO, error) {
	dir, err := os.MkdirTemp("", "rig-minio-")
	if err != nil {
		return nil, err
	}
	m := &MinIO{AccessKey: "dropshiptest", SecretKey: "dropshiptest-secret"}
	m.dirs = append(m.dirs, dir)
	ports, err := m.reserve(2)
	if err != nil {
		m.stop()
		return nil, err
	}
	m.Addr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	m.Endpoint = "http://" + m.Addr
	cmd := exec.Command(bin, "server", filepath.Join(dir, "data"), "--address", m.Addr,
		"--console-address", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	pr, err := m.start(dir, "minio", cmd)
	if err != nil {
		m.stop()
		return nil, err
	}
	if err := awaitListening([]listener{{ports[0], pr}}, 120*time.Second); err != nil {
		m.stop()
		return nil, fmt.Errorf("minio: %w", err)
	}
	// Live is not ready: until its object layer is up, MinIO answers S3
	// requests 503 "Server not initialized" (a loaded machine shows it).
	// An anonymous listing is refused (403) once it is.
	initialized := func(r *http.Response, _ []byte) bool { return r.StatusCode == http.StatusForbidden }
	for _, w := range []struct {
		path  string
		ready func(*http.Response, []byte) bool
	}{{"/minio/health/live", ok200}, {"/", initialized}} {
		if err := waitHTTP(m.Endpoint+w.path, 120*time.Second, w.ready); err != nil {
			log := tail(filepath.Join(dir, "minio.log"))
			m.stop()
			return nil, fmt.Errorf("%w\n%s", err, log)
		}
	}
	return m, nil
}

// Stop kills MinIO and removes its data.
func (m *MinIO) Stop() { m.stop() }

// ---- Consul ----

// Consul is a running `consul agent -dev`.
type Consul struct {
	Addr string // 127.0.0.1:HTTPPORT
	port int    // HTTP
	dir  string
	bin  string
	args []string
	procs
}

// StartConsul starts a dev-mode Consul agent, starting over on new ports
// if one is taken; extra are more arguments.
func StartConsul(extra ...string) (*Consul, error) {
	bin, err := Bin("consul")
	if err != nil {
		return nil, err
	}
	return startOver("consul", func() (*Consul, error) { return startConsul(bin, extra) })
}

func startConsul(bin string, extra []string) (*Consul, error) {
	dir, err := os.MkdirTemp("", "rig-consul-")
	if err != nil {
		return nil, err
	}
	c := &Consul{dir: dir, bin: bin}
	c.dirs = append(c.dirs, dir)
	// Held until Stop: a Consul killed and started again comes back on
	// the same ports.
	p, err := c.reserve(4)
	if err != nil {
		c.stop()
		return nil, err
	}
	c.Addr, c.port = fmt.Sprintf("127.0.0.1:%d", p[0]), p[0]
	c.args = []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", fmt.Sprint(p[0]), "-server-port", fmt.Sprint(p[1]), "-serf-lan-port", fmt.Sprint(p[2]),
		"-serf-wan-port", fmt.Sprint(p[3]), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-node", "rig", "-log-level", "warn",
		// Every client is on 127.0.0.1: the default of 200 connections
		// per address is less than tests running side by side hold.
		"-hcl", "limits { http_max_conns_per_client = 2000 }"}
	c.args = append(c.args, extra...)
	if err := c.Start(); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// Start (re)starts the agent after Kill; in -dev mode its data is gone.
func (c *Consul) Start() error {
	pr, err := c.start(c.dir, "consul", exec.Command(c.bin, c.args...))
	if err != nil {
		return err
	}
	// Another agent's leader on the port would pass the wait below.
	if err := awaitListening([]listener{{c.port, pr}}, 60*time.Second); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	err = waitHTTP("http://"+c.Addr+"/v1/status/leader", 60*time.Second, func(r *http.Response, b []byte) bool {
		return r.StatusCode == 200 && len(strings.Trim(strings.TrimSpace(string(b)), `"`)) > 0
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, tail(filepath.Join(c.dir, "consul.log")))
	}
	return nil
}

// Pid is the agent's process id, for measurements.
func (c *Consul) Pid() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cmds) == 0 {
		return 0, fmt.Errorf("consul is not running")
	}
	return c.cmds[0].cmd.Process.Pid, nil
}

// Kill stops the agent (a crash, for fault tests); Start brings it back.
func (c *Consul) Kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.cmds {
		p.kill()
	}
	c.cmds = nil
}

// Stop kills Consul and removes its data.
func (c *Consul) Stop() { c.stop() }
