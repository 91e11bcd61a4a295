// Command rollout measures a progressive rollout and a fleet revert:
//
//	go run ./bench/rollout [-hosts 10] [-bake 2s] [-kinds [-idle 21m [-settle 3m]]]
//
// -hosts agents (separate processes, watch on) against MinIO and Consul,
// with `rollout { waves = ["10%", "50%", "100%"] bake = BAKE }` and
// concurrency 5. It publishes a release and reports the rollout's wall
// time (first host's start to last host's end) against the sum over the
// waves of the slowest host's update, plus the bakes between waves. Then
// it publishes a release whose health check fails on one host of the last
// wave, with on_failure = "revert", and reports the time from the
// breaker's trip to the last host switched back.
//
// -kinds puts a counting proxy between each agent and Consul (one
// listener per agent) and prints, for the rollout of the first release
// (from its publish to the last host's report and release), the requests
// per host by kind, as bench/scale's -kinds names them, with the total
// and the KB Consul answered with. The agents' start and the publish
// (which goes to Consul directly) are not counted. -idle then counts
// them at rest for that long (longer than the 10-minute waits of the
// agents' long polls, to see each come back), from -settle after the
// rollout.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/bench/internal/benchrig"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
)

var (
	hosts      = flag.Int("hosts", 10, "agents")
	bake       = flag.Duration("bake", 2*time.Second, "bake between waves")
	kindsFlag  = flag.Bool("kinds", false, "print each agent's requests to Consul by kind during the first rollout")
	idleFlag   = flag.Duration("idle", 0, "with -kinds, also count each agent's requests to Consul at rest for this long after the rollout")
	settleFlag = flag.Duration("settle", 0, "with -idle, start counting this long after the rollout (its tail left out)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func tarball(v string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "VERSION", Mode: 0o644, Size: int64(len(v)), Typeflag: tar.TypeReg})
	tw.Write([]byte(v))
	tw.Close()
	zw.Close()
	return b.Bytes()
}

type span struct{ start, end float64 }

func run() error {
	dir, err := os.MkdirTemp("", "dropship-rollout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "dropship")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/dropship").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	srv, err := benchrig.Start(ctx, "bench")
	if err != nil {
		return err
	}
	defer srv.Stop()
	m, c := srv.MinIO, srv.Consul
	timeline := filepath.Join(dir, "timeline")
	var names, cfgs []string
	var counted *counter
	if *kindsFlag {
		if counted, err = newCounter(c.Addr, *hosts); err != nil {
			return err
		}
		defer counted.Close()
	}
	config := func(name, consul string) string {
		return fmt.Sprintf(`state_path = %[1]q
node_name  = %[2]q
repo "s3" {
  endpoint   = %[3]q
  access_key = %[4]q
  secret_key = %[5]q
}
lock "consul" {
  address = %[6]q
  prefix  = "bench"
}
service "app" {
  sequential  = true
  concurrency = 5
  rollout {
    waves      = ["10%%", "50%%", "100%%"]
    bake       = %[7]q
    on_failure = "revert"
  }
  artifact "s3" {
    bucket      = "bench"
    path        = "app.tar.gz"
    destination = %[8]q
  }
  before "script" {
    command = "echo \"$(date +%%s.%%N) start $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> %[9]s; sleep 0.2"
  }
  after "script" {
    command = "echo \"$(date +%%s.%%N) end $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> %[9]s"
  }
  check "script" {
    command = "test ! -f %[10]s/fail-$DROPSHIP_HOSTNAME -o \"$(cat VERSION)\" != v3"
  }
}
`, filepath.Join(dir, name, "state"), name, m.Endpoint, m.AccessKey, m.SecretKey, consul, bake.String(),
			filepath.Join(dir, name, "srv"), timeline, dir)
	}
	for i := range *hosts {
		name := fmt.Sprintf("host-%02d", i)
		p := filepath.Join(dir, name+".hcl")
		consul := c.Addr
		if counted != nil {
			consul = counted.Addr(i)
		}
		os.WriteFile(p, []byte(config(name, consul)), 0o600)
		names, cfgs = append(names, name), append(cfgs, p)
	}
	// The publisher's config: host-00's, with Consul directly (its
	// requests are not an agent's).
	pubCfg := filepath.Join(dir, "publish.hcl")
	os.WriteFile(pubCfg, []byte(config(names[0], c.Addr)), 0o600)
	publish := func(v string) (string, error) {
		art := filepath.Join(dir, v+".tar.gz")
		b := tarball(v)
		os.WriteFile(art, b, 0o644)
		out, err := exec.Command(bin, "publish", "-c", pubCfg, art, "--to", "s3://bench/app.tar.gz", "--service", "app").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("publish: %v\n%s", err, out)
		}
		sum := md5.Sum(b)
		return hex.EncodeToString(sum[:]), nil
	}
	version := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name, "srv", "VERSION"))
		return string(b)
	}
	waitAll := func(v string, timeout time.Duration) error {
		deadline := time.Now().Add(timeout)
		for {
			n := 0
			for _, name := range names {
				if version(name) == v {
					n++
				}
			}
			if n == len(names) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("after %s, %d of %d hosts on %s", timeout, n, len(names), v)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
			p.Wait()
		}
	}()
	if _, err := publish("v1"); err != nil {
		return err
	}
	for i, cfg := range cfgs {
		log, _ := os.Create(filepath.Join(dir, names[i]+".log"))
		cmd := exec.Command(bin, "agent", "-c", cfg)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
	}
	if err := waitAll("v1", 2*time.Minute); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // the last after hook writes its line
	client, _ := api.NewClient(&api.Config{Address: c.Addr})
	if counted != nil {
		// Every agent done with v1 (reported, its slot given back)
		// before the count starts: that is v1's, not v2's.
		if err := waitDone(client, names, md5hex(tarball("v1")), 2*time.Minute); err != nil {
			return err
		}
		counted.Reset()
	}
	sum, err := publish("v2")
	if err != nil {
		return err
	}
	if err := waitAll("v2", 2*time.Minute); err != nil {
		return err
	}
	if counted != nil {
		if err := waitDone(client, names, sum, 2*time.Minute); err != nil {
			return err
		}
		counted.Print(os.Stdout)
		if *idleFlag > 0 {
			// At rest: every host on v2, its slot given back, the
			// coordinator about to give up (a part of the rollout's
			// tail is in the window, as in a fleet's).
			if *settleFlag > 0 {
				time.Sleep(*settleFlag) // the rollout's tail left out
			}
			counted.Reset()
			time.Sleep(*idleFlag)
			fmt.Printf("at rest for %s, from %s after the rollout (per host; per hour: × %.2f)\n", *idleFlag, *settleFlag, float64(time.Hour)/float64(*idleFlag))
			counted.Print(os.Stdout)
		}
	}
	time.Sleep(500 * time.Millisecond)
	spans := readTimeline(timeline, sum)
	policy := &rollout.Policy{Waves: []rollout.Wave{{Percent: 10}, {Percent: 50}, {Percent: 100}}}
	var members []rollout.Member
	for _, n := range names {
		members = append(members, rollout.Member{Node: n})
	}
	steps := policy.Plan(sum, members)
	first, last, ideal := 1e18, 0.0, 0.0
	for i, s := range steps {
		slowest := 0.0
		for _, n := range s.Nodes {
			sp := spans[n]
			first, last = min(first, sp.start), max(last, sp.end)
			slowest = max(slowest, sp.end-sp.start)
		}
		ideal += slowest
		if i < len(steps)-1 {
			ideal += bake.Seconds()
		}
		fmt.Printf("wave %s: %d hosts, slowest update %.3fs\n", s.Name, len(s.Nodes), slowest)
	}
	wall := last - first
	fmt.Printf("rollout of %d hosts in %d waves, bake %s: wall %.3fs, sum of (slowest update) + bakes between waves %.3fs, ratio %.3f (target <= 1.1)\n",
		len(names), len(steps), *bake, wall, ideal, wall/ideal)

	// A release that fails its check on one host of the last wave: the
	// breaker trips there, the hosts of the first two waves revert.
	v3 := policy.Plan(md5hex(tarball("v3")), members)
	victim := v3[len(v3)-1].Nodes[0]
	os.WriteFile(filepath.Join(dir, "fail-"+victim), nil, 0o644)
	sum3, err := publish("v3")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		reverted, on := 0, 0
		var trip time.Time
		var lastRevert time.Time
		kvs, _, err := client.KV().List("bench/app/", nil)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			switch {
			case strings.HasPrefix(kv.Key, "bench/app/failed/"+sum3):
				var b fleet.Breaker
				json.Unmarshal(kv.Value, &b)
				trip = b.Time
			case strings.HasPrefix(kv.Key, "bench/app/nodes/"):
				var n fleet.NodeStatus
				json.Unmarshal(kv.Value, &n)
				if n.Result == "reverted" {
					reverted++
					if n.Time.After(lastRevert) {
						lastRevert = n.Time
					}
				}
			}
		}
		for _, name := range names {
			if version(name) == "v3" {
				on++
			}
		}
		want := len(v3[0].Nodes) + len(v3[1].Nodes)
		if !trip.IsZero() && reverted >= want && on == 0 {
			fmt.Printf("fleet revert: breaker tripped on %s at %s; %d hosts reverted, the last %.3fs later\n",
				victim, trip.Format("15:04:05.000"), reverted, lastRevert.Sub(trip).Seconds())
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("revert: breaker %v, %d of %d reverted, %d still on v3", !trip.IsZero(), reverted, want, on)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func md5hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

var lineRE = regexp.MustCompile(`^(\S+) (start|end) (\S+) (\S+)$`)

// readTimeline returns each host's update of sum: its before hook's start
// to its after hook's end.
func readTimeline(path, sum string) map[string]span {
	b, _ := os.ReadFile(path)
	out := map[string]span{}
	lines := strings.Split(string(b), "\n")
	sort.Strings(lines)
	for _, l := range lines {
		m := lineRE.FindStringSubmatch(l)
		if m == nil || m[4] != sum {
			continue
		}
		ts, _ := strconv.ParseFloat(m[1], 64)
		sp := out[m[3]]
		if m[2] == "start" {
			sp.start = ts
		} else {
			sp.end = ts
		}
		out[m[3]] = sp
	}
	return out
}
