package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestWaitReturnsOnceTheConditionHolds(t *testing.T) {
	t.Parallel()
	n := 0
	err := Wait(10*time.Second, func() error {
		if n++; n < 3 {
			return fmt.Errorf("n is %d", n)
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Wait: %v after %d calls, want nil after 3", err, n)
	}
}

func TestWaitGivesTheLastStateSeen(t *testing.T) {
	t.Parallel()
	n := 0
	err := Wait(3*Poll, func() error {
		n++
		return fmt.Errorf("still %d", n)
	})
	if err == nil || err.Error() != fmt.Sprintf("still %d", n) || n < 2 {
		t.Fatalf("Wait: %v after %d calls, want the last state", err, n)
	}
}

// fakeTB records a Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper()      {}
func (f *fakeTB) Name() string { return "fake" }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
}

func TestEventuallyFailsWithTheLastState(t *testing.T) {
	t.Parallel()
	f := &fakeTB{}
	Eventually(f, Poll, func() error { return errors.New("3 of 4 hosts on v2") })
	if !strings.Contains(f.msg, "3 of 4 hosts on v2") || !strings.Contains(f.msg, "after 50ms") {
		t.Fatalf("failure message %q lacks the timeout or the last state", f.msg)
	}
}

func TestUniqueIsStableWithinARunAndNewForTheNext(t *testing.T) {
	t.Parallel()
	a, b := &fakeTB{}, &fakeTB{}
	if Unique(a) != Unique(a) || Unique(a) == Unique(b) {
		t.Fatalf("Unique: %q, %q for one run, %q for another", Unique(a), Unique(a), Unique(b))
	}
}
