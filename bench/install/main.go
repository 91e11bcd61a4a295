// Command install benchmarks dropship's install of a large artifact
// against `curl URL | tar -x` from the same MinIO, on tmpfs.
//
//	go run ./bench/install [-size 1024] [-rounds 3] [-trees generated,real]
//
// Two trees of about -size MiB, each as .tar.gz and .tar.zst (built once,
// cached in /dev/shm/dropship-bench):
//
//   - generated: ~20,000 files, many small source files and some large
//     binaries, made up, gzip ratio near 4:1;
//   - real: real files of this machine, in a fixed order: Go's source and
//     tools, /usr/bin, Chromium's files (a few large binaries), shared
//     libraries, /usr/share; much of it compresses poorly.
//
// Then, alternating, it times dropship (download, verify MD5 and SHA-256,
// unpack, switch) and the shell pipeline, prints wall time, peak RSS and
// the ratio per round, and ends with a table per tree and format: the
// best round of each, their ratio, and dropship's peak RSS.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/bench/internal/benchrig"
	"github.com/dropshipd/dropship/internal/rig"
)

var (
	sizeMiB = flag.Int("size", 1024, "unpacked size of the artifact, MiB")
	files   = flag.Int("files", 20000, "number of files")
	rounds  = flag.Int("rounds", 3, "rounds per format")
	work    = flag.String("dir", "/dev/shm/dropship-bench", "work directory (tmpfs)")
	trees   = flag.String("trees", "generated,real", "trees to install: generated, real")
	formats = flag.String("formats", "tar.gz,tar.zst", "formats to install: tar.gz, tar.zst")
)

