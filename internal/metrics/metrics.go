// Package metrics keeps the agent's counters and histograms and writes
// them in the Prometheus text exposition format (version 0.0.4).
//
// It covers what the status endpoint serves: counters and histograms with
// labels, and gauges read at scrape time. It is small on purpose: the
// client_golang registry and its protobuf descriptors cost the agent more
// resident memory at start than everything it counts.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ContentType is the media type of the text format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Sample is one labelled value of a gauge read at scrape time.
type Sample struct {
	Labels []string // values, in the order of the family's label names
	Value  float64
}

type family interface {
	write(w *bufio.Writer)
}

// Registry holds metric families and writes them in registration order.
type Registry struct {
	mu       sync.Mutex
	names    map[string]bool
	families []family
}

// NewRegistry makes an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]bool{}} }

func (r *Registry) add(name string, f family) {
	if !validName(name) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", name))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[name] {
		panic(fmt.Sprintf("metrics: %s registered twice", name))
	}
	r.names[name] = true
	r.families = append(r.families, f)
}

// WriteText writes every family in the text format.
func (r *Registry) WriteText(w io.Writer) error {
	r.mu.Lock()
	fams := slices.Clone(r.families)
	r.mu.Unlock()
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		f.write(bw)
	}
	return bw.Flush()
}

// Handler serves the registry over HTTP.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		r.WriteText(w)
	})
}

// desc is what every family has: a name, a help text and label names.
type desc struct {
	name   string
	help   string
	labels []string
}

func newDesc(name, help string, labels []string) desc {
	for _, l := range labels {
		if !validName(l) || strings.Contains(l, ":") || strings.HasPrefix(l, "__") || l == "le" {
			panic(fmt.Sprintf("metrics: invalid label name %q on %s", l, name))
		}
	}
	return desc{name, help, labels}
}

func (d desc) header(w *bufio.Writer, typ string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", d.name, escapeHelp(d.help), d.name, typ)
}

// key joins label values into a map key; \xff cannot occur in UTF-8.
func key(values []string) string { return strings.Join(values, "\xff") }

func (d desc) check(values []string) {
	if len(values) != len(d.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", d.name, len(d.labels), len(values)))
	}
}

// series is the labelled children of a family, kept in first-use order and
// written sorted by label values.
type series[T any] struct {
	mu   sync.Mutex
	m    map[string]*T
	vals map[string][]string
}

func (s *series[T]) get(values []string, mk func() *T) *T {
	k := key(values)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.m[k]; ok {
		return c
	}
	if s.m == nil {
		s.m, s.vals = map[string]*T{}, map[string][]string{}
	}
	c := mk()
	s.m[k], s.vals[k] = c, slices.Clone(values)
	return c
}

// each calls fn for every child, sorted by label values.
func (s *series[T]) each(fn func(values []string, c *T)) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	type kv struct {
		v []string
		c *T
	}
	out := make([]kv, len(keys))
	for i, k := range keys {
		out[i] = kv{s.vals[k], s.m[k]}
	}
	s.mu.Unlock()
	for _, e := range out {
		fn(e.v, e.c)
	}
}

// Counter is a value that only goes up.
type Counter struct{ bits atomic.Uint64 }

