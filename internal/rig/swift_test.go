package rig

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// occupy listens on port as another server would, answering body to
// every request: with SO_REUSEPORT, as Swift's servers do, or plainly.
func occupy(t *testing.T, port int, reusePort bool, body string) {
	t.Helper()
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	l, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("occupy %d: %v", port, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// A port taken between its choice and the server's start: StartSwift
// starts over on new ports, and the Swift it returns is whole and alone
// on its ports.
func TestSwiftStartsOverOnATakenPort(t *testing.T) {
	if _, err := exec.LookPath("swift-proxy-server"); err != nil {
		testutil.RequireServer(t, "Swift", err)
	}
	for _, tc := range []struct {
		name      string
		index     int // in proxy, account, container, object, memcached
		reusePort bool
	}{
		// Swift's servers listen with SO_REUSEPORT: ours binds too, and
		// the kernel splits connections between it and the other.
		{"object server's port shared by another Swift", 3, true},
		{"proxy's port shared by another Swift", 0, true},
		{"memcached's port held", 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var starts [][]int
			taken := 0
			portsReserved = func(p []int) {
				starts = append(starts, slices.Clone(p))
				if len(starts) == 1 {
					taken = p[tc.index]
					occupy(t, taken, tc.reusePort, "OK")
				}
			}
			defer func() { portsReserved = nil }()
			s, err := StartSwift()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Stop()
			if len(starts) < 2 {
				t.Fatalf("started once, on %v, with %d taken", starts[0], taken)
			}
			if slices.Contains(s.ports, taken) {
				t.Fatalf("running on %v, %d among them", s.ports, taken)
			}
			swiftRoundTrip(t, s)
		})
	}
}

// swiftRoundTrip stores an object through the proxy and reads it back.
func swiftRoundTrip(t *testing.T, s *Swift) {
	t.Helper()
	do := func(method, url, token, body string, want int) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
		if token != "" {
			req.Header.Set("X-Auth-Token", token)
		} else {
			req.Header.Set("X-Auth-User", s.User)
			req.Header.Set("X-Auth-Key", s.Key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %s %s, want %d", method, url, resp.Status, b, want)
		}
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		return resp
	}
	auth := do("GET", s.AuthURL, "", "", http.StatusOK)
	token, storage := auth.Header.Get("X-Auth-Token"), auth.Header.Get("X-Storage-Url")
	do("PUT", storage+"/c", token, "", http.StatusCreated)
	do("PUT", storage+"/c/o", token, "hello", http.StatusCreated)
	got, _ := io.ReadAll(do("GET", storage+"/c/o", token, "", http.StatusOK).Body)
	if string(got) != "hello" {
		t.Fatalf("object %q, want %q", got, "hello")
	}
}
