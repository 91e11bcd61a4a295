package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// stageProxy stands between the agents and MinIO, to see and shape the
// downloads of one key: a barrier that lets GETs through only once want
// of them are in flight at once, or a stall that stops a body after some
// bytes. HEADs and other keys pass.
type stageProxy struct {
	srv  *httptest.Server
	path string // "/bucket/key"

	mu             sync.Mutex
	inflight, most int
	want           int
	open           chan struct{}
	opened         bool

	stallAfter atomic.Int64 // >0: stop each body after this many bytes
	stalled    atomic.Int32 // bodies stopped
}

func newStageProxy(t *testing.T, target, bucket, key string, want int) *stageProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &stageProxy{path: "/" + bucket + "/" + key, want: want, open: make(chan struct{})}
	if want <= 1 {
		p.opened = true
		close(p.open)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if n := p.stallAfter.Load(); n > 0 && resp.Request.Method == http.MethodGet && resp.Request.URL.Path == p.path {
			resp.Body = &stallingBody{rc: resp.Body, left: n, ctx: resp.Request.Context(), p: p}
		}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == p.path {
			p.mu.Lock()
			p.inflight++
			p.most = max(p.most, p.inflight)
			if p.inflight >= p.want && !p.opened {
				p.opened = true
				close(p.open)
			}
			p.mu.Unlock()
			defer func() { p.mu.Lock(); p.inflight--; p.mu.Unlock() }()
			// Bounded: without the downloads overlapping, the test fails
			// on the count instead of hanging.
			select {
			case <-p.open:
			case <-time.After(60 * time.Second):
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// mostAtOnce is the most downloads of the key that were in flight at once.
func (p *stageProxy) mostAtOnce() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.most
}

type stallingBody struct {
	rc   io.ReadCloser
	left int64
	ctx  context.Context
	p    *stageProxy
}

func (b *stallingBody) Read(buf []byte) (int, error) {
	if b.left <= 0 {
		b.p.stalled.Add(1)
		<-b.ctx.Done() // until the client goes away
		return 0, b.ctx.Err()
	}
	if int64(len(buf)) > b.left {
		buf = buf[:b.left]
	}
	n, err := b.rc.Read(buf)
	b.left -= int64(n)
	return n, err
}

func (b *stallingBody) Close() error { return b.rc.Close() }

// stageRig is n agents, separate processes, updating one S3 artifact
// through a stageProxy with concurrency = 1.
type stageRig struct {
	t      *testing.T
	dir    string
	st     *s3.Store
	bucket string
	proxy  *stageProxy
	hosts  []*stageHost
	// chunked: publish writes the chunk index and the chunks first, as
	// `dropship publish` does.
	chunked bool
}

type stageHost struct {
	name, cfg, dest, state, log string
	cmd                         *exec.Cmd
}

func newStageRig(t *testing.T, n, barrier int, extra string) *stageRig {
	minio := servers.MinIO(t)
	c := consulServer(t)
	st, bucket := minioBucket(t, "stage")
	f := &stageRig{t: t, dir: t.TempDir(), st: st, bucket: bucket}
	f.proxy = newStageProxy(t, minio.Endpoint, bucket, "app.tar.gz", barrier)
	for i := range n {
		h := &stageHost{name: fmt.Sprintf("host-%d", i)}
		h.cfg = filepath.Join(f.dir, h.name+".hcl")
		h.dest = filepath.Join(f.dir, h.name, "srv", "app")
		h.state = filepath.Join(f.dir, h.name, "state")
		h.log = filepath.Join(f.dir, h.name+".log")
		os.WriteFile(h.cfg, []byte(fmt.Sprintf(`state_path = %[1]q
node_name  = %[2]q
repo "s3" {
  region     = "us-east-1"
  endpoint   = %[3]q
  access_key = %[4]q
  secret_key = %[5]q
}
lock "consul" {
  address     = %[6]q
  prefix      = %[7]q
  session_ttl = "10s"
}
service "app" {
  check_interval = "300ms"
  sequential     = true
  concurrency    = 1
  %[8]s
  artifact "s3" {
    bucket      = %[9]q
    path        = "app.tar.gz"
    destination = %[10]q
  }
  before "script" {
    command = "echo \"$(date +%%s.%%N) start $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> %[11]s/timeline; if [ -f %[11]s/block ]; then touch %[11]s/inslot-$DROPSHIP_HOSTNAME; while [ -f %[11]s/block ]; do sleep 0.05; done; fi; sleep 0.2"
  }
  after "script" {
    command = "echo \"$(date +%%s.%%N) end $DROPSHIP_HOSTNAME $DROPSHIP_CHECKSUM\" >> %[11]s/timeline"
  }
}
`, h.state, h.name, f.proxy.srv.URL, minio.AccessKey, minio.SecretKey, c.Addr, "test/"+bucket, extra, bucket, h.dest, f.dir)), 0o600)
		f.hosts = append(f.hosts, h)
	}
	t.Cleanup(func() {
		for _, h := range f.hosts {
			f.stop(h)
		}
	})
	return f
}

// publish puts release v (with size bytes of noise) in the bucket and
// returns its checksum.
func (f *stageRig) publish(v string, size int) string {
	f.t.Helper()
	noise := make([]byte, size)
	rand.Read(noise)
	art := filepath.Join(f.dir, v+".tar.gz")
	testutil.WriteFile(f.t, art, testutil.TarGz(f.t, testutil.File{Name: "VERSION", Body: v}, testutil.File{Name: "noise", Body: string(noise)}))
	if f.chunked {
		if _, err := chunks.Publish(context.Background(), f.st, f.bucket, "app.tar.gz", art, nil); err != nil {
			f.t.Fatal(err)
		}
	}
	info, err := f.st.Publish(context.Background(), f.bucket, "app.tar.gz", art, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	return info.Checksum()
}

func (f *stageRig) start(h *stageHost) {
	log, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	h.cmd = exec.Command(bin, "agent", "-c", h.cfg, "--log-level", "debug")
	h.cmd.Stdout, h.cmd.Stderr = log, log
	if err := h.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	log.Close()
}

func (f *stageRig) stop(h *stageHost) {
	if h.cmd != nil && h.cmd.ProcessState == nil {
		h.cmd.Process.Signal(syscall.SIGTERM)
		h.cmd.Wait()
	}
}

func (h *stageHost) version() string {
	b, _ := os.ReadFile(filepath.Join(h.dest, "VERSION"))
	return string(b)
}

func (h *stageHost) logText() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}

func (f *stageRig) waitVersion(hosts []*stageHost, v string) {
	f.t.Helper()
	testutil.Eventually(f.t, 90*time.Second, func() error {
		for _, h := range hosts {
			if h.version() != v {
				return fmt.Errorf("%s on %q, not %s; log tail:\n%s", h.name, h.version(), v, tailOf([]byte(h.logText())))
			}
		}
		return nil
	})
}

func (f *stageRig) waitLog(h *stageHost, parts ...string) {
	f.t.Helper()
	testutil.Eventually(f.t, 60*time.Second, func() error {
		if !hasLine(h.logText(), parts) {
			return fmt.Errorf("%s has not logged a line with %q; log tail:\n%s", h.name, parts, tailOf([]byte(h.logText())))
		}
		return nil
	})
}

// slotSpans are the hosts' updates of sum, from the start of the before
// hook to the end of the after hook.
func (f *stageRig) slotSpans(sum string) map[string][2]float64 {
	file, err := os.Open(filepath.Join(f.dir, "timeline"))
	if err != nil {
		return nil
	}
	defer file.Close()
	spans := map[string][2]float64{}
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) != 4 || fl[3] != sum {
			continue
		}
		ts, _ := strconv.ParseFloat(fl[0], 64)
		sp := spans[fl[2]]
		if fl[1] == "start" {
			sp[0] = ts
		} else {
			sp[1] = ts
		}
		spans[fl[2]] = sp
	}
	return spans
}

