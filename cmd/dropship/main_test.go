package main

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var (
	bin     string
	servers rig.Servers
	// errorRatio is a metric the tests set, scraped by a real Prometheus
	// every second.
	errorRatio = prometheus.NewGauge(prometheus.GaugeOpts{Name: "app_error_ratio", Help: "set by the test"})
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dropship-cli")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "dropship")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(errorRatio)
	metrics, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(metrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	code := rig.Run(m, &servers, rig.Need{MinIO: true, Swift: true, Consul: true, ACLConsul: true, Graphite: true,
		Prometheus: []string{metrics.Addr().String()}})
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runEnv(t, nil, args...)
}

// runEnv is run with the passphrase and operator key variables taken out
// of the environment (a developer's own must not sign or unlock anything
// in a test), and env (KEY=VALUE) added: a test passes the command its
// own environment rather than changing the process's, so that it can run
// in parallel with others.
func runEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, passwordEnv+"=") && !strings.HasPrefix(kv, operatorKeyEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestHelpOnEveryCommand(t *testing.T) {
	t.Parallel()
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	for _, c := range root.Commands() {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		out, _, code := run(t, c.Name(), "--help")
		about := c.Short
		if c.Long != "" {
			about = strings.SplitN(c.Long, "\n", 2)[0]
		}
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, about) {
			t.Errorf("%s --help: code %d\n%s", c.Name(), code, out)
		}
		for _, sub := range c.Commands() {
			out, _, code := run(t, c.Name(), sub.Name(), "--help")
			if code != 0 || !strings.Contains(out, "Usage:") {
				t.Errorf("%s %s --help: code %d", c.Name(), sub.Name(), code)
			}
		}
	}
}

func writeConfig(t *testing.T, afterCmd string) (cfg, store, dest string) {
	dir := t.TempDir()
	store, dest = filepath.Join(dir, "store", "app.tar.gz"), filepath.Join(dir, "srv", "app")
	cfg = filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, []byte(`state_path = "state"
service "app" {
  artifact "file" {
    path        = "store/app.tar.gz"
    destination = "srv/app"
  }
  after "script" { command = "`+afterCmd+`" }
}
`), 0o644)
	return
}

