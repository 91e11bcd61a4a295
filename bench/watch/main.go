// Command watch measures watch mode:
//
//	go run ./bench/watch [-watchers 1000] [-rounds 5]
//
// fan-out: -watchers watchers, each with its own Consul client, long-poll
// the announcements on one real Consul agent; each announcement's time
// from the key write to every watcher waking is recorded (p50, p99, max),
// with Consul's CPU time and resident memory meanwhile.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"

	"github.com/hashicorp/go-cleanhttp"
)

var (
	watchers = flag.Int("watchers", 1000, "watchers on one Consul agent")
	rounds   = flag.Int("rounds", 5, "announcements to time")
)

func main() {
	flag.Parse()
	if err := fanout(*watchers, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// cleanTransport is a connection pool of one watcher's own.
func cleanTransport() *http.Transport { return cleanhttp.DefaultPooledTransport() }
