package testutil

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Poll is how often Eventually looks again.
const Poll = 50 * time.Millisecond

// Eventually calls cond until it returns nil or timeout has passed, then
// fails t with what cond last said: the state the test was waiting to
// see change. cond runs on the test's goroutine, so it may end the test
// with t.Fatal where a state can never change for the better.
//
//	testutil.Eventually(t, 30*time.Second, func() error {
//		if n := onV2(); n != 4 {
//			return fmt.Errorf("%d hosts on v2, want 4", n)
//		}
//		return nil
//	})
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Wait(timeout, cond); err != nil {
		t.Fatalf("after %s: %v", timeout, err)
	}
}

// Wait is Eventually without a test: it returns nil once cond does, or
// cond's last error when timeout has passed. For goroutines other than
// the test's, which must not call t.Fatal.
func Wait(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(Poll)
	}
}

var (
	runs   sync.Map // testing.TB → its Unique name
	runSeq atomic.Int64
)

// Unique names this run of the test: t.Name() and a number new to the
// process, the same for every call within the run. A test keys what it
// writes to a server shared by the package with it, so that with -count a
// run never finds what an earlier one left.
func Unique(t testing.TB) string {
	if v, ok := runs.Load(t); ok {
		return v.(string)
	}
	v, _ := runs.LoadOrStore(t, fmt.Sprintf("%s-%d", t.Name(), runSeq.Add(1)))
	return v.(string)
}
