// Command delta benchmarks chunked deltas: a 1 GiB tree published as
// .tar.zst with its chunk index to MinIO, then the same tree with one
// 5 MB file changed.
//
//	go run ./bench/delta [-size 1024] [-rounds 3]
//
// Each round, from an empty state:
//
//   - full v1: v1 installed from the archive alone (chunk_cache = 0), as
//     before chunked deltas, into a state and destination of its own;
//   - first v1: v1 installed with an empty chunk cache (the archive, the
//     cache filled from its tar); these two alternate which runs first
//     (the archive's in odd rounds);
//   - delta v2: v2 installed over it (only the changed chunks fetched);
//   - delta v1, no links: v1 again as a delta over that, chunk_links =
//     false.
//
// It prints wall and CPU time and bytes fetched per round, each install's
// time against the archive install of the same round, then per install
// the best of the rounds against the best of the archive's (as many
// samples on each side) and the median of the rounds' ratios: the
// ratios the targets are set on (delta/full time, delta bytes/archive
// bytes, first/full time).
package main

import (
	"archive/tar"
	"bufio"
	"context"
	"flag"
	"fmt"

	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/bench/internal/benchrig"
)

var (
	sizeMiB = flag.Int("size", 1024, "unpacked size of the tree, MiB")
	rounds  = flag.Int("rounds", 3, "rounds")
	work    = flag.String("dir", "/dev/shm/dropship-bench", "work directory (tmpfs)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	os.MkdirAll(*work, 0o755)
	v1, v2, err := trees()
	if err != nil {
		return err
	}
	ctx := context.Background()
	srv, err := benchrig.StartMinIO(ctx, "bench")
	if err != nil {
		return err
	}
	defer srv.Stop()
	minio, store := srv.MinIO, srv.Store
	bin := filepath.Join(*work, "dropship")
	build := exec.Command("go", "build", "-trimpath", "-tags", "nethttpomithttp2", "-ldflags", "-s -w", "-o", bin, "./cmd/dropship")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	const key = "delta/app.tar.zst"
	publish := func(file string) (int64, error) {
		start := time.Now()
		p, err := chunks.Publish(ctx, store, "bench", key, file, nil)
		if err != nil {
			return 0, err
		}
		info, err := store.Publish(ctx, "bench", key, file, 0)
		if err != nil {
			return 0, err
		}
		fmt.Printf("  published %s: %.1f MiB, %d chunks, %d new (%.1f MiB) in %.1fs\n", filepath.Base(file),
			float64(info.Size)/(1<<20), p.Chunks, p.Uploaded, float64(p.Bytes)/(1<<20), time.Since(start).Seconds())
		return info.Size, nil
	}
	// The archive install has a state and destination of its own, so
	// that it can run before or after the first install of its round.
	state, dest := filepath.Join(*work, "delta-state"), filepath.Join(*work, "delta-dest")
	fullState, fullDest := filepath.Join(*work, "delta-full-state"), filepath.Join(*work, "delta-full-dest")
	config := func(name, extra string) string {
		state, dest := state, dest
		if name == "full" {
			state, dest = fullState, fullDest
		}
		p := filepath.Join(*work, "delta-"+name+".hcl")
		os.WriteFile(p, []byte(fmt.Sprintf(`state_path = %q
repo "s3" {
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
service "bench" {
  keep_releases = 2
  artifact "s3" {
    bucket      = "bench"
    path        = %q
    destination = %q
    max_files   = 1000000
    %s
  }
}
`, state, minio.Endpoint, minio.AccessKey, minio.SecretKey, key, dest, extra)), 0o644)
		return p
	}
	withChunks, without := config("chunks", "chunk_links = true"), config("full", "chunk_cache = 0")
	noLinks := config("nolinks", "chunk_links = false")
	reset := func() { os.RemoveAll(state); os.RemoveAll(dest) }
	resetFull := func() { os.RemoveAll(fullState); os.RemoveAll(fullDest) }

	// Every ratio compares like with like: each install against the
	// archive install of the same round (right before the first install,
	// after the same publish), and the best of the rounds against the
	// best of as many archive installs.
	type sample struct{ full, first, delta, delta0 time.Duration }
	var walls, cpus []sample
	var deltaBytes, delta0Bytes, archiveBytes int64
	fmt.Printf("\n(wall / CPU time; in brackets, against the archive install of the same round; *: the first install ran before the archive's)\n%-6s %-16s %-34s %-50s %-44s\n", "round", "full v1", "first v1", "delta v2 (fetched, files linked)", "delta v1, no links (fetched)")
	for r := 1; r <= *rounds; r++ {
		if _, err := publish(v1); err != nil {
			return err
		}
		// The archive install and the first install alternate which
		// comes first: the one that follows the publish, or the other,
		// is not always the same.
		reset()
		resetFull()
		var full, first, cFull, cFirst time.Duration
		for _, which := range order(r) {
			d, _, err := install(bin, map[string]string{"full": without, "first": withChunks}[which])
			if err != nil {
				return err
			}
			if which == "full" {
				full, cFull = d, cpu
			} else {
				first, cFirst = d, cpu
			}
		}
		resetFull()
		size, err := publish(v2)
		if err != nil {
			return err
		}
		delta, fetched, err := install(bin, withChunks)
		if err != nil {
			return err
		}
		cDelta, linkedOn := cpu, linked
		if fetched < 0 {
			return fmt.Errorf("the second install was no delta")
		}
		// Back to v1, the same one-file change, with chunk_links = false:
		// every file written.
		if _, err := publish(v1); err != nil {
			return err
		}
		delta0, fetched0, err := install(bin, noLinks)
		if err != nil {
			return err
		}
		cDelta0 := cpu
		if fetched0 < 0 {
			return fmt.Errorf("the third install was no delta")
		}
		w := sample{full, first, delta, delta0}
		c := sample{cFull, cFirst, cDelta, cDelta0}
		walls, cpus = append(walls, w), append(cpus, c)
		ratio := func(x, y, cx, cy time.Duration) string {
			return fmt.Sprintf("%s (%.2f× / %.2f×)", wc(x, cx), x.Seconds()/y.Seconds(), cx.Seconds()/cy.Seconds())
		}
		fmt.Printf("%-6s %-16s %-34s %-50s %-44s\n", fmt.Sprintf("%d%s", r, map[bool]string{true: "", false: "*"}[order(r)[0] == "full"]), wc(full, cFull), ratio(first, full, cFirst, cFull),
			fmt.Sprintf("%s (%.2f MiB, %s linked)", ratio(delta, full, cDelta, cFull), float64(fetched)/(1<<20), linkedOn),
			fmt.Sprintf("%s (%.2f MiB)", ratio(delta0, full, cDelta0, cFull), float64(fetched0)/(1<<20)))
		deltaBytes, delta0Bytes, archiveBytes = fetched, fetched0, size
	}
	reset()
	resetFull()
	pick := func(ss []sample, f func(sample) time.Duration) []float64 {
		var out []float64
		for _, s := range ss {
			out = append(out, f(s).Seconds())
		}
		return out
	}
	fullW, fullC := pick(walls, func(s sample) time.Duration { return s.full }), pick(cpus, func(s sample) time.Duration { return s.full })
	rows := []struct {
		name  string
		get   func(sample) time.Duration
		bytes string
	}{
		{"full archive (chunk_cache = 0)", func(s sample) time.Duration { return s.full }, fmt.Sprintf("%.1f MiB", float64(archiveBytes)/(1<<20))},
		{"first, empty cache (archive + fill)", func(s sample) time.Duration { return s.first }, fmt.Sprintf("%.1f MiB", float64(archiveBytes)/(1<<20))},
		{"delta, one 5 MB file changed", func(s sample) time.Duration { return s.delta }, fmt.Sprintf("%.2f MiB (%.2f %%)", float64(deltaBytes)/(1<<20), 100*float64(deltaBytes)/float64(archiveBytes))},
		{"delta, chunk_links = false", func(s sample) time.Duration { return s.delta0 }, fmt.Sprintf("%.2f MiB (%.2f %%)", float64(delta0Bytes)/(1<<20), 100*float64(delta0Bytes)/float64(archiveBytes))},
	}
	fmt.Printf("\n%d rounds, each install against the archive install of its own round (load average at the end: %s)\n", *rounds, loadavg())
	fmt.Printf("| install | best wall | best CPU | bytes fetched | best against best of the archive's %d (wall, CPU) | median of the %d rounds' ratios (wall, CPU) |\n| --- | --- | --- | --- | --- | --- |\n", *rounds, *rounds)
	for _, r := range rows {
		w, c := pick(walls, r.get), pick(cpus, r.get)
		var rw, rc []float64
		for i := range w {
			rw, rc = append(rw, w[i]/fullW[i]), append(rc, c[i]/fullC[i])
		}
		fmt.Printf("| %s | %.2f s | %.2f s | %s | %.2f×, %.2f× | %.2f×, %.2f× |\n", r.name, slices.Min(w), slices.Min(c), r.bytes,
			slices.Min(w)/slices.Min(fullW), slices.Min(c)/slices.Min(fullC), median(rw), median(rc))
	}
	fmt.Printf("\npeak resident memory (max RSS) of an install, the largest of the rounds: full %.1f MiB, first %.1f MiB, delta %.1f MiB, delta without links %.1f MiB\n",
		peak["full"], peak["chunks"], peak["delta"], peak["nolinks"])
	return nil
}

// order is the order of the archive install and the first install in
// round r: the archive's first in odd rounds, second in even ones
// (marked * in the table).
func order(r int) []string {
	if r%2 == 1 {
		return []string{"full", "first"}
	}
	return []string{"first", "full"}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func wc(wall, cpu time.Duration) string {
	return fmt.Sprintf("%.2fs / %.2fs", wall.Seconds(), cpu.Seconds())
}

var (
	fetchedRE = regexp.MustCompile(`format=chunks .*fetched_bytes=(\d+)`)
	linkedRE  = regexp.MustCompile(`format=chunks .*linked_files=(\d+)`)
	// linked is the files the last delta linked from the current release.
	linked string
)

// peak is the largest max RSS (MiB) of each kind of install.
var peak = map[string]float64{}

// cpu is the CPU time (user and system) of the last install: on a
// loaded machine it says more than the wall time.
var cpu time.Duration

// install runs one agent pass and returns its wall time and, for a
// delta, the bytes it fetched (-1: not a delta).
func install(bin, cfg string) (time.Duration, int64, error) {
	args := []string{"agent", "--once", "-c", cfg, "--log-level", "info"}
	// GNU time reports the agent's own peak RSS: the rusage of a process
	// exec'ed from this one counts this one's memory (the bench's, before
	// the exec).
	rss := filepath.Join(*work, "rss")
	os.Remove(rss)
	cmd := exec.Command(bin, args...)
	if _, err := os.Stat("/usr/bin/time"); err == nil {
		cmd = exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rss, bin}, args...)...)
	}
	out, err := os.CreateTemp(*work, "log-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(out.Name())
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		if b, err := os.ReadFile(rss); err == nil {
			kib, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			kind := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(cfg), "delta-"), ".hcl")
			out, _ := os.ReadFile(out.Name())
			if kind == "chunks" && fetchedRE.Match(out) {
				kind = "delta"
			}
			peak[kind] = max(peak[kind], kib/1024)
		}
	}
	out.Close()
	log, _ := os.ReadFile(out.Name())
	if err != nil || !strings.Contains(string(log), "installed") {
		return 0, 0, fmt.Errorf("agent: %v\n%s", err, log)
	}
	if m := fetchedRE.FindSubmatch(log); m != nil {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		if l := linkedRE.FindSubmatch(log); l != nil {
			linked = string(l[1])
		}
		return wall, n, nil
	}
	return wall, -1, nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// trees writes (once) v1 and v2 as .tar.zst: about -size MiB in ~8,000
