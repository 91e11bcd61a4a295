package agent

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the local status endpoint:
//
//	GET  /v1/status                 JSON, one entry per service
//	GET  /metrics                   Prometheus
//	POST /v1/services/NAME/check    check NAME now (within its error back-off;
//	                                ?force skips the back-off: unix socket only)
//
// On the unix socket (mode 0660: root and the agent's group) every route
// is served; on TCP only the GET routes, unless a status token is set,
// which a POST must then carry as a bearer token. It outlives reloads:
// SetAgent swaps the agent it reports on.
type Server struct {
	mu      sync.RWMutex
	agent   *Agent
	node    string
	version string

	reg        *prometheus.Registry
	checks     *prometheus.CounterVec
	updates    *prometheus.CounterVec
	failures   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	downloaded *prometheus.CounterVec
}

// NewServer makes the status server of an agent of version.
func NewServer(version string) *Server {
	// A registry of its own: the agent's metrics only, no Go runtime or
	// process collectors.
	r := prometheus.NewRegistry()
	s := &Server{version: version, reg: r}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		r.MustRegister(c)
		return c
	}
	s.checks = counter("dropship_checks_total",
		"Artifact checks, by service and result (noop, skipped, deferred, installed, failed, error).", "service", "result")
	s.updates = counter("dropship_updates_total",
		"Updates attempted, by service and result (installed, failed).", "service", "result")
	s.failures = counter("dropship_update_failures_total",
		"Failed updates, by service and the phase that failed.", "service", "phase")
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dropship_update_duration_seconds",
		Help:    "Duration of attempted updates, from the check to the end of the health checks.",
		Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}}, []string{"service"})
	r.MustRegister(s.duration)
	s.downloaded = counter("dropship_downloaded_bytes_total",
		"Bytes of artifacts downloaded and verified.", "service")
	r.MustRegister(releaseAges{s}, deferredNow{s})
	return s
}

// SetAgent points the server at a (new) agent.
func (s *Server) SetAgent(a *Agent) {
	s.mu.Lock()
	s.agent, s.node = a, a.cfg.NodeName
	s.mu.Unlock()
}

func (s *Server) current() *Agent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.agent
}

// Checked implements Observer.
func (s *Server) Checked(service string, out Outcome) {
	s.checks.WithLabelValues(service, string(out.Result)).Inc()
	if out.Result == ResultInstalled || out.Result == ResultFailed {
		s.updates.WithLabelValues(service, string(out.Result)).Inc()
		s.duration.WithLabelValues(service).Observe(out.Duration.Seconds())
	}
	if out.Result == ResultFailed {
		s.failures.WithLabelValues(service, string(out.Phase)).Inc()
	}
}

// Downloaded implements Observer.
func (s *Server) Downloaded(service string, n int64) {
	s.downloaded.WithLabelValues(service).Add(float64(n))
}

// releaseAges reports, at scrape time, how long each service's current
// release has been installed.
type releaseAges struct{ s *Server }

var releaseAgeDesc = prometheus.NewDesc("dropship_release_age_seconds",
	"Seconds since the current release of the service was installed.", []string{"service"}, nil)

func (releaseAges) Describe(ch chan<- *prometheus.Desc) { ch <- releaseAgeDesc }

func (g releaseAges) Collect(ch chan<- prometheus.Metric) {
	a := g.s.current()
	if a == nil {
		return
	}
	for _, run := range a.runners {
		st, err := LoadState(run.lay.dir, run.svc.Name)
		if err != nil || st.Release == "" {
			continue
		}
		if rel, ok := st.release(st.Release); ok {
			ch <- prometheus.MustNewConstMetric(releaseAgeDesc, prometheus.GaugeValue, time.Since(rel.Installed).Seconds(), run.svc.Name)
		}
	}
}

// StatusReport is the body of GET /v1/status.
type StatusReport struct {
	Node     string   `json:"node"`
	Version  string   `json:"version"`
	Services []Status `json:"services"`
}

// Access is who may use the POST routes of a listener.
type Access struct {
	Unix  bool   // the unix socket: its file mode is the guard
	Token string // TCP: POSTs need "Authorization: Bearer <Token>"; "" refuses them
}

// maxBody bounds what a request may send: the routes take no body.
const maxBody = 1 << 10

// Handler serves the endpoints under the access rules of one listener.
func (s *Server) Handler(acc Access) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		rep := StatusReport{Node: s.node, Version: s.version, Services: []Status{}}
		if a := s.current(); a != nil {
			rep.Node = a.cfg.NodeName
			for _, run := range a.runners {
				st := run.Status()
				if disk, err := LoadState(run.lay.dir, run.svc.Name); err == nil {
					st.Checksum, st.Release = disk.Checksum, disk.Release
				}
				rep.Services = append(rep.Services, st)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("POST /v1/services/{name}/check", func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if !acc.Unix {
			if acc.Token == "" {
				http.Error(w, "this listener is read-only: set status_token_file to allow checks over TCP", http.StatusForbidden)
				return
			}
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(acc.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", "Bearer")
				http.Error(w, "a bearer token is required", http.StatusUnauthorized)
				return
			}
		}
		force := r.URL.Query().Has("force")
		if force && !acc.Unix {
			http.Error(w, "?force is taken on the unix socket only", http.StatusForbidden)
			return
		}
		a := s.current()
		if a == nil || !a.trigger(r.PathValue("name"), force) {
			http.Error(w, fmt.Sprintf("no service %q", r.PathValue("name")), http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "check of %s queued\n", r.PathValue("name"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

// StatusAddr resolves status_addr: "host:port" for TCP, else a unix
// socket path; empty means <state_path>/dropship.sock.
func StatusAddr(cfg *Config) (network, addr string) {
	a := cfg.StatusAddr
	switch {
	case a == "":
		return "unix", filepath.Join(cfg.StatePath, "dropship.sock")
	case strings.HasPrefix(a, "unix:"):
		return "unix", strings.TrimPrefix(a, "unix:")
	case strings.HasPrefix(a, "/") || strings.HasPrefix(a, "."):
		return "unix", a
	}
	return "tcp", a
}

// HTTPServer is the status server on a listener, with timeouts: a client
// that stalls or keeps a connection idle is dropped.
func (s *Server) HTTPServer(acc Access) *http.Server {
	return &http.Server{Handler: s.Handler(acc), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}
}

// Listen opens the status endpoint's listener. A stale socket of a dead
// agent is replaced; one a live agent answers on is not.
func Listen(cfg *Config) (net.Listener, error) {
	network, addr := StatusAddr(cfg)
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, err
		}
		if c, err := net.Dial("unix", addr); err == nil {
			c.Close()
			return nil, fmt.Errorf("status socket %s: another agent is running", addr)
		}
		os.Remove(addr)
		l, err := net.Listen("unix", addr)
		if err != nil {
			return nil, fmt.Errorf("status socket %s: %w", addr, err)
		}
		// Root and the agent's group may use it (it triggers checks); the
		// agent runs as root, so that group is root's unless changed.
		if err := os.Chmod(addr, 0o660); err != nil {
			l.Close()
			return nil, fmt.Errorf("status socket %s: %w", addr, err)
		}
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("status address %s: %w", addr, err)
	}
	return l, nil
}

var _ Observer = (*Server)(nil)
