package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
)

// An update stopped before the switch by a shutdown is abandoned: an
// error of the circumstances, named by ErrAbandoned once, with no failure
// recorded and the previous release current. A hook that fails with the
// word "abandoned" in its output is a failure all the same: the sentinel
// decides, not the message.
func TestAbandonedIsDecidedByTheSentinel(t *testing.T) {
	e := newEnv(t)
	marker := filepath.Join(e.dir, "in-before")
	r := e.runner(e.config(fmt.Sprintf(`
  before "script" { command = "test $(cat VERSION) = v2 || exit 0; touch %[1]s; test -e %[1]s.fail && { echo update abandoned; exit 1; }; sleep 60" }
`, marker)))
	e.publish("v1")
	e.check(r, agent.ResultInstalled)

	e.publish("v2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(marker); err == nil {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	out := r.Check(ctx)
	if out.Result != agent.ResultError || !errors.Is(out.Err, agent.ErrAbandoned) {
		t.Fatalf("a shutdown in the before hook: result %s, err %v; want error, abandoned", out.Result, out.Err)
	}
	if n := strings.Count(out.Err.Error(), agent.ErrAbandoned.Error()); n != 1 {
		t.Fatalf("%q says abandoned %d times", out.Err, n)
	}
	if st := e.state_(r); len(st.Failures) != 0 || e.current() != "v1" {
		t.Fatalf("after the shutdown: failures %+v, current %q", st.Failures, e.current())
	}

	os.Remove(marker)
	if err := os.WriteFile(marker+".fail", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out = e.check(r, agent.ResultFailed)
	if errors.Is(out.Err, agent.ErrAbandoned) {
		t.Fatalf("a hook failing with %q was taken as abandoned: %v", "update abandoned", out.Err)
	}
	if st := e.state_(r); st.Failures[out.Checksum] == nil || e.current() != "v1" {
		t.Fatalf("the failure was not recorded: %+v, current %q", st.Failures, e.current())
	}
}
