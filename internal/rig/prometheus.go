package rig

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Prometheus is a running Prometheus server (Debian's package) with a
// private config and storage, scraping the targets it was given every
// second.
type Prometheus struct {
	URL string // http://127.0.0.1:PORT
	procs
}

// StartPrometheus starts Prometheus scraping targets (host:port, path
// /metrics) every second, starting over on a new port if its is taken.
func StartPrometheus(targets ...string) (*Prometheus, error) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, fmt.Errorf("prometheus not installed (run `make rig`): %w", err)
	}
	return startOver("prometheus", func() (*Prometheus, error) { return startPrometheus(bin, targets) })
}

func startPrometheus(bin string, targets []string) (*Prometheus, error) {
	dir, err := os.MkdirTemp("", "rig-prometheus-")
	if err != nil {
		return nil, err
	}
	p := &Prometheus{}
	p.dirs = append(p.dirs, dir)
	ports, err := p.reserve(1)
	if err != nil {
		p.stop()
		return nil, err
	}
	port := ports[0]
	quoted := make([]string, len(targets))
	for i, t := range targets {
		quoted[i] = fmt.Sprintf("%q", t)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: rig
    scrape_interval: 1s
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		p.stop()
		return nil, err
	}
	p.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	cmd := exec.Command(bin, "--config.file", cfgPath, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", fmt.Sprintf("127.0.0.1:%d", port), "--log.level", "warn")
	pr, err := p.start(dir, "prometheus", cmd)
	if err != nil {
		p.stop()
		return nil, err
	}
	if err := awaitListening([]listener{{port, pr}}, 60*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("prometheus: %w", err)
	}
	if err := waitHTTP(p.URL+"/-/ready", 60*time.Second, ok200); err != nil {
		log := tail(filepath.Join(dir, "prometheus.log"))
		p.stop()
		return nil, fmt.Errorf("%w\n%s", err, log)
	}
	return p, nil
}

// Stop kills Prometheus and removes its data.
func (p *Prometheus) Stop() { p.stop() }