// result is the best round of one tree and format.
type result struct {
	tree, format   string
	mib            float64 // artifact size
	drop, pipe     time.Duration
	dropCPU        time.Duration // CPU time, best round
	pipeCPU        time.Duration
	dropRSS, pipRS float64
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	for _, tool := range []string{"curl", "tar", "gzip", "zstd", "/usr/bin/time"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed (make rig installs it)", tool)
		}
	}
	os.MkdirAll(*work, 0o755)
	artifacts := map[string][2]string{} // tree -> gz, zst
	for _, tree := range strings.Split(*trees, ",") {
		var gz, zst string
		var err error
		switch tree {
		case "generated":
			gz, zst, err = generatedTree()
		case "real":
			gz, zst, err = realTree()
		default:
			err = fmt.Errorf("no tree %q (generated, real)", tree)
		}
		if err != nil {
			return err
		}
		artifacts[tree] = [2]string{gz, zst}
		for _, a := range []string{gz, zst} {
			fi, _ := os.Stat(a)
			fmt.Printf("%s: %.1f MiB (ratio %.2f:1)\n", filepath.Base(a), float64(fi.Size())/(1<<20), float64(*sizeMiB<<20)/float64(fi.Size()))
		}
	}

	ctx := context.Background()
	srv, err := benchrig.StartMinIO(ctx, "bench")
	if err != nil {
		return err
	}
	defer srv.Stop()
	minio, store := srv.MinIO, srv.Store
	bin := filepath.Join(*work, "dropship")
	// As `make build` builds it.
	build := exec.Command("go", "build", "-trimpath", "-tags", "nethttpomithttp2", "-ldflags", "-s -w", "-o", bin, "./cmd/dropship")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	// curl gets a presigned URL, made by the AWS SDK.
	presign := awss3.NewPresignClient(awss3.New(awss3.Options{Region: "us-east-1", BaseEndpoint: aws.String(minio.Endpoint),
		UsePathStyle: true, Credentials: credentials.NewStaticCredentialsProvider(minio.AccessKey, minio.SecretKey, "")}))

	var results []result
	for _, tree := range strings.Split(*trees, ",") {
		for i, c := range []struct {
			name, untar string
		}{
			{"tar.gz", "tar -xzf -"},
			{"tar.zst", "zstd -dc | tar -xf -"},
		} {
			if !strings.Contains(","+*formats+",", ","+c.name+",") {
				continue
			}
			res, err := bench(ctx, store, presign, minio, bin, tree, artifacts[tree][i], c.name, c.untar)
			if err != nil {
				return err
			}
			results = append(results, res)
		}
	}
	os.RemoveAll(filepath.Join(*work, "state"))
	os.RemoveAll(filepath.Join(*work, "dest"))
	fmt.Printf("\nbest of %d rounds each (load average at the end: %s)\n", *rounds, loadavg())
	fmt.Printf("| tree | format | artifact | dropship | pipeline | ratio | CPU dropship | CPU pipeline | CPU ratio | dropship peak RSS | pipeline peak RSS |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range results {
		fmt.Printf("| %s | %s | %.0f MiB | %.2f s | %.2f s | %.2f | %.2f s | %.2f s | %.2f | %.1f MiB | %.1f MiB |\n", r.tree, r.format, r.mib,
			r.drop.Seconds(), r.pipe.Seconds(), r.drop.Seconds()/r.pipe.Seconds(), r.dropCPU.Seconds(), r.pipeCPU.Seconds(),
			r.dropCPU.Seconds()/r.pipeCPU.Seconds(), r.dropRSS, r.pipRS)
	}
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// bench times -rounds installs of one artifact, alternating dropship and
// the shell pipeline, and returns the best of each.
func bench(ctx context.Context, store *s3.Store, presign *awss3.PresignClient, minio *rig.MinIO, bin, tree, file, format, untar string) (result, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return result{}, err
	}
	res := result{tree: tree, format: format, mib: float64(fi.Size()) / (1 << 20)}
	key := tree + "." + format
	if _, err := store.Publish(ctx, "bench", key, file, 0); err != nil {
		return res, err
	}
	req, err := presign.PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bench"), Key: aws.String(key)},
		awss3.WithPresignExpires(time.Hour))
	if err != nil {
		return res, err
	}
	cfg := filepath.Join(*work, "bench-"+key+".hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
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
  }
}
`, filepath.Join(*work, "state"), minio.Endpoint, minio.AccessKey, minio.SecretKey, key, filepath.Join(*work, "dest"))), 0o644)

	fmt.Printf("\n%s tree, %s: %d rounds, alternating (wall time, peak RSS)\n", tree, format, *rounds)
	fmt.Printf("%-6s %-24s %-24s %s\n", "round", "dropship", "curl | "+untar, "ratio")
	for r := 1; r <= *rounds; r++ {
		os.RemoveAll(filepath.Join(*work, "state"))
		os.RemoveAll(filepath.Join(*work, "dest"))
		dw, drss, err := timed(exec.Command(bin, "agent", "--once", "-c", cfg, "--log-level", "warn"))
		if err != nil {
			return res, fmt.Errorf("dropship: %w", err)
		}
		dcpu := lastCPU
		out := filepath.Join(*work, "curl-out")
		os.RemoveAll(out)
		os.MkdirAll(out, 0o755)
		pipe := fmt.Sprintf("curl -sf '%s' | %s", req.URL, strings.Replace(untar, "tar ", "tar -C "+out+" ", 1))
		cw, crss, err := timed(exec.Command("sh", "-c", pipe))
		if err != nil {
			return res, fmt.Errorf("curl | tar: %w", err)
		}
		ccpu := lastCPU
		os.RemoveAll(out)
		fmt.Printf("%-6d %-30s %-30s %.2f (CPU %.2f)\n", r, fmt.Sprintf("%.2fs %5.1f MiB cpu %.2fs", dw.Seconds(), drss, dcpu.Seconds()),
			fmt.Sprintf("%.2fs %5.1f MiB cpu %.2fs", cw.Seconds(), crss, ccpu.Seconds()), dw.Seconds()/cw.Seconds(), dcpu.Seconds()/ccpu.Seconds())
		if res.dropCPU == 0 || dcpu < res.dropCPU {
			res.dropCPU = dcpu
		}
		if res.pipeCPU == 0 || ccpu < res.pipeCPU {
			res.pipeCPU = ccpu
		}
		if res.drop == 0 || dw < res.drop {
			res.drop = dw
		}
		if res.pipe == 0 || cw < res.pipe {
			res.pipe = cw
		}
		res.dropRSS, res.pipRS = max(res.dropRSS, drss), max(res.pipRS, crss)
	}
	return res, nil
}

// generatedTree builds (once) the made-up tree's artifacts.
func generatedTree() (gz, zst string, err error) {
	src := filepath.Join(*work, fmt.Sprintf("tree2-%d-%d", *sizeMiB, *files))
	gz, zst = src+".tar.gz", src+".tar.zst"
	if _, err := os.Stat(zst); err == nil {
		return gz, zst, nil
	}
	fmt.Printf("building a %d MiB tree of %d files in %s …\n", *sizeMiB, *files, src)
	if err := buildTree(src); err != nil {
		return "", "", err
	}
	defer os.RemoveAll(src)
	return gz, zst, pack(fmt.Sprintf("tar -C %s -cf - .", src), gz, zst)
}

func pack(tarCmd, gz, zst string) error {
	for _, c := range []string{
		fmt.Sprintf("%s | gzip -6 > %s.tmp && mv %s.tmp %s", tarCmd, gz, gz, gz),
		fmt.Sprintf("%s | zstd -q -T0 -3 -o %s.tmp && mv %s.tmp %s", tarCmd, zst, zst, zst),
	} {
		if out, err := exec.Command("sh", "-c", c).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", c, err, out)
		}
	}
	return nil
}

// realRoots are where the real tree's files come from, in order, each
// with the most it may give (0: up to the total).
var realRoots = []struct {
	dir string
	cap int64
}{
	{runtime.GOROOT(), 300 << 20},
	{"/usr/bin", 200 << 20},
	{"/usr/lib/chromium", 250 << 20},
	{"/usr/lib/x86_64-linux-gnu", 200 << 20},
	{"/usr/share", 0},
}

// realTree lists (once) about -size MiB of this machine's regular files,
// walked in lexical order, and packs them.
func realTree() (gz, zst string, err error) {
	base := filepath.Join(*work, fmt.Sprintf("real-%d", *sizeMiB))
	gz, zst = base+".tar.gz", base+".tar.zst"
	if _, err := os.Stat(zst); err == nil {
		return gz, zst, nil
	}
	total := int64(*sizeMiB) << 20
	var list []string
	var sum int64
	for _, root := range realRoots {
		var taken int64
		filepath.WalkDir(root.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || sum >= total || (root.cap > 0 && taken >= root.cap) {
				if d != nil && d.IsDir() && err == nil {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil || info.Size() > total-sum {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return nil // unreadable: left out
			}
			f.Close()
			list = append(list, strings.TrimPrefix(p, "/"))
			sum += info.Size()
			taken += info.Size()
			return nil
		})
	}
	fmt.Printf("real tree: %d files, %.0f MiB, from %d roots\n", len(list), float64(sum)/(1<<20), len(realRoots))
	listFile := base + ".list"
	if err := os.WriteFile(listFile, []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		return "", "", err
	}
	return gz, zst, pack(fmt.Sprintf("tar -C / -cf - --files-from %s", listFile), gz, zst)
}

// lastCPU is the CPU time (user and system) of the last timed command:
// on a loaded machine it says more than the wall time.
var lastCPU time.Duration

// timed runs cmd under GNU time and returns its wall time and the peak
// RSS (MiB) of the largest process it ran. (Go starts children sharing
// its memory until exec, so the kernel's maxrss of a direct child counts
// this benchmark's own memory; GNU time's children do not.)
func timed(cmd *exec.Cmd) (time.Duration, float64, error) {
	rss := filepath.Join(*work, "rss")
	args := append([]string{"-f", "%M", "-o", rss, cmd.Path}, cmd.Args[1:]...)
	c := exec.Command("/usr/bin/time", args...)
	c.Stderr = os.Stderr
	start := time.Now()
	err := c.Run()
	wall := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	b, _ := os.ReadFile(rss)
	kb, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	// The CPU time of GNU time's child and the children it waited for:
	// dropship, or the shell with curl, zstd and tar.
	lastCPU = c.ProcessState.UserTime() + c.ProcessState.SystemTime()
	return wall, kb / 1024, nil
}

// words make source-like text that gzip compresses about 4:1.
var words = func() []string {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]string, 1500)
	for i := range out {
		b := make([]byte, 2+r.IntN(9))
		for j := range b {
			b[j] = "abcdefghijklmnopqrstuvwxyz_"[r.IntN(27)]
		}
		out[i] = string(b)
	}
	return out
}()

var idioms = []string{
	"}", "if err != nil {", "return nil, err", "return err", "defer f.Close()", "} else {",
	"for _, v := range values {", "ctx context.Context,", "t.Helper()", "return nil",
	"mu.Lock()", "defer mu.Unlock()", "case <-ctx.Done():", "default:", "break",
}

var binTable = func() [][]byte {
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

// binRandom: one 16-byte chunk in binRandom of a binary is random.
var binRandom = 24

func buildTree(dir string) error {
	r := rand.New(rand.NewPCG(3, 4))
	total := int64(*sizeMiB) << 20
	// A third of the bytes in ~0.5% of the files (binaries), the rest in
	// source files.
	nBin := max(*files/200, 1)
	nSrc := *files - nBin
	binSize := total / 3 / int64(nBin)
	srcSize := total * 2 / 3 / int64(nSrc)
	for i := range *files {
		var name string
		var size int64
		if i < nBin {
			name, size = fmt.Sprintf("bin/tool-%03d", i), binSize
		} else {
			name, size = fmt.Sprintf("src/pkg%03d/file%05d.go", i%500, i), srcSize/2+r.Int64N(srcSize)
		}
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		var b strings.Builder
		if i < nBin {
			// Binaries: machine-code-like: chunks from a table of common
			// sequences, one chunk in eight random.
			buf := make([]byte, size)
			for j := 0; j+16 <= len(buf); j += 16 {
				if r.IntN(binRandom) == 0 {
					for k := j; k < j+16; k++ {
						buf[k] = byte(r.IntN(256))
					}
				} else {
					copy(buf[j:], binTable[r.IntN(len(binTable))])
				}
			}
			f.Write(buf)
		} else {
			for int64(b.Len()) < size {
				// Zipf-like: a few words (keywords, names) most of the time.
				f := r.Float64()
				b.WriteString(words[int(float64(len(words))*f*f*f*f*f*f*f*f)])
				if r.IntN(12) == 0 {
					b.WriteString("\n\t")
					// Code repeats itself: idioms, braces, error checks.
					for r.IntN(2) == 0 {
						b.WriteString(idioms[r.IntN(len(idioms))])
						b.WriteString("\n\t")
					}
				} else {
					b.WriteByte(' ')
				}
			}
			f.WriteString(b.String())
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}