// Add adds v, which must not be negative.
func (c *Counter) Add(v float64) {
	if v < 0 || math.IsNaN(v) {
		panic("metrics: counter cannot decrease")
	}
	for {
		old := c.bits.Load()
		if c.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Inc adds one.
func (c *Counter) Inc() { c.Add(1) }

// Value is the current count.
func (c *Counter) Value() float64 { return math.Float64frombits(c.bits.Load()) }

// CounterVec is a counter family with labels.
type CounterVec struct {
	desc
	s series[Counter]
}

// NewCounterVec registers a counter family.
func (r *Registry) NewCounterVec(name, help string, labels ...string) *CounterVec {
	c := &CounterVec{desc: newDesc(name, help, labels)}
	r.add(name, c)
	return c
}

// With is the counter of these label values, made on first use.
func (c *CounterVec) With(values ...string) *Counter {
	c.check(values)
	return c.s.get(values, func() *Counter { return new(Counter) })
}

func (c *CounterVec) write(w *bufio.Writer) {
	c.header(w, "counter")
	c.s.each(func(values []string, ctr *Counter) {
		sample(w, c.name, c.labels, values, "", ctr.Value())
	})
}

// Histogram counts observations into cumulative buckets.
type Histogram struct {
	mu     sync.Mutex
	upper  []float64
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

// Observe records v.
func (h *Histogram) Observe(v float64) {
	i, _ := slices.BinarySearch(h.upper, v) // first bound >= v
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.count++
	h.mu.Unlock()
}

// HistogramVec is a histogram family with labels.
type HistogramVec struct {
	desc
	upper []float64
	s     series[Histogram]
}

// NewHistogramVec registers a histogram family with the given upper bounds
// (sorted, finite; +Inf is implied).
func (r *Registry) NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	if !slices.IsSorted(buckets) || slices.ContainsFunc(buckets, func(b float64) bool { return math.IsInf(b, 0) || math.IsNaN(b) }) {
		panic(fmt.Sprintf("metrics: %s: buckets must be sorted and finite", name))
	}
	h := &HistogramVec{desc: newDesc(name, help, labels), upper: slices.Compact(slices.Clone(buckets))}
	r.add(name, h)
	return h
}

// With is the histogram of these label values, made on first use.
func (h *HistogramVec) With(values ...string) *Histogram {
	h.check(values)
	return h.s.get(values, func() *Histogram {
		return &Histogram{upper: h.upper, counts: make([]uint64, len(h.upper)+1)}
	})
}

func (h *HistogramVec) write(w *bufio.Writer) {
	h.header(w, "histogram")
	labels := append(slices.Clone(h.labels), "le")
	h.s.each(func(values []string, hist *Histogram) {
		hist.mu.Lock()
		counts, sum, count := slices.Clone(hist.counts), hist.sum, hist.count
		hist.mu.Unlock()
		var cum uint64
		for i, c := range counts {
			cum += c
			le := "+Inf"
			if i < len(h.upper) {
				le = formatFloat(h.upper[i])
			}
			sample(w, h.name, labels, append(slices.Clone(values), le), "_bucket", float64(cum))
		}
		sample(w, h.name, h.labels, values, "_sum", sum)
		sample(w, h.name, h.labels, values, "_count", float64(count))
	})
}

// GaugeFunc is a gauge family whose samples are read at scrape time.
type GaugeFunc struct {
	desc
	read func() []Sample
}

// NewGaugeFunc registers a gauge family read by fn at every scrape.
func (r *Registry) NewGaugeFunc(name, help string, fn func() []Sample, labels ...string) *GaugeFunc {
	g := &GaugeFunc{desc: newDesc(name, help, labels), read: fn}
	r.add(name, g)
	return g
}

func (g *GaugeFunc) write(w *bufio.Writer) {
	g.header(w, "gauge")
	samples := g.read()
	slices.SortFunc(samples, func(a, b Sample) int { return strings.Compare(key(a.Labels), key(b.Labels)) })
	for _, s := range samples {
		g.check(s.Labels)
		sample(w, g.name, g.labels, s.Labels, "", s.Value)
	}
}

func sample(w *bufio.Writer, name string, labels, values []string, suffix string, v float64) {
	w.WriteString(name)
	w.WriteString(suffix)
	if len(labels) > 0 {
		w.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				w.WriteByte(',')
			}
			w.WriteString(l)
			w.WriteString(`="`)
			w.WriteString(escapeLabel(values[i]))
			w.WriteByte('"')
		}
		w.WriteByte('}')
	}
	w.WriteByte(' ')
	w.WriteString(formatFloat(v))
	w.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// validName reports whether s is a legacy Prometheus metric or label
// name: [a-zA-Z_:][a-zA-Z0-9_:]*.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		ok := c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}
