package metrics

import (
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse reads the registry back with Prometheus' own text parser.
func parse(t *testing.T, r *Registry) map[string]*dto.MetricFamily {
	t.Helper()
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("Prometheus cannot parse the output: %v\n%s", err, b.String())
	}
	return fams
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func find(t *testing.T, f *dto.MetricFamily, want map[string]string) *dto.Metric {
	t.Helper()
	for _, m := range f.GetMetric() {
		got := labels(m)
		match := len(got) == len(want)
		for k, v := range want {
			match = match && got[k] == v
		}
		if match {
			return m
		}
	}
	t.Fatalf("%s has no series %v", f.GetName(), want)
	return nil
}

func TestCounterVec(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounterVec("x_checks_total", "Checks, by service and result.", "service", "result")
	c.With("web", "noop").Inc()
	c.With("web", "noop").Inc()
	c.With("web", "installed").Add(1)
	c.With("db", "noop").Add(2.5)

	f := parse(t, r)["x_checks_total"]
	if f == nil || f.GetType() != dto.MetricType_COUNTER {
		t.Fatalf("family: %v", f)
	}
	if f.GetHelp() != "Checks, by service and result." {
		t.Errorf("help %q", f.GetHelp())
	}
	for _, tc := range []struct {
		svc, res string
		want     float64
	}{{"web", "noop", 2}, {"web", "installed", 1}, {"db", "noop", 2.5}} {
		if got := find(t, f, map[string]string{"service": tc.svc, "result": tc.res}).GetCounter().GetValue(); got != tc.want {
			t.Errorf("%s/%s = %v, want %v", tc.svc, tc.res, got, tc.want)
		}
	}
	if len(f.GetMetric()) != 3 {
		t.Errorf("%d series, want 3", len(f.GetMetric()))
	}
}

func TestHostileLabelValuesRoundTrip(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounterVec("x_total", "Help with a \\ backslash\nand a newline.", "service")
	odd := []string{`a"b`, `back\slash`, "new\nline", "ünï cødé", "", `\"` + "\n"}
	for i, v := range odd {
		c.With(v).Add(float64(i + 1))
	}
	f := parse(t, r)["x_total"]
	if f.GetHelp() != "Help with a \\ backslash\nand a newline." {
		t.Errorf("help %q", f.GetHelp())
	}
	for i, v := range odd {
		if got := find(t, f, map[string]string{"service": v}).GetCounter().GetValue(); got != float64(i+1) {
			t.Errorf("%q = %v, want %d", v, got, i+1)
		}
	}
}

func TestHistogramVec(t *testing.T) {
	r := NewRegistry()
	h := r.NewHistogramVec("x_duration_seconds", "Durations.", []float64{0.5, 1, 5}, "service")
	for _, v := range []float64{0.1, 0.5, 0.7, 3, 100} {
		h.With("web").Observe(v)
	}
	m := find(t, parse(t, r)["x_duration_seconds"], map[string]string{"service": "web"}).GetHistogram()
	if m.GetSampleCount() != 5 || math.Abs(m.GetSampleSum()-104.3) > 1e-9 {
		t.Errorf("count %d sum %v", m.GetSampleCount(), m.GetSampleSum())
	}
	// Cumulative, and an observation equal to a bound counts in it.
	want := map[float64]uint64{0.5: 2, 1: 3, 5: 4}
	for _, b := range m.GetBucket() {
		if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
		delete(want, b.GetUpperBound())
	}
	if len(want) != 0 {
		t.Errorf("buckets missing: %v", want)
	}
}

func TestGaugeFunc(t *testing.T) {
	r := NewRegistry()
	n := 0
	r.NewGaugeFunc("x_age_seconds", "Age.", func() []Sample {
		n++
		return []Sample{{Labels: []string{"web"}, Value: float64(10 * n)}, {Labels: []string{"db"}, Value: 1.5}}
	}, "service")
	f := parse(t, r)["x_age_seconds"]
	if f.GetType() != dto.MetricType_GAUGE {
		t.Fatalf("type %v", f.GetType())
	}
	if got := find(t, f, map[string]string{"service": "web"}).GetGauge().GetValue(); got != 10 {
		t.Errorf("web = %v", got)
	}
	// Read again at the next scrape.
	if got := find(t, parse(t, r)["x_age_seconds"], map[string]string{"service": "web"}).GetGauge().GetValue(); got != 20 {
		t.Errorf("second scrape web = %v, want 20", got)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounterVec("x_total", "n", "service")
	h := r.NewHistogramVec("x_seconds", "d", []float64{1}, "service")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				c.With("web").Inc()
				h.With("web").Observe(0.5)
			}
		}()
		go r.WriteText(new(strings.Builder))
	}
	wg.Wait()
	fams := parse(t, r)
	if got := find(t, fams["x_total"], map[string]string{"service": "web"}).GetCounter().GetValue(); got != 8000 {
		t.Errorf("counter %v, want 8000", got)
	}
	if got := find(t, fams["x_seconds"], map[string]string{"service": "web"}).GetHistogram().GetSampleCount(); got != 8000 {
		t.Errorf("histogram count %d, want 8000", got)
	}
}

func TestHandler(t *testing.T) {
	r := NewRegistry()
	r.NewCounterVec("x_total", "n").With().Inc()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); ct != ContentType {
		t.Errorf("content type %q", ct)
	}
	if !strings.Contains(rec.Body.String(), "\nx_total 1\n") {
		t.Errorf("body:\n%s", rec.Body)
	}
}

func TestMisusePanics(t *testing.T) {
	for name, fn := range map[string]func(r *Registry){
		"bad metric name":  func(r *Registry) { r.NewCounterVec("1x", "h") },
		"bad label name":   func(r *Registry) { r.NewCounterVec("x", "h", "a-b") },
		"reserved label":   func(r *Registry) { r.NewHistogramVec("x", "h", nil, "le") },
		"twice":            func(r *Registry) { r.NewCounterVec("x", "h"); r.NewCounterVec("x", "h") },
		"label count":      func(r *Registry) { r.NewCounterVec("x", "h", "a").With("1", "2") },
		"negative add":     func(r *Registry) { r.NewCounterVec("x", "h").With().Add(-1) },
		"unsorted buckets": func(r *Registry) { r.NewHistogramVec("x", "h", []float64{2, 1}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			fn(NewRegistry())
		})
	}
}
