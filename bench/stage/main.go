// Command stage measures a rollout with and without staging ahead of the
// fleet slot:
//
//	go run ./bench/stage [-hosts 10] [-size 256] [-links 50,0]
//
// -hosts agents (separate processes) against MinIO and Consul, with
// `sequential = true`, `concurrency = 1` and a before hook of 0.2 s, all
// on a small release v1. A release of -size MiB (a tar of incompressible
// files) is then published, and the rollout timed from the publish to
// the end of the last host's after hook, once with `stage = "off"` (the
// download inside the slot) and once with `stage = "ahead"`.
//
// The agents' files are on tmpfs (-dir). Each agent reaches MinIO
// through its own proxy, limited to -links MiB/s: one host's link. With
// 0 there is no limit, and the ten agents' downloads share this
// machine's two cores and loopback, which the hosts of a fleet do not.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/bench/internal/benchrig"
	"github.com/dropshipd/dropship/internal/rig"
)

var (
	hosts = flag.Int("hosts", 10, "agents")
	size  = flag.Int("size", 256, "release size, MiB")
	links = flag.String("links", "50,0", "per-host download limits to run, MiB/s (0: none)")
	modes = flag.String("modes", "off,ahead", "stage values to run")
	work  = flag.String("dir", "/dev/shm", "where the agents' state and releases go (tmpfs: the hosts of a fleet do not share a disk)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type result struct {
	link        int
	mode        string
	wall, hooks float64 // publish to last after hook; sum of before-to-after spans
	rate        float64 // MiB/s of a host's download, mean over the hosts
}

func run() error {
	dir, err := os.MkdirTemp(*work, "dropship-stage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "dropship")
	if out, err := exec.Command("go", "build", "-trimpath", "-tags", "nethttpomithttp2", "-o", bin, "./cmd/dropship").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	srv, err := benchrig.Start(ctx, "bench")
	if err != nil {
		return err
	}
	defer srv.Stop()
	m, c, st := srv.MinIO, srv.Consul, srv.Store
	small := filepath.Join(dir, "v1.tar")
	if err := writeTar(small, "v1", 0); err != nil {
		return err
	}
	big := filepath.Join(dir, "v2.tar")
	if err := writeTar(big, "v2", *size<<20); err != nil {
		return err
	}
	var results []result
	n := 0
	for _, l := range strings.Split(*links, ",") {
		link, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil {
			return fmt.Errorf("-links: %w", err)
		}
		for _, mode := range strings.Split(*modes, ",") {
			n++
			r, err := rollout(ctx, st, m, c, bin, filepath.Join(dir, fmt.Sprintf("run-%d", n)), fmt.Sprintf("app-%d.tar", n), mode, link, small, big)
			if err != nil {
				return fmt.Errorf("link %d MiB/s, stage = %q: %w", link, mode, err)
			}
			fmt.Printf("link %s, stage = %q: rollout %.2f s (before hook to after hook, summed over the hosts: %.2f s; a host's download at %.1f MiB/s on average)\n",
				linkName(link), mode, r.wall, r.hooks, r.rate)
			results = append(results, r)
		}
	}
	fmt.Printf("\n%d hosts, concurrency = 1, a %d MiB release:\n\n", *hosts, *size)
	fmt.Println("| per-host link | stage = \"off\" | stage = \"ahead\" | speed-up |")
	fmt.Println("| --- | --- | --- | --- |")
	for i := 0; i+1 < len(results); i += 2 {
		off, ahead := results[i], results[i+1]
		fmt.Printf("| %s | %.1f s | %.1f s | %.2f× |\n", linkName(off.link), off.wall, ahead.wall, off.wall/ahead.wall)
	}
	return nil
}

func linkName(l int) string {
	if l == 0 {
		return "no limit"
	}
	return fmt.Sprintf("%d MiB/s", l)
}

// writeTar writes a tar of VERSION and files of incompressible bytes,
// size bytes in all.
func writeTar(path, version string, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	tw.WriteHeader(&tar.Header{Name: "VERSION", Mode: 0o644, Size: int64(len(version))})
	tw.Write([]byte(version))
	rng := rand.NewChaCha8([32]byte{1})
	const part = 16 << 20
	for i := 0; size > 0; i++ {
		n := min(size, part)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("lib/part%02d", i), Mode: 0o644, Size: int64(n)})
		if _, err := io.CopyN(tw, rng, int64(n)); err != nil {
			return err
		}
		size -= n
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// rollout starts the agents on v1 at key, publishes v2 and times the
// rollout.
func rollout(ctx context.Context, st *s3.Store, m *rig.MinIO, c *rig.Consul, bin, dir, key, mode string, link int, small, big string) (result, error) {
	res := result{link: link, mode: mode}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	timeline := filepath.Join(dir, "timeline")
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
			p.Wait()
		}
	}()
	if _, err := st.Publish(ctx, "bench", key, small, 0); err != nil {
		return res, err
	}
	var dests []string
	var proxies []*proxy
	for i := range *hosts {
		name := fmt.Sprintf("host-%02d", i)
		p, err := newProxy(m.Addr, link)
		if err != nil {
			return res, err
		}
		defer p.Close()
		proxies = append(proxies, p)
		dest := filepath.Join(dir, name, "srv")
		cfg := filepath.Join(dir, name+".hcl")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %[1]q
node_name  = %[2]q
repo "s3" {
  endpoint   = "http://%[3]s"
  access_key = %[4]q
  secret_key = %[5]q
}
lock "consul" {
  address = %[6]q
  prefix  = %[7]q
}
service "app" {
  check_interval = "1s"
  sequential     = true
  concurrency    = 1
  stage          = %[8]q
  artifact "s3" {
    bucket      = "bench"
    path        = %[9]q
    destination = %[10]q
    chunk_cache = 0
  }
  before "script" {
    command = "echo \"$(date +%%s.%%N) start $DROPSHIP_HOSTNAME $(cat VERSION)\" >> %[11]s; sleep 0.2"
  }
  after "script" {
    command = "echo \"$(date +%%s.%%N) end $DROPSHIP_HOSTNAME $(cat VERSION)\" >> %[11]s"
  }
}
`, filepath.Join(dir, name, "state"), name, p.Addr(), m.AccessKey, m.SecretKey, c.Addr, "bench-"+filepath.Base(dir), mode,
			key, dest, timeline)), 0o600)
		log, _ := os.Create(filepath.Join(dir, name+".log"))
		cmd := exec.Command(bin, "agent", "-c", cfg)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return res, err
		}
		procs = append(procs, cmd)
		dests = append(dests, dest)
	}
	if err := waitEnds(timeline, "v1", len(dests), 2*time.Minute); err != nil {
		return res, err
	}
	for _, p := range proxies {
		p.reset()
	}
	if _, err := st.Publish(ctx, "bench", key, big, 0); err != nil {
		return res, err
	}
	published := float64(time.Now().UnixNano()) / 1e9
	if err := waitEnds(timeline, "v2", len(dests), 10*time.Minute); err != nil {
		return res, err
	}
	spans := readTimeline(timeline, "v2")
	last := 0.0
	for _, sp := range spans {
		last = max(last, sp[1])
		res.hooks += sp[1] - sp[0]
	}
	res.wall = last - published
	for _, p := range proxies {
		res.rate += p.achieved() / float64(len(proxies)) / (1 << 20)
	}
	return res, nil
}

// waitEnds waits until n after hooks have ended for version v.
func waitEnds(timeline, v string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ended := 0
		for _, sp := range readTimeline(timeline, v) {
			if sp[1] > 0 {
				ended++
			}
		}
		if ended == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s, %d of %d hosts on %s", timeout, ended, n, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readTimeline returns each host's update to v: its before hook's start
// and its after hook's end.
func readTimeline(path, v string) map[string][2]float64 {
	b, _ := os.ReadFile(path)
	out := map[string][2]float64{}
	for _, l := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(l))
		if len(f) != 4 || f[3] != v {
			continue
		}
		ts, _ := strconv.ParseFloat(f[0], 64)
		sp := out[f[2]]
		if f[1] == "start" {
			sp[0] = ts
		} else {
			sp[1] = ts
		}
		out[f[2]] = sp
	}
	return out
}

// proxy is one host's link to the store: a TCP proxy whose responses
// are limited to rate bytes a second, shared by its connections.
type proxy struct {
	ln     net.Listener
	target string
	rate   float64

	mu   sync.Mutex
	next time.Time // when the link is free again
	// The bursts of bytes sent since reset (writes less than 200 ms
	// apart): the current one, and the largest, the release's download.
	cur, best burst
}

type burst struct {
	bytes       int64
	first, last time.Time
}

// reset starts counting what goes through anew.
func (p *proxy) reset() {
	p.mu.Lock()
	p.cur, p.best = burst{}, burst{}
	p.mu.Unlock()
}

// achieved is the bytes a second of the largest burst since reset: the
// release's download (the polls between are a few hundred bytes).
func (p *proxy) achieved() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.best.last.Sub(p.best.first).Seconds(); d > 0 {
		return float64(p.best.bytes) / d
	}
	return 0
}

func (p *proxy) sent(n int) {
	p.mu.Lock()
	now := time.Now()
	if now.Sub(p.cur.last) > 200*time.Millisecond {
		p.cur = burst{first: now}
	}
	p.cur.last = now
	p.cur.bytes += int64(n)
	if p.cur.bytes > p.best.bytes {
		p.best = p.cur
	}
	p.mu.Unlock()
}

func newProxy(target string, mibps int) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, rate: float64(mibps) * (1 << 20)}
	go p.serve()
	return p, nil
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }
func (p *proxy) Close()       { p.ln.Close() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) handle(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.wait(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			p.sent(n)
		}
		if err != nil {
			return
		}
	}
}

// wait holds n bytes until the link has room for them.
func (p *proxy) wait(n int) {
	if p.rate <= 0 {
		return
	}
	p.mu.Lock()
	// A sleep that overshot is made up within the next 20 ms: the link
	// is idle only when nothing is sent.
	if floor := time.Now().Add(-20 * time.Millisecond); p.next.Before(floor) {
		p.next = floor
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	until := p.next
	p.mu.Unlock()
	time.Sleep(time.Until(until))
}
