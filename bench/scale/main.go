// Command scale measures how the fleet's update slots scale with the
// number of hosts, against one real Consul agent from the rig:
//
//	go run ./bench/scale [-hosts 100,1000,5000] [-baseline 200,500] [-rollout 1000,5000] [-bake 0] [-kinds]
//
// Each simulated host is a goroutine with its own Consul client (its own
// connections, behind a RoundTripper that counts what Consul sends it),
// running the project's slot code: it waits for a slot, "updates" for
// -update, and gives the slot back, as an agent does with `sequential`
// and `concurrency` set to 1% of the hosts. -hosts runs the grants of
// lock/consul (a coordinator elected among the hosts); -baseline the
// consul/api semaphore that fleet/consul used before them; -rollout the
// grants with a rollout (canary, 10%, 100%) that the coordinator decides,
// each host doing what an agent's checks do and following the
// coordinator's document as the agent does (with the watch of the
// announcements, from when its check first returns, or it has waited
// 20 s in line, until the rollout is done; without it, from its start).
// -bake sets
// the rollout's bake: the hosts of a wave behind one are not kept in line
// (the coordinator ends their wait, and they get in line again once the
// document says their wave opens), as an agent's are.
//
// Printed per run: wall time from the release (every host starts waiting
// at once) to the last host done, against the ideal (ceil(N/concurrency)
// updates back to back; with a rollout the canary alone, then each wave
// back to back); the p99 hand-off (a slot released to the next grant, or
// the host's wait written to its grant when that came later; with a
// rollout, from the end of the host's previous wave if later; the
// semaphore's hosts are timed from the release alone); requests and bytes
// from Consul per host; Consul's CPU seconds and resident memory; with
// -idle, the requests per host per hour once nothing happens (a host's
// follower of the document makes one more every 10 minutes, which a
// shorter idle time does not see); and the simulator's own CPU seconds:
// on a machine of few cores the simulated hosts take CPU that Consul
// would have on its own servers, so a wall time far above the ideal with
// Consul's and the simulator's CPU together near the cores times the wall
// says the machine, not the protocol, set the pace (the cpu floor is
// their CPU spread over every core, against the ideal: no run on the
// machine can take less). -kinds adds the
// requests and bytes per host by kind and each wave's first grant and
// last release; -consul-profile writes Consul's CPU profile of the run,
// -profile the simulator's.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/bench/internal/kinds"
	"github.com/dropshipd/dropship/fleet"
	fleetconsul "github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/lock"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

var (
	hostsFlag    = flag.String("hosts", "100,1000,5000", "host counts to run with the grants")
	rolloutFlag  = flag.String("rollout", "", "host counts to run with the grants and a rollout (canary, 10%, 100%) the coordinator decides")
	baselineFlag = flag.String("baseline", "", "host counts to run with the consul/api semaphore")
	update       = flag.Duration("update", 100*time.Millisecond, "how long each host's update takes")
	bakeFlag     = flag.Duration("bake", 0, "the rollout's bake between waves (-rollout)")
	percent      = flag.Float64("concurrency", 1, "concurrency, in percent of the hosts (at least 1)")
	idle         = flag.Duration("idle", 20*time.Second, "idle time measured after the rollout (0: none)")
	ttl          = flag.Duration("ttl", 15*time.Second, "session TTL")
	kindsFlag    = flag.Bool("kinds", false, "print the requests per host by kind after each run")
	watchFlag    = flag.Bool("watch", true, "each host watches the announcements as an agent does (watch on, the default): one more long poll per host")
	gogc         = flag.Int("gogc", 400, "the simulator's GOGC (its own garbage collection, not Consul's: the simulated hosts' CPU is the bench's, not what is measured)")
	profFlag     = flag.String("consul-profile", "", "write a CPU profile of Consul during each rollout to this file (suffixed by the host count)")
	selfProf     = flag.String("profile", "", "write a CPU profile of the simulator during each rollout to this file (suffixed by the host count)")
)

