package cutover_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// TestZeroDowntimeCutover deploys releases through examples/nginx-cutover's
// hook behind a real nginx while clients keep asking, and checks that not
// one request fails, that every answer comes from a release that passed
// its health check, that a release that never gets healthy is never
// behind nginx, and that after each deploy only the new release runs.
func TestZeroDowntimeCutover(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nginx is not installed (make rig installs nginx-light)")
		}
		t.Skip("nginx is not installed; run make rig")
	}
	dir := t.TempDir()
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "dropship")
	app := filepath.Join(dir, "app")
	for out, pkg := range map[string]string{bin: "../../cmd/dropship", app: "./testdata/app"} {
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	hook, _ := filepath.Abs("cutover.sh")
	ports := freePorts(t, 4)
	front, portA, portB, dead := ports[0], ports[1], ports[2], ports[3]

	// nginx, unprivileged paths of its own; the upstream first points at
	// a port nothing listens on.
	ng := filepath.Join(dir, "nginx")
	os.MkdirAll(filepath.Join(ng, "logs"), 0o755)
	upstream := filepath.Join(ng, "upstream.conf")
	os.WriteFile(upstream, []byte(fmt.Sprintf("upstream app {\n    server 127.0.0.1:%d;\n}\n", dead)), 0o644)
	conf := filepath.Join(ng, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    include %[2]s;
    server {
        listen 127.0.0.1:%[3]d;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, ng, upstream, front)), 0o644)
	ngx := fmt.Sprintf("%s -p %s -c %s -e %s/logs/error.log", nginx, ng, conf, ng)
	if b, err := exec.Command("sh", "-c", ngx).CombinedOutput(); err != nil {
		t.Fatalf("start nginx: %v\n%s", err, b)
	}
	t.Cleanup(func() { exec.Command("sh", "-c", ngx+" -s stop").Run() })

	// The agent, with the example's hook and plain process starts.
	run := filepath.Join(dir, "run")
	os.MkdirAll(run, 0o755)
	store := filepath.Join(dir, "store", "app.tar.gz")
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
service "app" {
  check_interval = "1s"
  artifact "file" {
    path        = %q
    destination = %q
  }
  after "script" {
    command = %q
    timeout = "60s"
    env = {
      PORTS          = "%d %d"
      HEALTH_PATH    = "/health"
      HEALTH_TRIES   = "5"
      DRAIN_SECONDS  = "1"
      NGINX_UPSTREAM = %q
      START_RELEASE  = "setsid ./bin/app -port $1 -version $(cat VERSION) $(cat FLAGS 2>/dev/null) >>%s/app-$1.log 2>&1 </dev/null & echo $! >%s/app-$1.pid"
      STOP_RELEASE   = "pid=$(cat %s/app-$1.pid) && kill -TERM $pid; for i in $(seq 200); do kill -0 $pid 2>/dev/null || break; grep -q ') Z' /proc/$pid/stat 2>/dev/null && break; sleep 0.05; done"
      NGINX_TEST     = "%s -t -q"
      NGINX_RELOAD   = "%s -s reload"
    }
  }
  check "http" {
    url      = "http://127.0.0.1:%d/health"
    retries  = 5
    interval = "200ms"
  }
}
`, filepath.Join(dir, "state"), store, filepath.Join(dir, "srv", "app"), hook, portA, portB, upstream, run, run, run, ngx, ngx, front)), 0o644)
	publish := func(version string, healthy bool) {
		t.Helper()
		body, _ := os.ReadFile(app)
		files := map[string][]byte{"VERSION": []byte(version), "bin/app": body}
		if !healthy {
			files["FLAGS"] = []byte("-healthy=false")
		}
		writeTarGz(t, store, files)
	}
	var logs syncBuffer
	agent := exec.Command(bin, "agent", "-c", cfg)
	agent.Stdout, agent.Stderr = &logs, &logs
	publish("v1", true)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Signal(os.Interrupt)
		agent.Wait()
		for _, p := range []int{portA, portB} {
			if b, err := os.ReadFile(fmt.Sprintf("%s/app-%d.pid", run, p)); err == nil {
				exec.Command("kill", strings.TrimSpace(string(b))).Run()
			}
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", front)
	waitFor(t, &logs, func() bool { return get(url) == "v1" && running(realDir) == "v1" })

	// Load through nginx for the whole time: keep-alive clients and
	// clients that open a connection per request.
	type result struct {
		sent, failed atomic.Int64
		mu           sync.Mutex
		seen         map[string]int64
		worst        time.Duration
		errs         []string
	}
	res := &result{seen: map[string]int64{}}
	// The load runs until the test stops it (bounded by the count below):
	// on a busy machine the cut-overs may take minutes.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: i%2 == 1}}
			for ctx.Err() == nil && res.sent.Load() < 500_000 {
				start := time.Now()
				resp, err := client.Get(url)
				res.sent.Add(1)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				d := time.Since(start)
				res.mu.Lock()
				if err != nil {
					res.failed.Add(1)
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err.Error())
					}
				} else {
					res.seen[string(body)]++
				}
				res.worst = max(res.worst, d)
				res.mu.Unlock()
			}
		}()
	}
	began := time.Now()
	for _, v := range []string{"v2", "v3"} {
		publish(v, true)
		// The new release serves, and once the drain is over it alone runs.
		waitFor(t, &logs, func() bool { return get(url) == v && running(realDir) == v })
		// Under load for a while: 1000 answers from it before the next.
		waitFor(t, &logs, func() bool { res.mu.Lock(); defer res.mu.Unlock(); return res.seen[v] >= 1000 })
	}
	// A release whose health never comes up: the hook fails, dropship
	// rolls back, and nginx never points at it.
	// v1, v2 and v3 installed: the agent logs an install once its checks
	// pass, a moment after nginx already answers with it.
	waitFor(t, &logs, func() bool { return strings.Count(logs.String(), "result=installed") >= 3 })
	installed := strings.Count(logs.String(), "result=installed")
	publish("bad", false)
	// The check line saying failed comes once the rollback is over: the
	// load goes on until 300 more requests have been answered after it.
	waitFor(t, &logs, func() bool { return strings.Contains(logs.String(), "result=failed") })
	waitFor(t, &logs, func() bool { return running(realDir) == "v3" })
	after := res.sent.Load()
	waitFor(t, &logs, func() bool { return res.sent.Load() >= after+300 })
	stop()
	wg.Wait()
	elapsed := time.Since(began)

	rate := float64(res.sent.Load()) / elapsed.Seconds()
	msg := fmt.Sprintf("%d requests in %.1f s (%.0f/s) across 2 cut-overs and 1 refused release: %d failed; answers by version %v; worst latency %s",
		res.sent.Load(), elapsed.Seconds(), rate, res.failed.Load(), res.seen, res.worst.Round(time.Millisecond))
	t.Log(msg)
	fmt.Println("cut-over under load:", msg)
	if res.failed.Load() != 0 {
		t.Errorf("requests failed: %v", res.errs)
	}
	if res.seen["bad"] != 0 {
		t.Errorf("the release that never got healthy answered %d requests", res.seen["bad"])
	}
	for v := range res.seen {
		if v != "v1" && v != "v2" && v != "v3" {
			t.Errorf("an answer from %q", v)
		}
	}
	if res.seen["v2"] == 0 || res.seen["v3"] == 0 {
		t.Errorf("the load did not span the cut-overs: %v", res.seen)
	}
	if n := strings.Count(logs.String(), "result=installed"); n != installed || get(url) != "v3" {
		t.Errorf("after the refused release: %d installs (was %d), nginx answers %q", n, installed, get(url))
	}
}

// get asks url once; "" on any failure.
func get(url string) string {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return ""
	}
	return string(b)
}

// running lists the versions of this test's app processes alive now
// (those working under dir: another run's, beside it, are not), joined by
// ","; zombies (a stopped release not yet reaped) do not count.
func running(dir string) string {
	var vs []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err != nil || !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasSuffix(args[0], "bin/app") {
			continue
		}
		for i, a := range args {
			if a == "-version" && i+1 < len(args) {
				vs = append(vs, args[i+1])
			}
		}
	}
	return strings.Join(vs, ",")
}

func waitFor(t *testing.T, logs *syncBuffer, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 60*time.Second, func() error {
		if !cond() {
			return fmt.Errorf("not yet; agent log:\n%s", tail(logs.String()))
		}
		return nil
	})
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

func freePorts(t *testing.T, n int) []int {
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func writeTarGz(t *testing.T, path string, files map[string][]byte) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		mode := int64(0o644)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write(body)
	}
	tw.Close()
	zw.Close()
	os.MkdirAll(filepath.Dir(path), 0o755)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Rename(tmp, path) // the agent never sees half a file
}

// syncBuffer is the agent's output, written by its copier while read.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
