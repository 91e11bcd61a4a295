// Command watch measures watch mode:
//
//	go run ./bench/watch [-watchers 1000] [-rounds 5] [-hosts 5] [-idle 5m]
//
// publish: -hosts agents (separate processes) with a 5-minute poll and
// the watch on, against MinIO and Consul: the time from the end of
// `dropship publish` to the last host's switch; then the HEADs each host
// sends the store while idle, watch on and off, counted at a proxy over
// -idle and given per hour.
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
	"time"

	"github.com/hashicorp/go-cleanhttp"
)

var (
	watchers = flag.Int("watchers", 1000, "watchers on one Consul agent")
	rounds   = flag.Int("rounds", 5, "announcements to time")
	hosts    = flag.Int("hosts", 5, "agents for the publish and idle figures")
	idle     = flag.Duration("idle", 5*time.Minute, "how long to count idle requests, each way")
)

func main() {
	flag.Parse()
	if err := fleetBench(*hosts, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if err := fanout(*watchers, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// cleanTransport is a connection pool of one watcher's own.
func cleanTransport() *http.Transport { return cleanhttp.DefaultPooledTransport() }