func main() {
	flag.Parse()
	raiseFiles()
	debug.SetGCPercent(*gogc)
	if *kindsFlag {
		slog.SetLogLoggerLevel(slog.LevelDebug)
	}
	fmt.Printf("%-10s %6s %5s %7s %7s %9s %9s %9s %8s %8s %10s\n", "design", "hosts", "conc", "wall s", "÷ideal", "p99 ms", "req/host", "KB/host", "cpu s", "rss MB", "idle req/h")
	for _, d := range []struct{ name, list string }{{"semaphore", *baselineFlag}, {"grants", *hostsFlag}, {"rollout", *rolloutFlag}} {
		for _, f := range strings.Split(d.list, ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			n, err := strconv.Atoi(f)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				os.Exit(2)
			}
			if err := run(d.name, n); err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s %d: %v\n", d.name, n, err)
				os.Exit(1)
			}
		}
	}
}

// counting counts the requests a client makes and the bytes Consul
// answers with (status line, headers and body).
type counting struct {
	base      http.RoundTripper
	req, recv *atomic.Int64
	watch     *atomic.Int64 // the requests of the watch on the announcements
}

// byKind counts the requests of every host by kind, and the bytes Consul
// answered them with, for -kinds.
var byKind kinds.Table

func (c counting) RoundTrip(r *http.Request) (*http.Response, error) {
	c.req.Add(1)
	if strings.HasPrefix(r.URL.Path, "/v1/kv/"+fleet.PublishedPrefix("bench")) {
		c.watch.Add(1)
	}
	recv := []*atomic.Int64{c.recv}
	if *kindsFlag {
		recv = append(recv, &byKind.Add(kinds.Of(r)).Recv)
	}
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	return kinds.Counted(resp, recv), nil
}

// shared is the connections of every simulated host: each keeps its own
// client and its own count, but idle connections go back to one pool, so
// the process holds about one connection per request in flight (a host
// waiting on a blocking query holds one) rather than one idle connection
// kept per host and per kind of request.
var shared = &http.Transport{
	DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	MaxIdleConns:        4096,
	MaxIdleConnsPerHost: 4096,
	IdleConnTimeout:     90 * time.Second,
	// As an agent's client of a Consul on loopback (consulx.Config).
	DisableCompression: true,
}

func newClient(addr string, req, recv, watch *atomic.Int64) (*api.Client, error) {
	return api.NewClient(&api.Config{Address: addr, HttpClient: &http.Client{Transport: counting{shared, req, recv, watch}}})
}

// raiseFiles raises the limit of open files to its hard limit: thousands
// of hosts each hold a connection, and Consul (started from here) as many.
func raiseFiles() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// cpu returns the CPU seconds (user + system) and the resident and peak
// memory (MB) of process pid.
func cpu(pid int) (float64, float64, float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	var rss, hwm float64
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			kb := func() float64 { v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64); return v / 1024 }
			switch {
			case strings.HasPrefix(l, "VmRSS:"):
				rss = kb()
			case strings.HasPrefix(l, "VmHWM:"):
				hwm = kb()
			}
		}
	}
	return (ut + st) / 100, rss, hwm
}

