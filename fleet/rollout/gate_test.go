package rollout

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// The test controls a gauge that a real Prometheus scrapes every second.
var (
	ratio   = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rig_error_ratio", Help: "set by the test"}, []string{"test"})
	servers rig.Servers
)

func TestMain(m *testing.M) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(ratio)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go http.Serve(ln, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	rig.Main(m, &servers, rig.Need{Prometheus: []string{ln.Addr().String()}})
}

func needPrometheus(t *testing.T) *rig.Prometheus {
	t.Helper()
	return servers.Prometheus(t)
}

// waitFor waits until Prometheus answers query with a value: it has
// scraped what the test set.
func waitFor(t *testing.T, p *rig.Prometheus, query string) time.Time {
	t.Helper()
	g := &Prometheus{Address: p.URL, Query: query}
	var at time.Time
	testutil.Eventually(t, 30*time.Second, func() error {
		now := time.Now()
		v, err := g.Check(context.Background(), now, now)
		if err != nil || !v.OK {
			return fmt.Errorf("Prometheus has no value for %s: %v %+v", query, err, v)
		}
		at = now
		return nil
	})
	return at
}

// label is a series name new to Prometheus: with -count, a run must not
// find the values an earlier run left.
func label(name string) string {
	return fmt.Sprintf("%s-%d", name, labelSeq.Add(1))
}

var labelSeq atomic.Int64

func TestPrometheusGateHolds(t *testing.T) {
	p := needPrometheus(t)
	l := label("held")
	ratio.WithLabelValues(l).Set(0.001)
	start := waitFor(t, p, `rig_error_ratio{test="`+l+`"}`)
	waitFor(t, p, `count_over_time(rig_error_ratio{test="`+l+`"}[1m]) >= 4`)
	g := &Prometheus{Address: p.URL, Query: `rig_error_ratio{test="` + l + `"} < 0.01`}
	v, err := g.Check(context.Background(), start, time.Now())
	if err != nil || !v.OK || !strings.Contains(v.Detail, "held at") {
		t.Fatalf("%+v %v", v, err)
	}
	// A short range is judged at its end.
	now := time.Now()
	if v, err := g.Check(context.Background(), now.Add(-100*time.Millisecond), now); err != nil || !v.OK {
		t.Fatalf("instant: %+v %v", v, err)
	}
}

func TestPrometheusGateFailsWhenTheValueGoesBad(t *testing.T) {
	p := needPrometheus(t)
	l := label("bad")
	ratio.WithLabelValues(l).Set(0.001)
	start := waitFor(t, p, `rig_error_ratio{test="`+l+`"}`)
	waitFor(t, p, `count_over_time(rig_error_ratio{test="`+l+`"}[1m]) >= 3`)
	ratio.WithLabelValues(l).Set(0.5)
	bad := waitFor(t, p, `rig_error_ratio{test="`+l+`"} > 0.1`)
	g := &Prometheus{Address: p.URL, Query: `rig_error_ratio{test="` + l + `"} < 0.01`, Step: time.Second}
	v, err := g.Check(context.Background(), start, bad.Add(time.Second))
	if err != nil || v.OK || !strings.Contains(v.Detail, "did not hold for") {
		t.Fatalf("%+v %v", v, err)
	}
	// With For, only the end of the range counts: it was bad there too.
	g.For = 2 * time.Second
	if v, err := g.Check(context.Background(), start, bad.Add(time.Second)); err != nil || v.OK {
		t.Fatalf("for: %+v %v", v, err)
	}
	// The range before the value went bad held.
	g.For = 0
	if v, err := g.Check(context.Background(), start, start.Add(2*time.Second)); err != nil || !v.OK {
		t.Fatalf("the good part: %+v %v", v, err)
	}
}

// One instance failing is not hidden by another that holds.
func TestPrometheusGateEverySeriesMustHold(t *testing.T) {
	p := needPrometheus(t)
	l := label("multi")
	ratio.WithLabelValues(l + "-a").Set(0.001)
	ratio.WithLabelValues(l + "-b").Set(0.001)
	start := waitFor(t, p, `count(rig_error_ratio{test=~"`+l+`-.*"}) == 2`)
	waitFor(t, p, `count_over_time(rig_error_ratio{test="`+l+`-b"}[1m]) >= 3`)
	ratio.WithLabelValues(l + "-b").Set(0.5)
	bad := waitFor(t, p, `rig_error_ratio{test="`+l+`-b"} > 0.1`)
	g := &Prometheus{Address: p.URL, Query: `rig_error_ratio{test=~"` + l + `-.*"} < 0.01`, Step: time.Second}
	v, err := g.Check(context.Background(), start, bad.Add(time.Second))
	if err != nil || v.OK || !strings.Contains(v.Detail, `test="`+l+`-b"`) {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestPrometheusGateErrors(t *testing.T) {
	p := needPrometheus(t)
	now := time.Now()
	g := &Prometheus{Address: p.URL, Query: `rate(rig_error_ratio[`}
	if _, err := g.Check(context.Background(), now.Add(-10*time.Second), now); err == nil || !strings.Contains(err.Error(), "bad_data") {
		t.Fatalf("a bad query: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	g = &Prometheus{Address: "http://reader:s3cret@" + addr, Query: "up"}
	v, err := g.Check(context.Background(), now.Add(-10*time.Second), now)
	if err == nil || v.OK {
		t.Fatalf("an unreachable Prometheus: %+v %v", v, err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

// A long bake (days) is judged in steps Prometheus accepts: it answers
// at most 11,000 points a series, and a gate it refuses would hold the
// rollout forever.
func TestPrometheusGateLongBake(t *testing.T) {
	p := needPrometheus(t)
	g := &Prometheus{Address: p.URL, Query: `vector(1)`}
	now := time.Now()
	v, err := g.Check(context.Background(), now.Add(-96*time.Hour), now)
	if err != nil || !v.OK {
		t.Fatalf("a 96h bake: %+v %v", v, err)
	}
}

// A value that is not a number (0/0 of two idle rates, say) or infinite
// proves nothing: the gate does not hold, and says which value it saw.
func TestPrometheusGateNaNAndInfDoNotHold(t *testing.T) {
	p := needPrometheus(t)
	now := time.Now()
	for _, want := range []string{"NaN", "+Inf", "-Inf"} {
		q := "vector(" + want + ")"
		g := &Prometheus{Address: p.URL, Query: q}
		// A range, and an instant.
		for _, from := range []time.Time{now.Add(-20 * time.Second), now.Add(-100 * time.Millisecond)} {
			v, err := g.Check(context.Background(), from, now)
			if err != nil || v.OK || !strings.Contains(v.Detail, "value "+want) {
				t.Fatalf("%s over %s: %+v %v", q, now.Sub(from), v, err)
			}
		}
	}
	// One bad step in a range that otherwise holds.
	g := &Prometheus{Address: p.URL, Step: time.Second,
		Query: fmt.Sprintf(`(vector(1) and on() (vector(time()) < %d or vector(time()) > %d)) or vector(NaN)`, now.Add(-5*time.Second).Unix(), now.Add(-4*time.Second).Unix())}
	v, err := g.Check(context.Background(), now.Add(-10*time.Second), now)
	if err != nil || v.OK || !strings.Contains(v.Detail, "value NaN") {
		t.Fatalf("a NaN step: %+v %v", v, err)
	}
}
