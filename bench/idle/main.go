// Command idle measures the agent at rest: resident memory and CPU time
// with -services services configured, each installed once, checking every
// -interval for -duration.
//
//	go run ./bench/idle [-services 10] [-interval 10s] [-duration 10m] [-source file|s3]
//
// The agent is built as `make build` builds it. With -source file it
// watches local files, so the figures are the agent's own; with -source s3
// each service watches an object in a MinIO this program starts (one HEAD
// per check), so they include the HTTP client's. It prints VmRSS (with its anonymous and file-backed
// parts) 30 s after start and then every minute, the peak, and the CPU
// time spent from the first sample to the last.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dropshipd/dropship/bench/internal/benchrig"
)

var (
	services = flag.Int("services", 10, "services to configure")
	interval = flag.Duration("interval", 10*time.Second, "check interval")
	duration = flag.Duration("duration", 10*time.Minute, "how long to watch the idle agent")
	work     = flag.String("dir", "", "work directory (default: a new temporary one)")
	source   = flag.String("source", "file", "file (local files) or s3 (objects in MinIO)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := *work
	if dir == "" {
		d, err := os.MkdirTemp("", "dropship-idle-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(dir, "dropship")
	build := exec.Command("make", "build", "OUT="+bin)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("make build: %w", err)
	}

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "state_path = %q\n", filepath.Join(dir, "state"))
	var put func(i int, file string) (string, error) // the artifact block's location keys
	switch *source {
	case "file":
		put = func(_ int, file string) (string, error) {
			return fmt.Sprintf("artifact \"file\" {\n    path        = %q", file), nil
		}
	case "s3":
		ctx := context.Background()
		srv, err := benchrig.StartMinIO(ctx, "idle")
		if err != nil {
			return fmt.Errorf("MinIO (make rig installs it): %w", err)
		}
		defer srv.Stop()
		minio, store := srv.MinIO, srv.Store
		fmt.Fprintf(&cfg, "repo \"s3\" {\n  endpoint = %q\n  access_key = %q\n  secret_key = %q\n}\n", minio.Endpoint, minio.AccessKey, minio.SecretKey)
		put = func(i int, file string) (string, error) {
			key := fmt.Sprintf("svc%d/app.tar.gz", i)
			_, err := store.Publish(ctx, "idle", key, file, 0)
			return fmt.Sprintf("artifact \"s3\" {\n    bucket      = \"idle\"\n    path        = %q", key), err
		}
	default:
		return fmt.Errorf("-source %q: want file or s3", *source)
	}
	for i := 1; i <= *services; i++ {
		art := filepath.Join(dir, "store", fmt.Sprintf("svc%d", i), "app.tar.gz")
		if err := writeRelease(art, i); err != nil {
			return err
		}
		where, err := put(i, art)
		if err != nil {
			return err
		}
		fmt.Fprintf(&cfg, `service "svc%d" {
  check_interval = %q
  %s
    destination = %q
  }
  after "script" { command = "true" }
}
`, i, interval.String(), where, filepath.Join(dir, "srv", fmt.Sprintf("svc%d", i)))
	}
	cfgPath := filepath.Join(dir, "dropship.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return err
	}

	agent := exec.Command(bin, "agent", "-c", cfgPath, "--log-level", "warn")
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
	}()
	pid := agent.Process.Pid
	fmt.Printf("%d services (%s source), check interval %s, watching for %s\n", *services, *source, *interval, *duration)
	fmt.Printf("%8s %10s %10s %10s %9s %8s\n", "time", "VmRSS", "anon", "file", "installed", "CPU")

	time.Sleep(30 * time.Second)
	start := time.Now()
	cpu0, err := cpuTime(pid)
	if err != nil {
		return err
	}
	var first, last map[string]int
	for {
		st, err := status(pid)
		if err != nil {
			return err
		}
		cpu, _ := cpuTime(pid)
		installed, _ := filepath.Glob(filepath.Join(dir, "srv", "*"))
		elapsed := time.Since(start).Round(time.Second) + 30*time.Second
		fmt.Printf("%8s %10s %10s %10s %9d %7.2fs\n", elapsed, mib(st["VmRSS"]), mib(st["RssAnon"]), mib(st["RssFile"]), len(installed), (cpu - cpu0).Seconds())
		if first == nil {
			first = st
			if len(installed) != *services {
				return fmt.Errorf("only %d of %d services installed after 30 s", len(installed), *services)
			}
		}
		last = st
		if time.Since(start) >= *duration {
			break
		}
		time.Sleep(min(time.Minute, *duration-time.Since(start)))
	}
	cpu, _ := cpuTime(pid)
	fmt.Printf("\nafter the installs: %s resident; after %s idle: %s; peak %s\n",
		mib(first["VmRSS"]), duration.String(), mib(last["VmRSS"]), mib(last["VmHWM"]))
	fmt.Printf("CPU time over %s idle: %.2f s (%d checks)\n", time.Since(start).Round(time.Second), (cpu - cpu0).Seconds(),
		int(time.Since(start) / *interval)**services)
	return nil
}

func mib(kb int) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// status reads the kB fields of /proc/PID/status.
func status(pid int) (map[string]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("the agent exited: %w", err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			out[k], _ = strconv.Atoi(f[0])
		}
	}
	return out, nil
}

// cpuTime is user plus system time of the process, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; fields count from after it.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clkTck, nil
}

// writeRelease writes a small release: a VERSION file and a script.
func writeRelease(path string, n int) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range []struct {
		name, body string
		mode       int64
	}{{"VERSION", fmt.Sprintf("svc%d v1\n", n), 0o644}, {"bin/run", "#!/bin/sh\nexec sleep 1\n", 0o755}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), ModTime: time.Now()})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	zw.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