func run(design string, n int) error {
	// Every host is on 127.0.0.1: Consul must take a connection per host
	// waiting, and per host following the rollout. An -hcl after the
	// rig's own (a config file would come before it, and lose).
	args := []string{"-hcl", "limits { http_max_conns_per_client = 19000 }"}
	if *profFlag != "" {
		args = append(args, "-hcl", "enable_debug = true")
	}
	c, err := rig.StartConsul(args...)
	if err != nil {
		return err
	}
	defer c.Stop()
	pid, err := c.Pid()
	if err != nil {
		return err
	}
	admin, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		return err
	}
	if err := history(admin, design, n); err != nil {
		return err
	}
	conc := max(1, int(float64(n)**percent/100))
	req := make([]atomic.Int64, n)
	recv := make([]atomic.Int64, n)
	watched := make([]atomic.Int64, n)
	slots := make([]lock.Slot, n)
	// When each host's wait was in Consul: a slot freed before it is not
	// this host's hand-off to wait for.
	waiting := make([]time.Time, n)
	fleets := make([]*fleetconsul.Fleet, n)
	waveOf := make([]int, n)
	policy := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 10}, {Percent: 100}}, Bake: *bakeFlag, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	for i := range n {
		cl, err := newClient(c.Addr, &req[i], &recv[i], &watched[i])
		if err != nil {
			return err
		}
		node := fmt.Sprintf("host-%05d", i)
		fleets[i] = &fleetconsul.Fleet{Client: cl, Prefix: "bench", Node: node, SessionTTL: *ttl}
		switch design {
		case "rollout":
			sl := lockconsul.New(cl, "bench", "app", node, *ttl, conc)
			sl.Waiting = func() { waiting[i] = time.Now() }
			sl.SetPlanner(&rollout.Coordinator{Service: "app", Node: node, Decider: rollout.NewDecider(policy), Records: fleets[i]})
			slots[i] = sl
			// Registered, as an agent does when it starts: not part of
			// the rollout measured.
			if err := fleets[i].Report(context.Background(), "app", fleet.NodeStatus{Node: node, Result: "registered",
				Time: time.Now().UTC(), Policy: policy.Hash()}); err != nil {
				return err
			}
			req[i].Store(0)
			recv[i].Store(0)
		case "semaphore":
			f := &fleetconsul.Fleet{Client: cl, Prefix: "bench", Node: node, SessionTTL: *ttl}
			slots[i] = f.LegacySemaphore("app", conc)
		default:
			sl := lockconsul.New(cl, "bench", "app", node, *ttl, conc)
			sl.Waiting = func() { waiting[i] = time.Now() }
			slots[i] = sl
		}
	}
	// A host of a service with a rollout follows the coordinator's
	// document as its agent does. With the watch of the announcements
	// (the default) a host at rest does not: it follows from when its
	// check returns (its wave not open, or its update done) until the
	// document says nothing more will come (see agent/rest.go). Without
	// the watch it follows from its start, through the idle time after.
	fctx, stopFollowing := context.WithCancel(context.Background())
	defer stopFollowing()
	wakes := make([]chan struct{}, n)
	engage := make([]func(), n)
	done := make([]atomic.Bool, n)
	var following, started sync.WaitGroup
	for i := range n {
		wakes[i] = make(chan struct{}, 1)
		engage[i] = func() {}
		if design != "rollout" {
			continue
		}
		sl := slots[i].(*lockconsul.Slots)
		if !*watchFlag {
			started.Add(1)
			following.Go(func() { follow(fctx, sl, wakes[i], sync.OnceFunc(started.Done), nil) })
			continue
		}
		engage[i] = sync.OnceFunc(func() {
			following.Go(func() { follow(fctx, sl, wakes[i], func() {}, done[i].Load) })
		})
	}
	// Every agent (watch on, the default) also long-polls the folder of
	// announcements from its start: a publish wakes every host at once.
	// Its first query answers at once; the rollout counts from when
	// each host's second, the blocking one, is asked.
	for i := range n {
		if *watchFlag {
			following.Go(func() {
				fleets[i].WatchPublished(fctx, fleet.Watch{Changed: func(fleet.Published) {}})
			})
		}
	}
	for i := range n {
		for *watchFlag && watched[i].Load() < 2 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Their first reads are the agents' start, not the rollout's.
	started.Wait()
	for i := range n {
		req[i].Store(0)
		recv[i].Store(0)
	}
	cpu0, _, _ := cpu(pid)
	self0, _, _ := cpu(os.Getpid())
	byKind.Reset() // what the hosts did to register is not the rollout's
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	grants := make([]time.Time, n)
	releases := make([]time.Time, n)
	steps := make([][3]time.Duration, n) // each host's look, report and release in its slot
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	if *profFlag != "" {
		go profile(c.Addr, fmt.Sprintf("%s.%d", *profFlag, n), *update*time.Duration(n/conc))
	}
	if *selfProf != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", *selfProf, n))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	t0 := time.Now()
	// The release is published: every host's watch wakes.
	if err := (&fleetconsul.Fleet{Client: admin, Prefix: "bench"}).Announce(ctx, fleet.Published{Service: "app", Key: "s3://releases/app/app.tar.gz", Checksum: sum, Size: 48 << 20, Publisher: "ci@build-1"}); err != nil {
		return err
	}
	if *kindsFlag {
		slog.Debug("rollout starts", "t0", t0.Format("15:04:05.000"))
	}
	for i := range n {
		wg.Go(func() {
			if design == "rollout" {
				sl := slots[i].(*lockconsul.Slots)
				for {
					err := rolloutHost(ctx, sl, fleets[i], policy.Hash(), wakes[i], engage[i], &waveOf[i], &grants[i], &releases[i], &steps[i])
					if err == nil {
						done[i].Store(true)
						engage[i]() // its check returns: it follows until the rollout is done
						return
					}
					firstErr.CompareAndSwap(nil, err.Error())
					failed.Add(1)
					if ctx.Err() != nil {
						return
					}
					time.Sleep(time.Second)
				}
			}
			for {
				_, err := slots[i].Acquire(ctx)
				if err == nil {
					break
				}
				firstErr.CompareAndSwap(nil, err.Error())
				failed.Add(1)
				if ctx.Err() != nil {
					return
				}
				time.Sleep(time.Second)
			}
			grants[i] = time.Now()
			time.Sleep(*update)
			if err := report(ctx, fleets[i], ""); err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				failed.Add(1)
			}
			releases[i] = time.Now()
			slots[i].Release(ctx)
		})
	}
	wg.Wait()
	wall := time.Since(t0)
	if ctx.Err() != nil {
		return fmt.Errorf("did not finish: %v", firstErr.Load())
	}
	cpu1, rss, hwm := cpu(pid)
	self1, _, _ := cpu(os.Getpid())
	var b strings.Builder
	if *kindsFlag {
		byKind.Format(&b, "requests per host by kind (the rollout)", n)
		byKind.Clear()
	}
	kindTable := b.String()
	var reqs, bytes int64
	for i := range n {
		reqs += req[i].Load()
		bytes += recv[i].Load()
	}
	// The k-th grant took the slot the (k-concurrency)-th release freed:
	// its hand-off is from that release, or from when the host's wait was
	// written if that came later (a host still starting up was not kept
	// waiting by the fleet).
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return grants[order[a]].Before(grants[order[b]]) })
	r := append([]time.Time(nil), releases...)
	sort.Slice(r, func(i, j int) bool { return r[i].Before(r[j]) })
	// With a rollout, a host's slot is free only once the wave before
	// its own is done and baked: its hand-off counts from then if that is
	// later.
	waveDone := map[int]time.Time{}
	for i := range n {
		for w := waveOf[i] + 1; w <= 3; w++ {
			if releases[i].After(waveDone[w]) {
				waveDone[w] = releases[i]
			}
		}
	}
	var hand []time.Duration
	for k := conc; k < n; k++ {
		h := order[k]
		from := r[k-conc]
		if waiting[h].After(from) && design != "rollout" {
			from = waiting[h]
		}
		if d := waveDone[waveOf[h]]; !d.IsZero() && d.Add(*bakeFlag).After(from) {
			from = d.Add(*bakeFlag)
		}
		hand = append(hand, max(0, grants[h].Sub(from)))
		if *kindsFlag && grants[h].Sub(from) > 300*time.Millisecond {
			fmt.Printf("    hand-off %d (host %d, wave %d): %v, from %.3f to %.3f\n", k, h, waveOf[h], grants[h].Sub(from).Round(time.Millisecond), from.Sub(t0).Seconds(), grants[h].Sub(t0).Seconds())
		}
	}
	if *kindsFlag && design == "rollout" {
		first, last := map[int]time.Time{}, map[int]time.Time{}
		for i := range n {
			w := waveOf[i]
			if f, ok := first[w]; !ok || grants[i].Before(f) {
				first[w] = grants[i]
			}
			if releases[i].After(last[w]) {
				last[w] = releases[i]
			}
		}
		for w := 0; w < 3; w++ {
			fmt.Printf("    wave %d: first grant %.3f s, last release %.3f s\n", w, first[w].Sub(t0).Seconds(), last[w].Sub(t0).Seconds())
		}
		// What a slot costs beyond the update: the host's look once
		// granted, its report, the release of its slot (all within its
		// slot) and the hand-off to the next host (the coordinator seeing
		// the slot free, its grant written, the next host woken).
		var mean [3]time.Duration
		for i := range n {
			for k := range mean {
				mean[k] += steps[i][k] / time.Duration(n)
			}
		}
		sorted := append([]time.Duration(nil), hand...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		median := time.Duration(0)
		if len(sorted) > 0 {
			median = sorted[len(sorted)/2]
		}
		fmt.Printf("    a slot beyond the update, mean: look %.1f ms, report %.1f ms, release %.1f ms; hand-off median %.1f ms (from the report: the release is part of it)\n",
			ms(mean[0]), ms(mean[1]), ms(mean[2]), ms(median))
	}
	sort.Slice(hand, func(i, j int) bool { return hand[i] < hand[j] })
	p99 := time.Duration(0)
	if len(hand) > 0 {
		p99 = hand[min(len(hand)-1, len(hand)*99/100)]
	}
	ideal := time.Duration((n+conc-1)/conc) * *update
	if design == "rollout" {
		// The canary alone, then each wave back to back, each after
		// the bake of the one before.
		first := int(math.Ceil(float64(n)/10)) - 1
		ideal = time.Duration(1+(first+conc-1)/conc+(n-1-first+conc-1)/conc)**update + 2**bakeFlag
	}
	idleRate := -1.0
	if *idle > 0 {
		var before int64
		for i := range n {
			before += req[i].Load()
		}
		time.Sleep(*idle)
		var after int64
		for i := range n {
			after += req[i].Load()
		}
		idleRate = float64(after-before) / float64(n) * float64(time.Hour) / float64(*idle)
	}
	stopFollowing()
	following.Wait()
	for _, s := range slots {
		if cl, ok := s.(interface{ Close() }); ok {
			cl.Close()
		}
	}
	fmt.Printf("%-10s %6d %5d %7.2f %7.2f %9.1f %9.1f %9.1f %8.2f %8.0f %10.1f",
		design, n, conc, wall.Seconds(), wall.Seconds()/ideal.Seconds(), float64(p99)/float64(time.Millisecond),
		float64(reqs)/float64(n), float64(bytes)/float64(n)/1024, cpu1-cpu0, rss, idleRate)
	if f := failed.Load(); f > 0 {
		fmt.Printf("  (%d waits failed and were retried: %v)", f, firstErr.Load())
	}
	// Consul's and the simulator's CPU spread over every core of the
	// machine, back to back: no run on this machine can be shorter.
	floor := (cpu1 - cpu0 + self1 - self0) / float64(runtime.NumCPU())
	fmt.Printf("  peak rss %.0f MB; simulator cpu %.2f s; cpu floor %.2f× ideal\n", hwm, self1-self0, floor/ideal.Seconds())
	fmt.Print(kindTable)
	return nil
}

