package rollout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Prometheus is a gate on a PromQL condition: a filter such as
// `sum(rate(errors[5m])) / sum(rate(requests[5m])) < 0.01`, which has a
// value while it holds and none when it does not. It holds over a range
// when a range query of it has a value at every step, and none of them is
// NaN or ±Inf.
type Prometheus struct {
	Address string
	Query   string
	// For bounds the range judged to its last For (0: all of it).
	For time.Duration
	// Step between the samples judged (0: the range / 20, from 1 s to 30 s;
	// never finer than the range / 10,000, which Prometheus would refuse).
	Step time.Duration
	// Client, if set, makes the requests (tests, TLS).
	Client *http.Client

	api promv1.API
}

var _ Gate = (*Prometheus)(nil)

// Name is the gate's kind.
func (p *Prometheus) Name() string { return "prometheus" }

// maxPoints bounds the steps of one range query, under Prometheus's
// limit of 11,000 points a series.
const maxPoints = 10000

// queryTimeout bounds one request to Prometheus.
const queryTimeout = 10 * time.Second

func (p *Prometheus) client() (promv1.API, error) {
	if p.api != nil {
		return p.api, nil
	}
	c, err := promapi.NewClient(promapi.Config{Address: p.Address, Client: p.Client})
	if err != nil {
		return nil, p.wrap(err)
	}
	p.api = promv1.NewAPI(c)
	return p.api, nil
}

