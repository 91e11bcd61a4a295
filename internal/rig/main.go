package rig

import (
	"os"
	"sync"
	"testing"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// Need names the real servers a package's tests use. Each starts once,
// the first time a test asks for it, and stops after the last test.
type Need struct {
	MinIO, Swift, Consul, Graphite bool
	// ACLConsul is a Consul agent of its own whose ACLs deny by default.
	ACLConsul bool
	// Prometheus scrapes these targets (host:port, path /metrics).
	Prometheus []string
}

// Servers are a package's running servers; a test asks for one with
// servers.Consul(t) and so on. The zero value is ready for Main.
type Servers struct {
	need     Need
	minio    once[*MinIO]
	swift    once[*Swift]
	consul   once[*Consul]
	acl      once[*ACLConsul]
	graphite once[*Graphite]
	prom     once[*Prometheus]
}

// once starts a server the first time it is asked for.
type once[T interface{ Stop() }] struct {
	sync.Once
	v   T
	err error
	up  bool
}

func (o *once[T]) get(t testing.TB, name string, declared bool, start func() (T, error)) T {
	t.Helper()
	if !declared {
		t.Fatalf("%s is not in the package's rig.Need", name)
	}
	o.Do(func() { o.v, o.err = start(); o.up = o.err == nil })
	testutil.RequireServer(t, name, o.err)
	return o.v
}

func (o *once[T]) stop() {
	o.Do(func() {}) // none started after this
	if o.up {
		o.v.Stop()
	}
}

// Main is a package's TestMain: it runs the tests with the servers need
// names at hand in s, stops every server started, and exits.
//
//	var servers rig.Servers
//
//	func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Consul: true}) }
func Main(m *testing.M, s *Servers, need Need) {
	os.Exit(Run(m, s, need))
}

// Run is Main for a TestMain with more to clean up: it returns the exit
// code instead of exiting.
func Run(m *testing.M, s *Servers, need Need) int {
	s.need = need
	defer s.Stop()
	return m.Run()
}

// Stop stops every server started.
func (s *Servers) Stop() {
	s.minio.stop()
	s.swift.stop()
	s.consul.stop()
	s.acl.stop()
	s.graphite.stop()
	s.prom.stop()
}

// MinIO is the package's MinIO, started on first use. In CI a server that
// cannot start fails the test; elsewhere it skips it.
func (s *Servers) MinIO(t testing.TB) *MinIO {
	t.Helper()
	return s.minio.get(t, "MinIO", s.need.MinIO, StartMinIO)
}

// Swift is the package's OpenStack Swift, started on first use.
func (s *Servers) Swift(t testing.TB) *Swift {
	t.Helper()
	return s.swift.get(t, "Swift", s.need.Swift, StartSwift)
}

// Consul is the package's Consul agent, started on first use.
func (s *Servers) Consul(t testing.TB) *Consul {
	t.Helper()
	return s.consul.get(t, "Consul", s.need.Consul, func() (*Consul, error) { return StartConsul() })
}

// ACLConsul is the package's Consul agent with ACLs on, started on first
// use. Each test makes the tokens it needs (ACLConsul.Token).
func (s *Servers) ACLConsul(t testing.TB) *ACLConsul {
	t.Helper()
	return s.acl.get(t, "Consul with ACLs", s.need.ACLConsul, StartACLConsul)
}

// Graphite is the package's graphite-web and carbon, started on first use.
func (s *Servers) Graphite(t testing.TB) *Graphite {
	t.Helper()
	return s.graphite.get(t, "graphite-web", s.need.Graphite, StartGraphite)
}

// Prometheus is the package's Prometheus, scraping Need.Prometheus,
// started on first use.
func (s *Servers) Prometheus(t testing.TB) *Prometheus {
	t.Helper()
	return s.prom.get(t, "Prometheus", len(s.need.Prometheus) > 0, func() (*Prometheus, error) {
		return StartPrometheus(s.need.Prometheus...)
	})
}