// profile writes a CPU profile of Consul over d.
func profile(addr, file string, d time.Duration) {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds()))))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	os.WriteFile(file, b, 0o644)
}

// sum is the release the rollout design rolls out.
const sum = "0123456789abcdef0123456789abcdef"

// follow is a host's follower of the coordinator's document, as the
// agent's: one blocking query at a time, for as long as the host runs; it
// wakes the host (wake) when what a waiting host acts on changes. With
// rest, it stops once rest says the host is at rest and the document says
// nothing more will come (no rollout, done, or stopped).
func follow(ctx context.Context, sl *lockconsul.Slots, wake chan<- struct{}, ready func(), rest func() bool) {
	var index uint64
	last := ""
	for ctx.Err() == nil {
		doc, next, err := sl.WaitRollout(ctx, index)
		if index == 0 {
			ready()
		}
		if err != nil {
			index = 0
			time.Sleep(time.Second)
			continue
		}
		state := doc.ActState()
		if index > 0 && next != index && state != last {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		last, index = state, next
		if rest != nil && (doc == nil || doc.Done || doc.Trip != "") && rest() {
			return
		}
	}
}

// rolloutHost is one host of a service with a rollout, doing what an
// agent's checks do against Consul: its own records with the hold and
// the breakers, the coordinator's document and its own wave. While its wave
// is closed it waits for its follower (follow) to wake it, or for the
// time the agent would look again; once open, or opening by itself once
// an earlier wave is done, it waits in line for its grant, looks again,
// updates, reports and gives the slot back.
func rolloutHost(ctx context.Context, sl *lockconsul.Slots, f *fleetconsul.Fleet, policy string, wake <-chan struct{}, engage func(), wave *int, grant, release *time.Time, steps *[3]time.Duration) error {
	// One read of the host's share of the records (the agent takes the
	// hold and the breaker from it too) and of the rollout's keys, which
	// the rollout's look then takes.
	check := func() (*lock.Rollout, string, error) {
		if _, err := f.BriefAlong(ctx, "app", f.Node, sl); err != nil {
			return nil, "", err
		}
		return sl.Rollout(ctx, sum)
	}
	// sleep waits as the agent's loop: until woken, or until the time
	// the check said (5 s at least, a minute at most).
	sleep := func(until time.Time) {
		engage() // its check returns: its agent follows the document
		d := time.Minute
		if !until.IsZero() {
			d = min(d, max(time.Until(until), 5*time.Second))
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
	}
	for {
		select {
		case <-wake: // the check below sees what woke it
		default:
		}
		doc, name, err := check()
		if err != nil {
			return err
		}
		// Not planned or not placed yet: in line for the plan at once,
		// as the agent. Else in line only for a wave that is open or
		// opens by itself.
		if doc != nil && doc.Checksum == sum && name != "" {
			if ws := doc.Wave(name); ws == nil || !ws.Open && !ws.Queue {
				var until time.Time
				if ws != nil {
					until = ws.Until
				}
				sleep(until)
				continue
			}
		}
		sl.Want(sum)
		// Long in line, its agent follows the coordinator.
		follow := time.AfterFunc(agent.FollowInLine(), engage)
		_, err = sl.Acquire(ctx)
		follow.Stop()
		if errors.Is(err, lock.ErrMoved) {
			engage()
			continue // as the agent: its next check decides afresh
		} else if err != nil {
			return err
		}
		*grant = time.Now()
		doc, name, err = check() // looked at again once the slot is held
		steps[0] = time.Since(*grant)
		if err != nil {
			sl.Release(ctx)
			return err
		}
		for k := range doc.Waves {
			if doc.Waves[k].Name == name {
				*wave = k
			}
		}
		time.Sleep(*update)
		reported := time.Now()
		err = report(ctx, f, policy)
		*release = time.Now()
		steps[1] = release.Sub(reported)
		sl.Release(ctx)
		steps[2] = time.Since(*release)
		return err
	}
}

// report is what a host's agent tells the fleet once its update is
// done: its status and its install event, in one request.
func report(ctx context.Context, f *fleetconsul.Fleet, policy string) error {
	ns := fleet.NodeStatus{Node: f.Node, Checksum: sum, Release: "v2", Result: "installed",
		Attempt: sum, Time: time.Now().UTC(), Policy: policy}
	return f.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns))
}

