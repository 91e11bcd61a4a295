package local

import (
	"context"
	"testing"

	"github.com/dropshipd/dropship/internal/flock"
)

// Two slots: two holders at once, a third waits until one gives its slot
// back, and a wait ends with its context.
func TestSlotsCountHolders(t *testing.T) {
	dir := t.TempDir()
	a, b, c := NewSlots(dir, 2), NewSlots(dir, 2), NewSlots(dir, 2)
	for _, s := range []*Slots{a, b} {
		if _, err := s.Acquire(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// A few of the slots' retries: a free slot would have been taken.
	ctx, cancel := context.WithTimeout(t.Context(), 4*flock.PollInterval)
	_, err := c.Acquire(ctx)
	cancel()
	if err == nil {
		t.Fatal("a third holder took a slot while two were held")
	}
	got := make(chan error, 1)
	go func() { _, err := c.Acquire(t.Context()); got <- err }()
	if err := a.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the third holder after a release: %v", err)
	}
	if err := b.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}
