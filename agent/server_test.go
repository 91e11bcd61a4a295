package agent_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func post(t *testing.T, h http.Handler, url, token string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code
}

// Over TCP the status endpoint is read-only unless a token is set; the
// token is then required; ?force is for the unix socket only.
func TestStatusEndpointAccess(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	cfg := e.config("")
	a, err := agent.New(cfg, nil, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv := agent.NewServer("test")
	srv.SetAgent(a)
	const check = "/v1/services/app/check"
	tcp := srv.Handler(agent.Access{})
	if code := post(t, tcp, check, ""); code != http.StatusForbidden {
		t.Fatalf("TCP without a token: %d", code)
	}
	withToken := srv.Handler(agent.Access{Token: "0123456789abcdef"})
	for _, tc := range []struct {
		url, token string
		want       int
	}{
		{check, "", http.StatusUnauthorized},
		{check, "wrong-token-wrong", http.StatusUnauthorized},
		{check, "0123456789abcdef", http.StatusAccepted},
		{check + "?force", "0123456789abcdef", http.StatusForbidden},
	} {
		if code := post(t, withToken, tc.url, tc.token); code != tc.want {
			t.Fatalf("POST %s with %q: %d, want %d", tc.url, tc.token, code, tc.want)
		}
	}
	unix := srv.Handler(agent.Access{Unix: true})
	if code := post(t, unix, check+"?force", ""); code != http.StatusAccepted {
		t.Fatalf("forced check on the socket: %d", code)
	}
	if code := post(t, unix, "/v1/services/nope/check", ""); code != http.StatusNotFound {
		t.Fatalf("unknown service: %d", code)
	}
	// Reading stays open on TCP.
	w := httptest.NewRecorder()
	tcp.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/status", nil))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"service":"app"`) {
		t.Fatalf("GET /v1/status: %d %s", w.Code, w.Body)
	}
}

// A client that sends half a request is dropped, not held forever.
func TestStatusServerDropsStalledClients(t *testing.T) {
	srv := agent.NewServer("test").HTTPServer(agent.Access{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /v1/status HTTP/1.1\r\nHost: x\r\n")) // and never the end of the headers
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = bufio.NewReader(c).ReadString('\n')
	if err == nil || os.IsTimeout(err) {
		t.Fatalf("the server kept a stalled client: %v", err)
	}
}

// A check asked for while a service backs off after errors waits for
// the back-off; a forced one does not.
func TestTriggerRespectsTheErrorBackoff(t *testing.T) {
	e := newEnv(t) // nothing published: every check is an error
	var logs syncBuf
	cfg := e.config("")
	a, err := agent.New(cfg, nil, logger(&logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	waitFor(t, func() bool { return a.Runners()[0].Status().LastResult == agent.ResultError })
	first := a.Runners()[0].Status().LastCheck
	a.Trigger("app")
	waitFor(t, func() bool { return strings.Contains(logs.String(), "during the error back-off") })
	if a.Runners()[0].Status().LastCheck != first {
		t.Fatal("a trigger cut the error back-off short")
	}
	srv := agent.NewServer("test")
	srv.SetAgent(a)
	post(t, srv.Handler(agent.Access{Unix: true}), "/v1/services/app/check?force", "")
	waitFor(t, func() bool { return a.Runners()[0].Status().LastCheck != first })
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func logger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// syncBuf is a log written by the agent's goroutines while a test reads.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits (bounded) for cond.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() error {
		if !cond() {
			return errors.New("condition not met")
		}
		return nil
	})
}
