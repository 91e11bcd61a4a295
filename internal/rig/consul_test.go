package rig

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// Another agent on Consul's HTTP port, taken between its choice and the
// agent's start, answers the readiness check as well as ours would:
// StartConsul starts over on new ports, and its Addr is a real agent's.
func TestConsulStartsOverOnATakenPort(t *testing.T) {
	if _, err := Bin("consul"); err != nil {
		testutil.RequireServer(t, "Consul", err)
	}
	var starts [][]int
	taken := 0
	portsReserved = func(p []int) {
		starts = append(starts, p)
		if len(starts) == 1 {
			taken = p[0]
			occupy(t, taken, false, `"127.0.0.1:8300"`) // its leader
		}
	}
	defer func() { portsReserved = nil }()
	c, err := StartConsul()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if len(starts) < 2 {
		t.Fatalf("started once, on %v, with %d taken by another agent", starts[0], taken)
	}
	// A key written reads back: an agent, not the look-alike.
	put, _ := http.NewRequestWithContext(t.Context(), "PUT", "http://"+c.Addr+"/v1/kv/rig-test", strings.NewReader("v1"))
	if resp, err := http.DefaultClient.Do(put); err != nil || resp.StatusCode != 200 {
		t.Fatalf("put: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + c.Addr + "/v1/kv/rig-test?raw")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "v1" {
		t.Fatalf("key rig-test on %s: %q, want %q", c.Addr, b, "v1")
	}
}
