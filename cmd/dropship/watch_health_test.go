package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// healthByHost answers /health/HOST: 200, or 503 once the test says the
// host's process died.
type healthByHost struct {
	mu     sync.Mutex
	dead   map[string]bool
	probes map[string]int // probes answered, by host
}

func (h *healthByHost) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(r.URL.Path, "/health/")
	h.mu.Lock()
	dead := h.dead[host]
	h.probes[host]++
	h.mu.Unlock()
	if dead {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok"))
}

func (h *healthByHost) answered(host string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.probes[host]
}

func (h *healthByHost) kill(host string) {
	h.mu.Lock()
	h.dead[host] = true
	h.mu.Unlock()
}

var logTime = regexp.MustCompile(`time=(\S+)`)

// lineTime is the time of the first line of log, after mark, holding
// every one of parts.
func lineTime(t *testing.T, log []byte, mark int64, parts ...string) time.Time {
	t.Helper()
	for _, line := range strings.Split(string(log[mark:]), "\n") {
		if hasLine(line, parts) {
			m := logTime.FindStringSubmatch(line)
			if m == nil {
				break
			}
			ts, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil {
				t.Fatal(err)
			}
			return ts
		}
	}
	t.Fatalf("no line with %q in:\n%s", parts, tailOf(log[mark:]))
	return time.Time{}
}

// Real agents in a real Consul: a release passes its health check at the
// switch and a few watch probes, then its process dies, inside the watch
// window. Its
// host rolls back at the failed probe and trips the breaker; no other
// host ever starts it.
func TestWatchRollsBackTheFleet(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := &healthByHost{dead: map[string]bool{}, probes: map[string]int{}}
	srv := &http.Server{Handler: health}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	f := newFleet(t, 3, 1, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	f.stopAll()
	for _, h := range f.hosts {
		h.withBlock(t, fmt.Sprintf(`  check "http" {
    url            = "http://%s/health/{{.Hostname}}"
    retries        = 2
    interval       = "500ms"
    watch          = "5m"
    watch_interval = "1s"
  }`, ln.Addr()))
		h.cmd = nil
	}
	f.startAll()
	marks := f.marks()
	f.publish("v2", false)
	var first *host // the host that took the slot
	deadline := time.Now().Add(60 * time.Second)
	for first == nil {
		for _, h := range f.hosts {
			b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
			if hasLine(string(b[min(marks[h], int64(len(b))):]), []string{"watching the release's health"}) {
				first = h
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no host started watching v2")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The release runs healthy for a while (the watch probes it and it
	// answers), then its process dies.
	watched := health.answered(first.name)
	testutil.Eventually(t, 60*time.Second, func() error {
		if n := health.answered(first.name) - watched; n < 3 {
			return fmt.Errorf("the watch has probed %s %d times since it began, want 3", first.name, n)
		}
		return nil
	})
	died := time.Now()
	health.kill(first.name)
	f.waitAll([]*host{first}, "v1", 60*time.Second)
	f.waitLog([]*host{first}, marks, "msg=\"rolled back\"")
	log, _ := os.ReadFile(filepath.Join(f.dir, first.name+".log"))
	failed := lineTime(t, log, marks[first], "watch: probe failed")
	back := lineTime(t, log, marks[first], "msg=\"rolled back\"")
	t.Logf("%s: process died, probe failed %s later; from the failed probe to back on v1 (after hooks run): %s",
		first.name, failed.Sub(died).Round(time.Millisecond), back.Sub(failed).Round(time.Millisecond))
	if d := back.Sub(failed); d > 5*time.Second {
		t.Errorf("rolled back %s after the failed probe, want within 5 s", d)
	}

	var others []*host
	for _, h := range f.hosts {
		if h != first {
			others = append(others, h)
		}
	}
	f.waitLog(others, f.marks(), "result=skipped", "failed on "+first.name)
	_, starts := f.timeline()
	sum := f.storeMD5(t)
	if len(starts[sum]) != 1 {
		t.Fatalf("v2 was started by %v, want only %s", starts[sum], first.name)
	}
	for _, h := range f.hosts {
		if h.version() != "v1" {
			t.Fatalf("%s runs %q, want v1", h.name, h.version())
		}
	}
}

// watch = "bake": each host of a wave watches its health for the bake,
// with its slot held, and the next wave starts once the wave reports: the
// watch served the bake, so it is not waited for twice.
func TestWatchThroughTheBake(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := &healthByHost{dead: map[string]bool{}, probes: map[string]int{}}
	srv := &http.Server{Handler: health}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	f := newFleet(t, 3, 1, c, fmt.Sprintf(`
  rollout {
    canary = 1
    waves  = ["100%%"]
    bake   = "3s"
  }
  check "http" {
    url            = "http://%s/health/{{.Hostname}}"
    watch          = "bake"
    watch_interval = "500ms"
  }`, ln.Addr()))
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.waitEnds("v1", 3)
	marks := f.marks()
	sum := f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 90*time.Second)
	f.waitInstalled(f.hosts, sum)

	w := f.waves(sum)
	if len(w["canary"]) != 1 || len(w["1"]) != 2 {
		t.Fatalf("waves %v: want 1 canary and 2 more", w)
	}
	var canary *host
	for _, h := range f.hosts {
		if h.name == w["canary"][0] {
			canary = h
		}
	}
	log, _ := os.ReadFile(filepath.Join(f.dir, canary.name+".log"))
	lineTime(t, log, marks[canary], "watching the release's health", "window=3s", sum)
	closed := lineTime(t, log, marks[canary], "watch window closed", sum)
	_, starts := f.timeline()
	if len(starts[sum]) != 3 {
		t.Fatalf("v2 started by %v, want 3 hosts", starts[sum])
	}
	us, _ := f.timeline()
	for _, u := range us[len(us)-3:] {
		if u.node == canary.name {
			continue
		}
		start := time.Unix(0, int64(u.start*1e9))
		if start.Before(closed) {
			t.Errorf("%s started v2 at %s, before the canary's watch closed at %s", u.node, start.Format(time.RFC3339Nano), closed.Format(time.RFC3339Nano))
		}
		for _, h := range f.hosts {
			if h.name == u.node && strings.Contains(f.logSince(h, marks), "baking wave canary") {
				t.Errorf("%s waited a bake after the canary watched through it:\n%s", h.name, tailOf([]byte(f.logSince(h, marks))))
			}
		}
	}
}