// A staged update at concurrency = 1: the three hosts' downloads are in
// flight at once (the proxy lets none through until all three have
// asked), yet never more than one host is between its before hook and
// the end of its after hook.
func TestStagedDownloadsOverlapOneHostInTheSlot(t *testing.T) {
	t.Parallel()
	const n = 3
	f := newStageRig(t, n, n, "")
	sum := f.publish("v1", 4<<20)
	for _, h := range f.hosts {
		f.start(h)
	}
	f.waitVersion(f.hosts, "v1")
	if got := f.proxy.mostAtOnce(); got != n {
		t.Errorf("at most %d of %d downloads were in flight at once: the slot covered the download", got, n)
	}
	var spans [][2]float64
	testutil.Eventually(t, 30*time.Second, func() error {
		m := f.slotSpans(sum)
		spans = spans[:0]
		for _, sp := range m {
			if sp[1] == 0 {
				return fmt.Errorf("an after hook has not ended: %v", m)
			}
			spans = append(spans, sp)
		}
		if len(spans) != n {
			return fmt.Errorf("%d of %d hosts ran their hooks: %v", len(spans), n, m)
		}
		return nil
	})
	sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
	for i := 1; i < len(spans); i++ {
		if spans[i][0] < spans[i-1][1] {
			t.Errorf("two hosts in the slot at once: %v", spans)
		}
	}
	for _, h := range f.hosts {
		if !hasLine(h.logText(), []string{"msg=staged", "checksum=" + sum}) {
			t.Errorf("%s did not stage %s", h.name, sum)
		}
	}
}

