package dashboard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// followStore is a Store whose services are what the test says, whose
// log reads block until their context ends, and which tells when they
// start and end.
type followStore struct {
	mu     sync.Mutex
	names  []string
	wake   chan struct{}
	reads  chan string // a blocking log read of the service began
	closed chan string // … and its context ended
}

func (f *followStore) Services(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.names...), nil
}

func (f *followStore) Status(_ context.Context, service string) (fleet.Status, error) {
	return fleet.Status{Service: service}, nil
}

func (f *followStore) Log(ctx context.Context, service string, since uint64) ([]fleet.Event, uint64, error) {
	if since == 0 {
		return []fleet.Event{{Kind: fleet.EventInstall, Service: service, Time: time.Now()}}, 1, nil
	}
	f.reads <- service
	<-ctx.Done()
	f.closed <- service
	return nil, since, ctx.Err()
}

func (f *followStore) Wait(ctx context.Context, index uint64) (uint64, error) {
	select {
	case <-f.wake:
		return index + 1, nil
	case <-ctx.Done():
		return index, ctx.Err()
	}
}

// A service that leaves the fleet (its records deleted, or a made-up
// name that is gone) no longer has its log followed, nor kept.
func TestTheLogOfAServiceGoneIsNoLongerFollowed(t *testing.T) {
	st := &followStore{names: []string{"app", "ghost"}, wake: make(chan struct{}), reads: make(chan string, 10), closed: make(chan string, 10)}
	s, err := New(Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	timeout := time.After(10 * time.Second)
	for seen := map[string]bool{}; !seen["app"] || !seen["ghost"]; {
		select {
		case name := <-st.reads:
			seen[name] = true
		case <-timeout:
			t.Fatalf("the logs were not followed: %v", seen)
		}
	}
	st.mu.Lock()
	st.names = []string{"app"}
	st.mu.Unlock()
	st.wake <- struct{}{}
	select {
	case name := <-st.closed:
		if name != "ghost" {
			t.Fatalf("the log of %s was let go, not the one of the service gone", name)
		}
	case <-timeout:
		t.Fatal("the log of the service gone is still followed")
	}
	if evs := s.Events("ghost"); len(evs) != 0 {
		t.Fatalf("the events of the service gone are kept: %+v", evs)
	}
	if evs := s.Events("app"); len(evs) != 1 {
		t.Fatalf("the events of the service still there: %+v", evs)
	}
}
