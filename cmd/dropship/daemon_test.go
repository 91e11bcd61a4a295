package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// daemonEnv is a running `dropship agent` with its config, store and log.
type daemonEnv struct {
	t     *testing.T
	dir   string
	cfg   string
	store string
	dest  string
	log   *syncBuffer
	cmd   *exec.Cmd
}

// syncBuffer is written by the process's output copier while the test
// reads it.
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

func (s *syncBuffer) Bytes() []byte { return []byte(s.String()) }

func newDaemon(t *testing.T, service string) *daemonEnv {
	dir := t.TempDir()
	d := &daemonEnv{t: t, dir: dir, cfg: filepath.Join(dir, "dropship.hcl"), store: filepath.Join(dir, "store", "app.tar.gz"),
		dest: filepath.Join(dir, "srv", "app"), log: &syncBuffer{}}
	d.write(service)
	return d
}

func (d *daemonEnv) write(services string) {
	os.WriteFile(d.cfg, []byte(fmt.Sprintf("state_path = %q\n%s", filepath.Join(d.dir, "state"), services)), 0o644)
}

func (d *daemonEnv) service(name, hooks string) string {
	return fmt.Sprintf(`
service %q {
  check_interval = "200ms"
  artifact "file" {
    path        = %q
    destination = %q
  }
%s
}
`, name, d.store, d.dest, hooks)
}

func (d *daemonEnv) publish(v string) {
	testutil.WriteFile(d.t, d.store, testutil.TarGz(d.t, testutil.File{Name: "VERSION", Body: v}))
	later := time.Now().Add(time.Duration(len(v)) * time.Millisecond)
	os.Chtimes(d.store, later, later)
}

func (d *daemonEnv) start() {
	d.cmd = exec.Command(bin, "agent", "-c", d.cfg, "--log-level", "debug")
	d.cmd.Stderr, d.cmd.Stdout = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
	})
}

func (d *daemonEnv) version() string {
	b, _ := os.ReadFile(filepath.Join(d.dest, "VERSION"))
	return string(b)
}

func (d *daemonEnv) waitFor(what string, cond func() bool) {
	d.t.Helper()
	testutil.Eventually(d.t, 30*time.Second, func() error {
		if !cond() {
			return fmt.Errorf("waiting for %s\nlog:\n%s", what, tailOf(d.log.Bytes()))
		}
		return nil
	})
}

func (d *daemonEnv) client() *http.Client {
	sock := filepath.Join(d.dir, "state", "dropship.sock")
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

func (d *daemonEnv) status() agent.StatusReport {
	d.t.Helper()
	resp, err := d.client().Get("http://agent/v1/status")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep agent.StatusReport
	json.NewDecoder(resp.Body).Decode(&rep)
	return rep
}

func TestStatusAndMetricsAfterAnUpdate(t *testing.T) {
	t.Parallel()
	d := newDaemon(t, "")
	d.write(d.service("app", ""))
	d.publish("v1")
	d.start()
	d.waitFor("v1", func() bool { return d.version() == "v1" })
	d.waitFor("status", func() bool {
		rep := d.status()
		return len(rep.Services) == 1 && rep.Services[0].Release != "" && rep.Services[0].LastResult != ""
	})
	rep := d.status()
	s := rep.Services[0]
	if s.Service != "app" || s.Checksum == "" || s.LastCheck.IsZero() || s.NextCheck.IsZero() || s.Waiting || s.Holding {
		t.Fatalf("status %+v", s)
	}
	resp, err := d.client().Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("metrics content type %q", ct)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		for _, m := range fams[name].GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if maps.Equal(got, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue(), true
				case m.Gauge != nil:
					return m.Gauge.GetValue(), true
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount()), true
				}
			}
		}
		return 0, false
	}
	app := map[string]string{"service": "app"}
	installed := map[string]string{"service": "app", "result": "installed"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
	}{
		{"dropship_updates_total", installed, func(v float64) bool { return v == 1 }},
		{"dropship_checks_total", installed, func(v float64) bool { return v == 1 }},
		{"dropship_update_duration_seconds", app, func(v float64) bool { return v == 1 }},
		{"dropship_downloaded_bytes_total", app, func(v float64) bool { return v > 0 }},
		{"dropship_release_age_seconds", app, func(v float64) bool { return v >= 0 && v < 600 }},
	} {
		if v, found := value(c.name, c.labels); !found || !c.ok(v) {
			t.Errorf("metric %s%v = %v (found %v)", c.name, c.labels, v, found)
		}
	}
	// dropship status prints the table from the endpoint.
	out, errOut, code := run(t, "status", "-c", d.cfg)
	if code != 0 || !strings.Contains(out, "app") || !strings.Contains(out, s.Release) {
		t.Fatalf("dropship status: %d\n%s%s", code, out, errOut)
	}
	// POST …/check triggers a check now.
	if out, _, code := run(t, "status", "-c", d.cfg, "--check", "app"); code != 0 || !strings.Contains(out, "queued") {
		t.Fatalf("status --check: %d %s", code, out)
	}
	if _, errOut, code := run(t, "status", "-c", d.cfg, "--check", "nope"); code == 0 || !strings.Contains(errOut, "404") {
		t.Fatalf("check of unknown service: %d %s", code, errOut)
	}
}