// Check judges the condition over [from, to]: it holds only if it had a
// value at every step. A range shorter than a step is judged at to. An
// unreachable Prometheus or a bad query is an error, never a pass.
func (p *Prometheus) Check(ctx context.Context, from, to time.Time) (Verdict, error) {
	api, err := p.client()
	if err != nil {
		return Verdict{}, err
	}
	if p.For > 0 && to.Sub(from) > p.For {
		from = to.Add(-p.For)
	}
	step := p.Step
	if step <= 0 {
		step = min(max(to.Sub(from)/20, time.Second), 30*time.Second)
	}
	// Prometheus answers at most 11,000 points a series and refuses the
	// query otherwise: a bake of days is judged in coarser steps, or the
	// gate could never be asked and the rollout would wait forever.
	if to.Sub(from)/step >= maxPoints {
		step = (to.Sub(from) / maxPoints).Truncate(time.Second) + time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	if to.Sub(from) < step {
		v, _, _, err := api.Query(ctx, p.Query, to)
		if err != nil {
			return Verdict{}, p.wrap(err)
		}
		vec, ok := v.(model.Vector)
		if !ok {
			return Verdict{}, fmt.Errorf("prometheus query %q: a %s, want an instant vector", p.Query, v.Type())
		}
		if len(vec) == 0 {
			return Verdict{Detail: fmt.Sprintf("did not hold at %s (no value); query: %s", to.UTC().Format(time.TimeOnly), p.Query)}, nil
		}
		for _, s := range vec {
			if !number(s.Value) {
				return Verdict{Detail: fmt.Sprintf("did not hold for %s at %s: value %s; query: %s", s.Metric, to.UTC().Format(time.TimeOnly), s.Value, p.Query)}, nil
			}
		}
		return Verdict{OK: true, Detail: fmt.Sprintf("held at %s, value %s", to.UTC().Format(time.TimeOnly), vec[0].Value)}, nil
	}
	v, _, _, err := api.QueryRange(ctx, p.Query, promv1.Range{Start: from, End: to, Step: step})
	if err != nil {
		return Verdict{}, p.wrap(err)
	}
	m, ok := v.(model.Matrix)
	if !ok {
		return Verdict{}, fmt.Errorf("prometheus query %q: a %s, want a range vector", p.Query, v.Type())
	}
	// Every series the query returned must have a value at every step
	// (Prometheus rounds the times it answers with: match each step within
	// half a step). A series with a gap is an instance for which the
	// condition stopped holding: a healthy one does not hide it.
	total := int64(to.Sub(from)/step) + 1
	if len(m) == 0 {
		return Verdict{Detail: fmt.Sprintf("did not hold from %s to %s (no value at all); query: %s",
			from.UTC().Format(time.TimeOnly), to.UTC().Format(time.TimeOnly), p.Query)}, nil
	}
	var last model.SampleValue
	for _, series := range m {
		held := map[int64]model.SampleValue{} // by step number
		for _, s := range series.Values {
			if !number(s.Value) {
				return Verdict{Detail: fmt.Sprintf("did not hold for %s at %s: value %s; query: %s",
					series.Metric, s.Timestamp.Time().UTC().Format(time.TimeOnly), s.Value, p.Query)}, nil
			}
			k := (s.Timestamp.Time().Sub(from) + step/2) / step
			held[int64(k)] = s.Value
		}
		for k := range total {
			if _, ok := held[k]; !ok {
				at := from.Add(time.Duration(k) * step)
				return Verdict{Detail: fmt.Sprintf("did not hold for %s at %s (step %d of %d, %s–%s); query: %s",
					series.Metric, at.UTC().Format(time.TimeOnly), k+1, total, from.UTC().Format(time.TimeOnly), to.UTC().Format(time.TimeOnly), p.Query)}, nil
			}
		}
		last = held[total-1]
	}
	return Verdict{OK: true, Detail: fmt.Sprintf("held at %d of %d steps for %d series, last value %s", total, total, len(m), last)}, nil
}

// Validate refuses a query the gate would misjudge: a comparison with the
// bool modifier (`x < bool 0.01`) returns a value, 0 or 1, whether or not
// the condition holds, and a gate holds while its query has a value. Such
// a gate would always hold; the condition is written without bool.
func (p *Prometheus) Validate() error {
	if usesBool(p.Query) {
		return fmt.Errorf("the query compares with the bool modifier, so it returns a value (0 or 1) whether or not the condition holds, and the gate would always hold; write the condition as a filter, without bool (like `x < 0.01`), which returns a value only while it holds")
	}
	return nil
}

// usesBool says whether a PromQL query has a comparison followed by the
// bool modifier. Strings, label matchers ({…}) and comments are skipped;
// "bool" elsewhere (a label name in by (…)) is no modifier.
func usesBool(q string) bool {
	cmp := false // the last token was a comparison operator
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(q) && q[j] != c {
				if q[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			i, cmp = j+1, false
		case c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '{':
			// Label matchers: strings inside may hold a brace.
			for i++; i < len(q) && q[i] != '}'; i++ {
				if d := q[i]; d == '"' || d == '\'' || d == '`' {
					for i++; i < len(q) && q[i] != d; i++ {
						if q[i] == '\\' && d != '`' {
							i++
						}
					}
				}
			}
			i, cmp = i+1, false
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case strings.HasPrefix(q[i:], "==") || strings.HasPrefix(q[i:], "!=") || strings.HasPrefix(q[i:], "<=") || strings.HasPrefix(q[i:], ">="):
			i, cmp = i+2, true
		case c == '<' || c == '>':
			i, cmp = i+1, true
		case c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.':
			j := i
			for j < len(q) && (q[j] == '_' || q[j] == ':' || q[j] == '.' || q[j] >= 'a' && q[j] <= 'z' || q[j] >= 'A' && q[j] <= 'Z' || q[j] >= '0' && q[j] <= '9') {
				j++
			}
			if cmp && strings.EqualFold(q[i:j], "bool") {
				return true
			}
			i, cmp = j, false
		default:
			i, cmp = i+1, false
		}
	}
	return false
}

// number says whether a value can hold: NaN (0/0, say, of two rates with
// no traffic) and ±Inf compare to nothing, and prove nothing.
func number(v model.SampleValue) bool {
	f := float64(v)
	return !math.IsNaN(f) && !math.IsInf(f, 0)
}

// wrap names Prometheus by its address without credentials (the error
// goes to logs, the breaker and the dashboard), and drops the request's
// URL that net/http puts into its errors.
func (p *Prometheus) wrap(err error) error {
	addr := RedactAddress(p.Address)
	var perr *promv1.Error
	if errors.As(err, &perr) {
		return fmt.Errorf("prometheus %s: query %q: %s: %s", addr, p.Query, perr.Type, perr.Msg)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return fmt.Errorf("prometheus %s: %w", addr, err)
}

// RedactAddress is an address as logs, breakers and policy hashes may
// show it: scheme and host, without credentials, path or query.
func RedactAddress(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(an address)"
	}
	return u.Scheme + "://" + u.Host
}