// A release published over one that a host has staged and waits to
// install (another host holds the slot): the host drops the staged
// release, never runs a hook for it, and installs the new one.
func TestPublishOverStagedReleaseNeverInstallsIt(t *testing.T) {
	t.Parallel()
	f := newStageRig(t, 2, 1, "")
	f.publish("v1", 64<<10)
	for _, h := range f.hosts {
		f.start(h)
	}
	f.waitVersion(f.hosts, "v1")
	block := filepath.Join(f.dir, "block")
	os.WriteFile(block, nil, 0o644)
	v2 := f.publish("v2", 64<<10)
	var in, waiting *stageHost
	testutil.Eventually(t, 60*time.Second, func() error {
		for i, h := range f.hosts {
			if _, err := os.Stat(filepath.Join(f.dir, "inslot-"+h.name)); err == nil {
				in, waiting = h, f.hosts[1-i]
				return nil
			}
		}
		return fmt.Errorf("no host in its before hook for v2")
	})
	// The other host has v2 staged, and waits for the slot.
	f.waitLog(waiting, "msg=staged", "checksum="+v2)
	v3 := f.publish("v3", 64<<10)
	os.Remove(block)
	f.waitVersion(f.hosts, "v3")
	if sp, ok := f.slotSpans(v2)[waiting.name]; ok {
		t.Errorf("%s ran its hooks for v2, staged and published over: %v", waiting.name, sp)
	}
	f.waitLog(waiting, "dropping the staged release", "checksum="+v2)
	if _, ok := f.slotSpans(v2)[in.name]; !ok {
		t.Errorf("%s, in the slot when v3 was published, did not finish v2", in.name)
	}
	if !hasLine(waiting.logText(), []string{"msg=installed", "checksum=" + v3}) {
		t.Errorf("%s did not install v3", waiting.name)
	}
}

// kill -9 while a release is being staged (its download stalled half
// way) leaves a partial release in staging/ and the skeleton of its tar
// half written in the chunk cache; the next start removes both before
// anything else, and installs nothing from them.
func TestKillDuringStagingLeavesNothing(t *testing.T) {
	t.Parallel()
	f := newStageRig(t, 1, 1, "")
	f.chunked = true
	h := f.hosts[0]
	f.publish("v1", 64<<10)
	f.start(h)
	f.waitVersion(f.hosts, "v1")
	releases := func() []string {
		es, _ := os.ReadDir(filepath.Join(h.state, "app", "releases"))
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}
	staging := filepath.Join(h.state, "app", "staging")
	before := releases()

	f.proxy.stallAfter.Store(1 << 20)
	v2 := f.publish("v2", 4<<20)
	f.waitLog(h, "msg=staging", "checksum="+v2)
	testutil.Eventually(t, 60*time.Second, func() error {
		if f.proxy.stalled.Load() == 0 {
			return fmt.Errorf("the download has not reached the stall")
		}
		return nil
	})
	// What the stalled staging has written so far.
	var left []string
	filepath.WalkDir(staging, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != staging {
			left = append(left, p)
		}
		return nil
	})
	if len(left) == 0 {
		t.Fatal("nothing under staging/ while a release is staged: the test kills nothing")
	}
	cache := filepath.Join(h.state, "app", "chunks")
	temps := func() []string {
		m, _ := filepath.Glob(filepath.Join(cache, ".*"))
		return m
	}
	if len(temps()) == 0 {
		t.Fatal("no skeleton being written while a release with an index is staged")
	}
	h.cmd.Process.Kill()
	h.cmd.Wait()

	// The next start, with the fleet held so that it stages nothing new.
	if _, errOut, code := run(t, "hold", "app", "--reason", "kill test", "-c", h.cfg); code != 0 {
		t.Fatalf("hold: %s", errOut)
	}
	mark := len(h.logText())
	f.start(h)
	testutil.Eventually(t, 60*time.Second, func() error {
		if log := h.logText()[mark:]; !hasLine(log, []string{"msg=check", "result=skipped", "checksum=" + v2}) {
			return fmt.Errorf("no check held back yet:\n%s", tailOf([]byte(log)))
		}
		return nil
	})
	if es, err := os.ReadDir(staging); err != nil || len(es) != 0 {
		t.Errorf("staging/ after the next start: %v, %v", es, err)
	}
	if m := temps(); len(m) != 0 {
		t.Errorf("the chunk cache after the next start: %v", m)
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "*.skel")); len(m) != 1 {
		t.Errorf("the skeleton of the current release is not kept: %v", m)
	}
	if got := releases(); strings.Join(got, ",") != strings.Join(before, ",") || h.version() != "v1" {
		t.Errorf("releases %v (before the kill %v), destination on %q", got, before, h.version())
	}

	// Resumed, the release is staged and installed whole.
	f.proxy.stallAfter.Store(0)
	if _, errOut, code := run(t, "resume", "app", "-c", h.cfg); code != 0 {
		t.Fatalf("resume: %s", errOut)
	}
	f.waitVersion(f.hosts, "v2")
	f.waitLog(h, "msg=installed", "checksum="+v2)
	if es, _ := os.ReadDir(staging); len(es) != 0 {
		t.Errorf("staging/ after the install: %v", es)
	}
	if got := releases(); len(got) != len(before)+1 {
		t.Errorf("releases after the install: %v (before %v)", got, before)
	}
}