// history fills the service's audit log to its bound, as the rollouts
// before this one left it: each host's report appends to a full log.
// With a rollout, the document of the release before says it is done on
// the n hosts, as its coordinator left it.
func history(c *api.Client, design string, n int) error {
	if design == "rollout" {
		waves := []lock.WaveState{{Name: "canary", Hosts: 1, Done: 1}}
		if n > 1 {
			tenth := max(1, n/10) - 1
			waves = append(waves, lock.WaveState{Name: "10%", Hosts: tenth, Done: tenth}, lock.WaveState{Name: "100%", Hosts: n - 1 - tenth, Done: n - 1 - tenth})
		}
		b, _ := json.Marshal(lock.Rollout{Checksum: "fedcba9876543210fedcba9876543210", Waves: waves, Done: true, By: "host-00000", Time: time.Now().Add(-24 * time.Hour).UTC()})
		if _, err := c.KV().Put(&api.KVPair{Key: lockconsul.RolloutKey("bench", "app"), Value: b}, nil); err != nil {
			return err
		}
	}
	var ops api.TxnOps
	base := time.Now().Add(-24 * time.Hour)
	for i := range fleet.MaxEvents {
		ev := fleet.Event{Kind: fleet.EventInstall, Who: fmt.Sprintf("host-%05d", i), Via: "agent", Node: fmt.Sprintf("host-%05d", i),
			Checksum: "0123456789abcdef0123456789abcdef", Release: "v1", Time: base.Add(time.Duration(i) * time.Second), Service: "app"}
		b, _ := json.Marshal(ev)
		key := fmt.Sprintf("%s%s/%020d-%08x", fleet.AuditKey("bench", "app"), ev.Node, ev.Time.UnixNano(), i)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: b}})
		if len(ops) == 64 || i == fleet.MaxEvents-1 {
			ok, resp, _, err := c.Txn().Txn(ops, nil)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("fill the audit log: %v", resp.Errors)
			}
			ops = nil
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
