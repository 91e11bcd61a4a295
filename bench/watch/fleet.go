package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dropshipd/dropship/bench/internal/benchrig"
	"github.com/dropshipd/dropship/internal/rig"
)

// counter is a reverse proxy in front of MinIO that counts HEADs.
type counter struct {
	heads atomic.Int64
	srv   *http.Server
	addr  string
}

func newCounter(target string) (*counter, error) {
	u, _ := url.Parse(target)
	c := &counter{}
	rp := httputil.NewSingleHostReverseProxy(u)
	port, err := rig.FreePort()
	if err != nil {
		return nil, err
	}
	c.addr = fmt.Sprintf("127.0.0.1:%d", port)
	c.srv = &http.Server{Addr: c.addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			c.heads.Add(1)
		}
		rp.ServeHTTP(w, r)
	})}
	go c.srv.ListenAndServe()
	return c, nil
}

func tarball(v string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "VERSION", Mode: 0o644, Size: int64(len(v)), Typeflag: tar.TypeReg})
	tw.Write([]byte(v))
	tw.Close()
	zw.Close()
	return b.Bytes()
}

// fleetBench runs hosts agents (separate processes, concurrency hosts)
// against MinIO and Consul: the time from the end of `dropship publish`
// to the last host's switch, and then the store requests per host per
// hour while idle, watch on (5 minute fallback poll) and off (10 s).
func fleetBench(hosts int, idle time.Duration) error {
	dir, err := os.MkdirTemp("", "dropship-watch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "dropship")
	if out, err := exec.Command("go", "build", "-tags", "nethttpomithttp2", "-o", bin, "./cmd/dropship").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	srv, err := benchrig.Start(ctx, "bench")
	if err != nil {
		return err
	}
	defer srv.Stop()
	m, c := srv.MinIO, srv.Consul
	proxy, err := newCounter(m.Endpoint)
	if err != nil {
		return err
	}
	defer proxy.srv.Close()

	write := func(name, extra string) string {
		p := filepath.Join(dir, name+".hcl")
		os.WriteFile(p, []byte(fmt.Sprintf(`state_path = %q
node_name  = %q
repo "s3" {
  endpoint   = "http://%s"
  access_key = %q
  secret_key = %q
}
lock "consul" {
  address = %q
  prefix  = "bench"
}
service "app" {
  sequential  = true
  concurrency = %d
  %s
  artifact "s3" {
    bucket      = "bench"
    path        = "app.tar.gz"
    destination = %q
  }
}
`, filepath.Join(dir, name, "state"), name, proxy.addr, m.AccessKey, m.SecretKey, c.Addr, hosts, extra,
			filepath.Join(dir, name, "srv"))), 0o600)
		return p
	}
	publish := func(cfg, v string) error {
		art := filepath.Join(dir, v+".tar.gz")
		os.WriteFile(art, tarball(v), 0o644)
		out, err := exec.Command(bin, "publish", "-c", cfg, art, "--to", "s3://bench/app.tar.gz").CombinedOutput()
		if err != nil {
			return fmt.Errorf("publish: %v\n%s", err, out)
		}
		return nil
	}
	version := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name, "srv", "VERSION"))
		return string(b)
	}
	var cfgs []string
	var procs []*exec.Cmd
	stop := func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
			p.Wait()
		}
		procs = nil
	}
	defer stop()
	for i := range hosts {
		cfgs = append(cfgs, write(fmt.Sprintf("host-%d", i), ""))
	}
	if err := publish(cfgs[0], "v1"); err != nil {
		return err
	}
	for _, cfg := range cfgs {
		cmd := exec.Command(bin, "agent", "-c", cfg)
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
	}
	waitAll := func(v string, d time.Duration) (time.Duration, error) {
		start := time.Now()
		for {
			done := 0
			for i := range hosts {
				if version(fmt.Sprintf("host-%d", i)) == v {
					done++
				}
			}
			if done == hosts {
				return time.Since(start), nil
			}
			if time.Since(start) > d {
				return 0, fmt.Errorf("%d of %d hosts on %s after %s", done, hosts, v, d)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := waitAll("v1", time.Minute); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // every watch is up
	fmt.Printf("publish -> installed, %d hosts (concurrency %d, poll every 5 min, watch on), 3 releases:\n", hosts, hosts)
	for _, v := range []string{"v2", "v3", "v4"} {
		if err := publish(cfgs[0], v); err != nil {
			return err
		}
		d, err := waitAll(v, time.Minute)
		if err != nil {
			return err
		}
		fmt.Printf("  %s: end of publish to the last host's switch: %s\n", v, d.Round(time.Millisecond))
	}

	// Idle: requests to the store per host per hour.
	idleRate := func(label, extra string) error {
		stop()
		for i := range hosts {
			cmd := exec.Command(bin, "agent", "-c", write(fmt.Sprintf("host-%d", i), extra))
			if err := cmd.Start(); err != nil {
				return err
			}
			procs = append(procs, cmd)
		}
		time.Sleep(3 * time.Second) // startup checks
		before := proxy.heads.Load()
		time.Sleep(idle)
		n := proxy.heads.Load() - before
		perHour := float64(n) / float64(hosts) * float64(time.Hour) / float64(idle)
		fmt.Printf("  idle, %s: %d HEADs from %d hosts in %s = %.0f per host per hour\n", label, n, hosts, idle, perHour)
		return nil
	}
	fmt.Println("store requests while idle:")
	if err := idleRate("watch on (5 min fallback poll)", ""); err != nil {
		return err
	}
	return idleRate("watch off, check_interval 10s", `watch = false
  check_interval = "10s"`)
}
