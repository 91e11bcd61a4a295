// Command install benchmarks dropship's install of a large artifact
// against `curl URL | tar -x` from the same MinIO, on tmpfs.
//
//	go run ./bench/install [-size 1024] [-rounds 3]
//
// It builds (once, cached in /dev/shm/dropship-bench) an artifact of about
// -size MiB with realistic content: ~20,000 files, many small source files
// and some large binaries, gzip ratio near 4:1; as .tar.gz and .tar.zst.
// Then, alternating, it times dropship (download, verify MD5 and SHA-256,
// unpack, switch) and the shell pipeline, and prints wall time, peak RSS
// and the ratio per round.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/internal/rig"
)

var (
	sizeMiB = flag.Int("size", 1024, "unpacked size of the artifact, MiB")
	files   = flag.Int("files", 20000, "number of files")
	rounds  = flag.Int("rounds", 3, "rounds per format")
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
	for _, tool := range []string{"curl", "tar", "gzip", "zstd", "/usr/bin/time"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed (make rig installs it)", tool)
		}
	}
	os.MkdirAll(*work, 0o755)
	src := filepath.Join(*work, fmt.Sprintf("tree2-%d-%d", *sizeMiB, *files))
	gz, zst := src+".tar.gz", src+".tar.zst"
	if _, err := os.Stat(zst); err != nil {
		fmt.Printf("building a %d MiB tree of %d files in %s …\n", *sizeMiB, *files, src)
		if err := buildTree(src); err != nil {
			return err
		}
		for _, c := range [][]string{
			{"sh", "-c", fmt.Sprintf("tar -C %s -cf - . | gzip -6 > %s", src, gz)},
			{"sh", "-c", fmt.Sprintf("tar -C %s -cf - . | zstd -q -T0 -3 -o %s", src, zst)},
		} {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %v\n%s", c, err, out)
			}
		}
		os.RemoveAll(src)
	}
	for _, a := range []string{gz, zst} {
		fi, _ := os.Stat(a)
		fmt.Printf("%s: %.1f MiB (ratio %.2f:1)\n", filepath.Base(a), float64(fi.Size())/(1<<20), float64(*sizeMiB<<20)/float64(fi.Size()))
	}

	minio, err := rig.StartMinIO()
	if err != nil {
		return err
	}
	defer minio.Stop()
	ctx := context.Background()
	store, err := s3.NewStore(ctx, s3.Config{Endpoint: aws.String(minio.Endpoint), AccessKey: aws.String(minio.AccessKey),
		SecretKey: aws.String(minio.SecretKey), Region: aws.String("us-east-1")})
	if err != nil {
		return err
	}
	if err := store.CreateBucket(ctx, "bench"); err != nil {
		return err
	}
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

	for _, c := range []struct {
		name, file, untar string
	}{
		{"tar.gz", gz, "tar -xzf -"},
		{"tar.zst", zst, "zstd -dc | tar -xf -"},
	} {
		key := "app." + c.name
		if _, err := store.Publish(ctx, "bench", key, c.file, 0); err != nil {
			return err
		}
		req, err := presign.PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bench"), Key: aws.String(key)},
			awss3.WithPresignExpires(time.Hour))
		if err != nil {
			return err
		}
		cfg := filepath.Join(*work, "bench-"+c.name+".hcl")
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
  }
}
`, filepath.Join(*work, "state"), minio.Endpoint, minio.AccessKey, minio.SecretKey, key, filepath.Join(*work, "dest"))), 0o644)

		fmt.Printf("\n%s: %d rounds, alternating (wall time, peak RSS)\n", c.name, *rounds)
		fmt.Printf("%-6s %-24s %-24s %s\n", "round", "dropship", "curl | "+c.untar, "ratio")
		for r := 1; r <= *rounds; r++ {
			os.RemoveAll(filepath.Join(*work, "state"))
			os.RemoveAll(filepath.Join(*work, "dest"))
			dw, drss, err := timed(exec.Command(bin, "agent", "--once", "-c", cfg, "--log-level", "warn"))
			if err != nil {
				return fmt.Errorf("dropship: %w", err)
			}
			out := filepath.Join(*work, "curl-out")
			os.RemoveAll(out)
			os.MkdirAll(out, 0o755)
			pipe := fmt.Sprintf("curl -sf '%s' | %s", req.URL, strings.Replace(c.untar, "tar ", "tar -C "+out+" ", 1))
			cw, crss, err := timed(exec.Command("sh", "-c", pipe))
			if err != nil {
				return fmt.Errorf("curl | tar: %w", err)
			}
			os.RemoveAll(out)
			fmt.Printf("%-6d %-24s %-24s %.2f\n", r, fmt.Sprintf("%.2fs %5.1f MiB", dw.Seconds(), drss),
				fmt.Sprintf("%.2fs %5.1f MiB", cw.Seconds(), crss), dw.Seconds()/cw.Seconds())
		}
	}
	os.RemoveAll(filepath.Join(*work, "state"))
	os.RemoveAll(filepath.Join(*work, "dest"))
	return nil
}

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
