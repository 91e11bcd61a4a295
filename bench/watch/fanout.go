package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/rig"
)

// fanout runs n watchers, each with its own Consul client (its own
// connection, as n agents would have), on one real Consul agent, then
// announces rounds releases and measures how long each watcher took to
// wake, with Consul's CPU and resident memory meanwhile.
func fanout(n, rounds int) error {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < uint64(4*n) {
		lim.Cur = min(lim.Max, uint64(4*n)+256)
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	// One agent serving n clients from one address: lift its per-client
	// connection limit (200), as a real fleet spreads over many agents.
	c, err := rig.StartConsul("-hcl", fmt.Sprintf("limits { http_max_conns_per_client = %d }", 2*n+100))
	if err != nil {
		return err
	}
	defer c.Stop()
	pid, err := c.Pid()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const prefix = "bench"
	type wake struct {
		round int
		at    time.Time
	}
	wakes := make(chan wake, n*rounds)
	var up sync.WaitGroup
	up.Add(n)
	for i := range n {
		client, err := api.NewClient(&api.Config{Address: c.Addr, Transport: cleanTransport()})
		if err != nil {
			return err
		}
		f := &consul.Fleet{Client: client, Prefix: prefix, Node: fmt.Sprintf("w%d", i)}
		var once sync.Once
		go f.WatchPublished(ctx, fleet.Watch{
			Up: func() { once.Do(up.Done) },
			Changed: func(p fleet.Published) {
				r, _ := strconv.Atoi(strings.TrimPrefix(p.Checksum, "round-"))
				wakes <- wake{r, time.Now()}
			},
		})
	}
	up.Wait()
	writer, _ := api.NewClient(&api.Config{Address: c.Addr})
	pub := &consul.Fleet{Client: writer, Prefix: prefix}
	cpu0, _ := procCPU(pid)
	start := time.Now()
	var lat []time.Duration
	for r := range rounds {
		time.Sleep(1500 * time.Millisecond) // past the watchers' one-second minimum gap
		at := time.Now()
		if err := pub.Announce(ctx, fleet.Published{Service: "svc", Checksum: fmt.Sprintf("round-%d", r)}); err != nil {
			return err
		}
		deadline := time.After(30 * time.Second)
		for got := 0; got < n; {
			select {
			case w := <-wakes:
				if w.round == r {
					lat = append(lat, w.at.Sub(at))
					got++
				}
			case <-deadline:
				return fmt.Errorf("round %d: %d of %d watchers woke within 30 s", r, got, n)
			}
		}
	}
	cpu1, _ := procCPU(pid)
	rss, _ := procRSS(pid)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("fan-out: %d watchers (own clients) on one Consul agent, %d announcements\n", n, rounds)
	fmt.Printf("  key write -> watcher woken: p50 %s  p99 %s  max %s\n",
		pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	fmt.Printf("  consul meanwhile: %.2f s CPU over %.1f s, %.0f MiB resident\n",
		(cpu1 - cpu0).Seconds(), time.Since(start).Seconds(), float64(rss)/(1<<20))
	return nil
}

// procCPU is a process's user+system time.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ
}

// procRSS is a process's resident set in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}
