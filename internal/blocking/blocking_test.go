package blocking

import (
	"context"
	"errors"
	"testing"
	"time"
)

// script is a query that answers what the test lists, one by one, and
// ends the loop after the last.
type script struct {
	answers []answer
	indexes []uint64 // the index of each query
	cancel  context.CancelFunc
}

type answer struct {
	index uint64
	err   error
}

func (s *script) query(_ context.Context, index uint64) (uint64, error) {
	s.indexes = append(s.indexes, index)
	a := s.answers[len(s.indexes)-1]
	if len(s.indexes) == len(s.answers) {
		s.cancel()
	}
	return a.index, a.err
}

func TestBackoffDoublesWithJitterUpToItsCapAndResetsOnAnAnswer(t *testing.T) {
	t.Parallel()
	down := errors.New("connection refused")
	var answers []answer
	for range 8 {
		answers = append(answers, answer{err: down})
	}
	answers = append(answers, answer{index: 7}, answer{err: down}, answer{err: down})
	ctx, cancel := context.WithCancel(context.Background())
	s := &script{answers: answers, cancel: cancel}
	var waits []time.Duration
	var downs []error
	ups := 0
	l := Loop{
		Down:  func(err error) { downs = append(downs, err) },
		Up:    func() { ups++ },
		Sleep: func(_ context.Context, d time.Duration) bool { waits = append(waits, d); return true },
	}
	l.Run(ctx, 0, s.query)
	// 8 back-offs, the gap after the answer, 1 back-off (the last error
	// ends the loop before its wait).
	if len(waits) != 10 {
		t.Fatalf("%d waits, want 10: %v", len(waits), waits)
	}
	for i, want := range []time.Duration{1, 2, 4, 8, 16, 30, 30, 30} {
		want *= time.Second
		if w := waits[i]; w < want/2 || w > want {
			t.Errorf("back-off %d is %v, want from %v to %v", i, w, want/2, want)
		}
	}
	if w := waits[8]; w <= 0 || w > DefaultMinGap {
		t.Errorf("the gap after an answer is %v", w)
	}
	if w := waits[9]; w < DefaultBackoff/2 || w > DefaultBackoff {
		t.Errorf("the back-off after an answer is %v, want it reset to at most %v", w, DefaultBackoff)
	}
	if len(downs) != 2 || ups != 1 {
		t.Errorf("told of %d outages and %d recoveries, want 2 and 1 (one per outage, not per retry)", len(downs), ups)
	}
	for i, idx := range s.indexes {
		if i > 0 && answers[i-1].err != nil && idx != 0 {
			t.Errorf("query %d after an error waited on index %d, want 0", i, idx)
		}
	}
}

// Consul answering at once with an index that did not move, with 0, or
// with one that went backwards: one query per gap, and the index reset
// when it goes backwards, 1 for 0.
func TestNoSpinAndConsulsRulesOnTheIndex(t *testing.T) {
	t.Parallel()
	answers := []answer{{index: 5}, {index: 5}, {index: 5}, {index: 0}, {index: 0}, {index: 9}, {index: 3}, {index: 9}}
	ctx, cancel := context.WithCancel(context.Background())
	s := &script{answers: answers, cancel: cancel}
	waits := 0
	l := Loop{MinGap: time.Hour, Sleep: func(_ context.Context, d time.Duration) bool {
		if d <= 0 {
			t.Errorf("a wait of %v", d)
		}
		waits++
		return true
	}}
	l.Run(ctx, 0, s.query)
	want := []uint64{0, 5, 5, 5, 0, 1, 9, 0}
	if len(s.indexes) != len(want) {
		t.Fatalf("queries on %v, want %v", s.indexes, want)
	}
	for i := range want {
		if s.indexes[i] != want[i] {
			t.Fatalf("queries on %v, want %v", s.indexes, want)
		}
	}
	if waits != len(answers)-1 {
		t.Fatalf("%d waits between %d queries: it spins", waits, len(answers))
	}
}