func TestValidate(t *testing.T) {
	t.Parallel()
	cfg, _, _ := writeConfig(t, "true")
	out, errOut, code := run(t, "validate", "--config", cfg)
	if code != 0 || !strings.Contains(out, "ok (1 services: app)") || errOut != "" {
		t.Fatalf("valid config: code %d\n%s%s", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.hcl")
	os.WriteFile(bad, []byte("service \"x\" {\n  check_interval = \"often\"\n}\n"), 0o644)
	_, errOut, code = run(t, "validate", "-c", bad)
	if code != 2 || !strings.Contains(errOut, bad+":2:20: error: Invalid duration") || !strings.Contains(errOut, bad+":1:13: error: Missing artifact block") {
		t.Fatalf("bad config: code %d\n%s", code, errOut)
	}
	_, errOut, code = run(t, "validate", "-c", filepath.Join(t.TempDir(), "missing.hcl"))
	if code != 2 || !strings.Contains(errOut, "missing.hcl") {
		t.Fatalf("missing config: code %d\n%s", code, errOut)
	}
}

func TestAgentOnceExitStatus(t *testing.T) {
	t.Parallel()
	cfg, store, dest := writeConfig(t, "test -f VERSION")
	testutil.WriteFile(t, store, testutil.TarGz(t, testutil.File{Name: "VERSION", Body: "1"}))
	if _, errOut, code := run(t, "agent", "--once", "-c", cfg); code != 0 {
		t.Fatalf("install: code %d\n%s", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "VERSION")); string(b) != "1" {
		t.Fatal("not installed")
	}
	// A release whose after hook fails: exit 1, and v1 stays.
	testutil.WriteFile(t, store, testutil.TarGz(t, testutil.File{Name: "NOVERSION", Body: "2"}))
	if _, errOut, code := run(t, "agent", "--once", "-c", cfg); code != 1 || !strings.Contains(errOut, "rolled back") {
		t.Fatalf("failed update: code %d\n%s", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "VERSION")); string(b) != "1" {
		t.Fatal("failed release left installed")
	}
	out, _, code := run(t, "history", "-c", cfg, "app")
	if code != 0 || !strings.Contains(out, "failure") || !strings.Contains(out, "success") {
		t.Fatalf("history: %d\n%s", code, out)
	}
	if _, errOut, code := run(t, "rollback", "-c", cfg, "app"); code == 0 || !strings.Contains(errOut, "no release older") {
		t.Fatalf("rollback with one release: %d %s", code, errOut)
	}
	if _, errOut, code := run(t, "history", "-c", cfg, "nope"); code != 1 || !strings.Contains(errOut, `no service "nope"`) {
		t.Fatalf("unknown service: %d %s", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, _, code := run(t, "version")
	if code != 0 || !strings.HasPrefix(out, "dropship ") {
		t.Fatalf("%d %q", code, out)
	}
}

// The ancestor's two README files (examples/ancestor, with only
// service_path pointed at the copy beside it) load with a warning for each
// old key that names the new one.
func TestAncestorConfigLoads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src, _ := os.ReadFile("../../examples/ancestor/dropship.hcl")
	cfg := filepath.Join(dir, "dropship.hcl")
	os.WriteFile(cfg, bytes.Replace(src, []byte(`"/etc/dropship.d/services"`), []byte(`"services"`), 1), 0o644)
	os.MkdirAll(filepath.Join(dir, "services"), 0o755)
	svc, _ := os.ReadFile("../../examples/ancestor/services/my-service.hcl")
	os.WriteFile(filepath.Join(dir, "services", "my-service.hcl"), svc, 0o644)
	out, errOut, code := run(t, "validate", "-c", cfg)
	if code != 0 || !strings.Contains(out, "1 services: my-service") {
		t.Fatalf("code %d\n%s%s", code, out, errOut)
	}
	for _, w := range []string{`"accessKey" is the old name of "access_key"`, `"secret" is the old name of "secret_key"`,
		`"name" is the old name of "region"`, `"sequentialUpdates" is the old name of "sequential"`, `"checkInterval" is the old name of "check_interval"`} {
		if !strings.Contains(errOut, w) {
			t.Errorf("no warning %q in\n%s", w, errOut)
		}
	}
}

// Every example a user copies passes `dropship validate`.
func TestExamplesValidate(t *testing.T) {
	t.Parallel()
	examples := []string{
		"quickstart/dropship.hcl", "s3.hcl", "cloudfiles.hcl", "rolling-consul.hcl", "rollout.hcl",
		"nginx-cutover/dropship.hcl", "ancestor/dropship.hcl",
	}
	for _, ex := range examples {
		t.Run(ex, func(t *testing.T) {
			out, errOut, code := run(t, "validate", "-c", filepath.Join("../../examples", ex))
			if code != 0 || !strings.Contains(out, ": ok (") {
				t.Fatalf("code %d\n%s%s", code, out, errOut)
			}
			if ex != "ancestor/dropship.hcl" && strings.Contains(errOut, "warning") {
				t.Fatalf("an example uses deprecated keys:\n%s", errOut)
			}
		})
	}
	if out, err := exec.Command("sh", "-n", "../../examples/nginx-cutover/cutover.sh").CombinedOutput(); err != nil {
		t.Fatalf("cutover.sh: %v %s", err, out)
	}
}

// The developer's own DROPSHIP_OPERATOR_KEY and DROPSHIP_KEY_PASSWORD (as
// the README suggests exporting) do not reach the commands the tests run:
// a hold would otherwise load that key, or fail on it. Not parallel: it
// sets the process's environment.
func TestCommandsRunWithoutTheDevelopersKeys(t *testing.T) {
	t.Setenv(operatorKeyEnv, filepath.Join(t.TempDir(), "missing.key"))
	t.Setenv(passwordEnv, "secret")
	cfg := filepath.Join(t.TempDir(), "c.hcl")
	testutil.WriteFile(t, cfg, []byte(`node_name = "t"
lock "consul" {
  address = "127.0.0.1:1"
}
`))
	_, errOut, code := run(t, "hold", "app", "--reason", "r", "-c", cfg)
	if code == 0 || strings.Contains(errOut, "operator key") {
		t.Fatalf("hold with the developer's operator key in the environment: exit %d\n%s", code, errOut)
	}
}
