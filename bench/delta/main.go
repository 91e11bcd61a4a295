// Command delta benchmarks chunked deltas: a 1 GiB tree published as
// .tar.zst with its chunk index to MinIO, then the same tree with one
// 5 MB file changed.
//
//	go run ./bench/delta [-size 1024] [-rounds 3]
//
// Each round, from an empty state:
//
//   - full v1: v1 installed from the archive alone (chunk_cache = 0), as
//     before chunked deltas;
//   - first v1: v1 installed with an empty chunk cache (the archive, the
//     cache filled from its tar);
//   - delta v2: v2 installed over it (only the changed chunks fetched);
//   - full v2: v2 from the archive alone.
//
// It prints wall time and bytes fetched per round, then the best round of
// each and the ratios the targets are set on: delta/full time, delta
// bytes/archive bytes, first/full time.
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
	state, dest := filepath.Join(*work, "delta-state"), filepath.Join(*work, "delta-dest")
	config := func(name, extra string) string {
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

	var best, bestCPU struct{ first, delta, delta0, full time.Duration }
	var deltaBytes, delta0Bytes, archiveBytes int64
	fmt.Printf("\n(wall / CPU time)\n%-6s %-16s %-16s %-30s %-30s %-16s\n", "round", "full v1", "first v1", "delta v2 (fetched, files linked)", "delta v1, no links (fetched)", "full v1")
	for r := 1; r <= *rounds; r++ {
		// Each install next to the one it is compared with, right after
		// the same publish: v1 full then first; v2 delta then full.
		if _, err := publish(v1); err != nil {
			return err
		}
		reset()
		full1, _, err := install(bin, without)
		if err != nil {
			return err
		}
		cFull1 := cpu
		reset()
		first, _, err := install(bin, withChunks)
		if err != nil {
			return err
		}
		cFirst := cpu
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
		reset()
		full2, _, err := install(bin, without)
		if err != nil {
			return err
		}
		cFull2 := cpu
		fmt.Printf("%-6d %-16s %-16s %-30s %-30s %-16s\n", r, wc(full1, cFull1), wc(first, cFirst),
			fmt.Sprintf("%s (%.2f MiB, %s linked)", wc(delta, cDelta), float64(fetched)/(1<<20), linkedOn),
			fmt.Sprintf("%s (%.2f MiB)", wc(delta0, cDelta0), float64(fetched0)/(1<<20)), wc(full2, cFull2))
		best.first, best.delta, best.delta0, best.full = minNZ(best.first, first), minNZ(best.delta, delta), minNZ(best.delta0, delta0), minNZ(minNZ(best.full, full1), full2)
		bestCPU.first, bestCPU.delta, bestCPU.delta0, bestCPU.full = minNZ(bestCPU.first, cFirst), minNZ(bestCPU.delta, cDelta), minNZ(bestCPU.delta0, cDelta0), minNZ(minNZ(bestCPU.full, cFull1), cFull2)
		deltaBytes, delta0Bytes, archiveBytes = fetched, fetched0, size
	}
	reset()
	fmt.Printf("\nbest of %d rounds (load average at the end: %s)\n", *rounds, loadavg())
	fmt.Printf("| install | wall time | CPU time | bytes fetched | vs full archive install |\n| --- | --- | --- | --- | --- |\n")
	fmt.Printf("| full archive (chunk_cache = 0) | %.2f s | %.2f s | %.1f MiB | 1.00× |\n", best.full.Seconds(), bestCPU.full.Seconds(), float64(archiveBytes)/(1<<20))
	fmt.Printf("| first, empty cache (archive + fill) | %.2f s | %.2f s | %.1f MiB | %.2f× wall, %.2f× CPU |\n", best.first.Seconds(), bestCPU.first.Seconds(),
		float64(archiveBytes)/(1<<20), best.first.Seconds()/best.full.Seconds(), bestCPU.first.Seconds()/bestCPU.full.Seconds())
	fmt.Printf("| delta, one 5 MB file changed | %.2f s | %.2f s | %.2f MiB | %.2f× wall, %.2f× CPU, %.2f %% of the bytes |\n", best.delta.Seconds(), bestCPU.delta.Seconds(),
		float64(deltaBytes)/(1<<20), best.delta.Seconds()/best.full.Seconds(), bestCPU.delta.Seconds()/bestCPU.full.Seconds(), 100*float64(deltaBytes)/float64(archiveBytes))
	fmt.Printf("| delta, chunk_links = false | %.2f s | %.2f s | %.2f MiB | %.2f× wall, %.2f× CPU, %.2f %% of the bytes |\n", best.delta0.Seconds(), bestCPU.delta0.Seconds(),
		float64(delta0Bytes)/(1<<20), best.delta0.Seconds()/best.full.Seconds(), bestCPU.delta0.Seconds()/bestCPU.full.Seconds(), 100*float64(delta0Bytes)/float64(archiveBytes))
	fmt.Printf("\npeak resident memory (max RSS) of an install: full %.1f MiB, first %.1f MiB, delta %.1f MiB, delta without links %.1f MiB\n",
		peak["full"], peak["chunks"], peak["delta"], peak["nolinks"])
	return nil
}

func wc(wall, cpu time.Duration) string {
	return fmt.Sprintf("%.2fs / %.2fs", wall.Seconds(), cpu.Seconds())
}

func minNZ(a, b time.Duration) time.Duration {
	if a == 0 || b < a {
		return b
	}
	return a
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
