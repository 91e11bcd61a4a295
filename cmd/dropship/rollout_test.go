package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tag gives host i node tags in its agent file.
func (f *fleetRig) tag(i int, tags ...string) {
	h := f.hosts[i]
	b, _ := os.ReadFile(h.cfg)
	q := make([]string, len(tags))
	for j, t := range tags {
		q[j] = fmt.Sprintf("%q", t)
	}
	line := fmt.Sprintf("node_name  = %q\nnode_tags  = [%s]", h.name, strings.Join(q, ", "))
	os.WriteFile(h.cfg, []byte(strings.Replace(string(b), fmt.Sprintf("node_name  = %q", h.name), line, 1)), 0o644)
}

var waveLine = regexp.MustCompile(`wave may start" service=app checksum=(\S+) wave=(\S+)`)

// waves reads from the hosts' logs which wave each host started in, for
// checksum sum: wave name -> hosts.
func (f *fleetRig) waves(sum string) map[string][]string {
	out := map[string][]string{}
	for _, h := range f.hosts {
		b, _ := os.ReadFile(filepath.Join(f.dir, h.name+".log"))
		for _, m := range waveLine.FindAllStringSubmatch(string(b), -1) {
			if m[1] == sum {
				out[m[2]] = append(out[m[2]], h.name)
				break
			}
		}
	}
	return out
}

const rolloutWaves = `
  rollout {
    canary = 1
    waves  = ["50%", "100%"]
    bake   = "1s"
  }`

// Waves go in order: no host of a wave starts before every host of the
// wave before it has finished and the bake has passed.
func TestRolloutWavesInOrderWithBake(t *testing.T) {
	c := consulServer(t)
	f := newFleet(t, 8, 2, c, rolloutWaves)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.waitEnds("v1", 8)
	f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 90*time.Second)
	f.waitEnds("v2", 8)

	sum := f.checksum(t)
	w := f.waves(sum)
	if len(w["canary"]) != 1 || len(w["1"]) != 3 || len(w["2"]) != 4 {
		t.Fatalf("waves %v: want 1 canary, 3 more to reach 50%%, 4 in the last", w)
	}
	us, _ := f.timeline()
	span := map[string][2]float64{} // host -> start, end of its v2 update
	for _, u := range us[len(us)-8:] {
		span[u.node] = [2]float64{u.start, u.end}
	}
	order := []string{"canary", "1", "2"}
	for i := 1; i < len(order); i++ {
		lastEnd := 0.0
		for _, h := range w[order[i-1]] {
			lastEnd = max(lastEnd, span[h][1])
		}
		for _, h := range w[order[i]] {
			if gap := span[h][0] - lastEnd; gap < 1.0 {
				t.Errorf("%s (wave %s) started %.3fs after wave %s ended, before the 1s bake passed", h, order[i], gap, order[i-1])
			}
		}
	}
	if got := maxOverlap(us[len(us)-8:]); got > 2 {
		t.Errorf("concurrency 2 within a wave, but %d updates overlapped", got)
	}
	out, _, _ := run(t, "fleet", "status", "app", "-c", f.hosts[0].cfg)
	for _, want := range []string{"rollout of " + sum, "wave canary 1 hosts: 1 done", "wave 1 3 hosts: 3 done", "wave 2 4 hosts: 4 done"} {
		if !strings.Contains(squash(out), want) {
			t.Errorf("fleet status lacks %q:\n%s", want, out)
		}
	}
}

// checksum is the checksum of the artifact in the store, as hosts report
// it after installing it.
func (f *fleetRig) checksum(t *testing.T) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(f.dir, f.hosts[0].name+".log"))
	m := regexp.MustCompile(`msg=installed service=app checksum=(\S+)`).FindAllStringSubmatch(string(b), -1)
	if len(m) == 0 {
		t.Fatalf("host-0 never logged an install:\n%s", tailOf(b))
	}
	return m[len(m)-1][1]
}

// squash collapses runs of spaces, for comparing aligned output.
func squash(s string) string {
	return regexp.MustCompile(` +`).ReplaceAllString(s, " ")
}