func TestReloadGoodAndBadConfig(t *testing.T) {
	t.Parallel()
	d := newDaemon(t, "")
	d.write(d.service("app", ""))
	d.publish("v1")
	d.start()
	d.waitFor("v1", func() bool { return d.version() == "v1" })

	// A bad config is refused with its diagnostics; the agent goes on.
	os.WriteFile(d.cfg, []byte("service \"app\" {\n  check_interval = \"soon\"\n}\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitFor("refusal", func() bool { return strings.Contains(d.log.String(), "reload refused") })
	if !strings.Contains(d.log.String(), d.cfg+":2:20: error: Invalid duration") {
		t.Fatalf("diagnostics not logged:\n%s", tailOf(d.log.Bytes()))
	}
	d.publish("v2")
	d.waitFor("v2 under the old config", func() bool { return d.version() == "v2" })

	// A good config takes over: a second service appears.
	d.write(d.service("app", "") + strings.Replace(d.service("other", ""), d.dest, d.dest+"-other", 1))
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitFor("two services", func() bool { return len(d.status().Services) == 2 })
	d.waitFor("other installed", func() bool {
		b, _ := os.ReadFile(filepath.Join(d.dest+"-other", "VERSION"))
		return string(b) == "v2"
	})
}

func TestSIGTERMDuringUpdate(t *testing.T) {
	t.Parallel()
	t.Run("before the switch: abandoned", func(t *testing.T) {
		d := newDaemon(t, "")
		marker := filepath.Join(d.dir, "in-before")
		d.write(d.service("app", fmt.Sprintf(`  before "script" { command = "test -z \"$DROPSHIP_PREVIOUS_RELEASE_DIR\" || { touch %s; sleep 60; }" }`, marker)))
		d.publish("v1")
		d.start()
		d.waitFor("v1", func() bool { return d.version() == "v1" })
		d.publish("v2")
		d.waitFor("before hook", func() bool { _, err := os.Stat(marker); return err == nil })
		d.cmd.Process.Signal(syscall.SIGTERM)
		if err := d.cmd.Wait(); err != nil {
			t.Fatalf("exit: %v\n%s", err, tailOf(d.log.Bytes()))
		}
		if d.version() != "v1" {
			t.Fatalf("current %q after SIGTERM before the switch", d.version())
		}
		st, _ := agent.LoadState(filepath.Join(d.dir, "state", "app"), "app")
		if len(st.Failures) != 0 {
			t.Fatalf("a shutdown was recorded as a failure: %+v", st.Failures)
		}
		if left, _ := os.ReadDir(filepath.Join(d.dir, "state", "app", "staging")); len(left) != 0 {
			t.Fatalf("staging left: %v", left)
		}
	})
	t.Run("after the switch: hooks finish", func(t *testing.T) {
		d := newDaemon(t, "")
		marker, done := filepath.Join(d.dir, "in-after"), filepath.Join(d.dir, "after-done")
		d.write(d.service("app", fmt.Sprintf(`  after "script" { command = "if [ $(cat VERSION) = v2 ]; then touch %s; sleep 1; fi; cat VERSION > %s" }`, marker, done)))
		d.publish("v1")
		d.start()
		d.waitFor("v1", func() bool { return d.version() == "v1" })
		d.publish("v2")
		d.waitFor("after hook", func() bool { _, err := os.Stat(marker); return err == nil })
		d.cmd.Process.Signal(syscall.SIGTERM)
		if err := d.cmd.Wait(); err != nil {
			t.Fatalf("exit: %v", err)
		}
		if b, _ := os.ReadFile(done); string(b) != "v2" || d.version() != "v2" {
			t.Fatalf("after hook did not finish: %q, current %q\n%s", b, d.version(), tailOf(d.log.Bytes()))
		}
		st, _ := agent.LoadState(filepath.Join(d.dir, "state", "app"), "app")
		if st.Release == "" || len(st.Releases) != 2 {
			t.Fatalf("state not saved: %+v", st)
		}
	})
}