// files (source-like text and binary-like data, about 4:1 in zstd), v2
// the same but for one 5 MB file in the middle of the tar.
func trees() (v1, v2 string, err error) {
	base := filepath.Join(*work, fmt.Sprintf("delta-%d", *sizeMiB))
	v1, v2 = base+"-v1.tar.zst", base+"-v2.tar.zst"
	if _, err := os.Stat(v2); err == nil {
		return v1, v2, nil
	}
	fmt.Printf("writing two %d MiB trees as .tar.zst …\n", *sizeMiB)
	for i, out := range []string{v1, v2} {
		if err := writeTree(out, i); err != nil {
			return "", "", err
		}
	}
	return v1, v2, nil
}

// writeTree pipes a tar made here through zstd -3 (the CLI) into out.
func writeTree(out string, version int) error {
	cmd := exec.Command("zstd", "-q", "-T0", "-3", "-o", out+".tmp")
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(in, 1<<20)
	tw := tar.NewWriter(bw)
	total := int64(*sizeMiB) << 20
	r := rand.New(rand.NewPCG(7, 8))
	mtime := time.Unix(1700000000, 0)
	var written int64
	for i := 0; written < total; i++ {
		var name string
		var data []byte
		switch {
		case i == 4000:
			// The file that changes: 5 MB, binary-like, seeded by version.
			name, data = "lib/changing.so", binary(rand.New(rand.NewPCG(99, uint64(version))), 5_000_000)
		case i%10 == 0:
			name, data = fmt.Sprintf("bin/tool-%05d", i), binary(r, 200_000+r.IntN(600_000))
		default:
			name, data = fmt.Sprintf("src/pkg%03d/file%05d.go", i%300, i), text(r, 4_000+r.IntN(60_000))
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		tw.Write(data)
		written += int64(len(data))
	}
	if err := tw.Close(); err != nil {
		return err
	}
	bw.Flush()
	in.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	return os.Rename(out+".tmp", out)
}

var table = func() [][]byte {
	r := rand.New(rand.NewPCG(5, 6))
	t := make([][]byte, 1024)
	for i := range t {
		t[i] = make([]byte, 16)
		for j := range t[i] {
			t[i][j] = byte(r.IntN(256))
		}
	}
	return t
}()

// binary is machine-code-like: 16-byte sequences from a table, one in
// 24 random.
func binary(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for j := 0; j+16 <= n; j += 16 {
		if r.IntN(24) == 0 {
			for k := j; k < j+16; k++ {
				b[k] = byte(r.IntN(256))
			}
		} else {
			copy(b[j:], table[r.IntN(len(table))])
		}
	}
	return b
}

var words = strings.Fields("if err != nil { return err } for range func type struct package import defer go select case default ctx context.Context string int64 bytes len append make map chan nil true false")

// text is source-like: words from a small vocabulary, lines, indents.
func text(r *rand.Rand, n int) []byte {
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(8) == 0 {
			b.WriteString("\n\t")
		} else {
			b.WriteByte(' ')
		}
	}
	return []byte(b.String()[:n])
}
