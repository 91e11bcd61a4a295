package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A delta trusts the files of the current release by their identity
// (inode, size, modification and change time): one that nobody touched
// is neither read nor hashed, one whose content changed is, however it
// changed: written in place with its modification time put back,
// replaced by a rename, truncated and written again to its size, or
// written through another hard link. The new release is exactly the
// index's in every case, with links and without.
func TestDeltaTrustsFilesByIdentityEndToEndS3(t *testing.T) {
	t.Parallel()
	minio := servers.MinIO(t)
	part := func(i int, changed byte) []byte {
		data := make([]byte, 1<<20)
		seed := [32]byte{byte(i)}
		if i == 5 {
			seed[1] = changed
		}
		rand.NewChaCha8(seed).Read(data)
		return data
	}
	other := bytes.Repeat([]byte("written by the application "), 1<<20/27+1)[:1<<20]
	putBack := func(t *testing.T, p string, fi os.FileInfo) {
		if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	edits := map[string]func(t *testing.T, dir, p string){
		"none": nil,
		"in place, time put back": func(t *testing.T, _, p string) {
			fi, _ := os.Stat(p)
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("written by the application"), 300<<10)
			f.Close()
			putBack(t, p, fi)
		},
		"replaced by a rename": func(t *testing.T, _, p string) {
			fi, _ := os.Stat(p)
			tmp := p + ".new"
			if err := os.WriteFile(tmp, other, fi.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
			putBack(t, tmp, fi)
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		},
		"truncated and written again": func(t *testing.T, _, p string) {
			fi, _ := os.Stat(p)
			if err := os.WriteFile(p, other, 0); err != nil { // O_TRUNC
				t.Fatal(err)
			}
			putBack(t, p, fi)
		},
		"written through another link": func(t *testing.T, dir, p string) {
			fi, _ := os.Stat(p)
			alias := filepath.Join(dir, "alias")
			if err := os.Link(p, alias); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(alias, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("written by the application"), 700<<10)
			f.Close()
			putBack(t, alias, fi)
		},
	}
	for name, edit := range edits {
		for _, links := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/links=%v", name, links), func(t *testing.T) {
				t.Parallel()
				_, bucket := minioBucket(t, "delta-trust")
				dir := t.TempDir()
				cfg := filepath.Join(dir, "dropship.hcl")
				dest := filepath.Join(dir, "srv", "app")
				os.WriteFile(cfg, []byte(fmt.Sprintf(`state_path = %q
repo "s3" {
  region     = "us-east-1"
  endpoint   = %q
  access_key = %q
  secret_key = %q
}
service "app" {
  artifact "s3" {
    bucket      = %q
    path        = "app/app.tar"
    destination = %q
    chunk_links = %v
  }
}
`, filepath.Join(dir, "state"), minio.Endpoint, minio.AccessKey, minio.SecretKey, bucket, dest, links)), 0o600)
				art := func(v string, changed byte) string {
					var b bytes.Buffer
					tw := tar.NewWriter(&b)
					add := func(name string, data []byte) {
						tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(1700000000, 0)})
						tw.Write(data)
					}
					add("VERSION", []byte(v))
					for i := range 8 {
						add(fmt.Sprintf("lib/part%d", i), part(i, changed))
					}
					tw.Close()
					p := filepath.Join(dir, "app-"+v+".tar")
					os.WriteFile(p, b.Bytes(), 0o644)
					return p
				}
				once := func(file string) string {
					t.Helper()
					if out, errOut, code := run(t, "publish", file, "-c", cfg, "--to", "s3://"+bucket+"/app/app.tar"); code != 0 {
						t.Fatalf("publish: %d\n%s%s", code, out, errOut)
					}
					_, errOut, code := run(t, "agent", "--once", "-c", cfg)
					if code != 0 {
						t.Fatalf("agent --once: exit %d\n%s", code, errOut)
					}
					return errOut
				}
				once(art("v1", 0))
				edited := filepath.Join(dest, "lib", "part2")
				if edit != nil {
					edit(t, dir, edited)
				}
				log := once(art("v2", 1))
				for i := range 8 {
					if b, err := os.ReadFile(filepath.Join(dest, "lib", fmt.Sprintf("part%d", i))); err != nil || !bytes.Equal(b, part(i, 1)) {
						t.Fatalf("lib/part%d is not the release's (%v)\n%s", i, err, log)
					}
				}
				if b, _ := os.ReadFile(filepath.Join(dest, "VERSION")); string(b) != "v2" {
					t.Fatalf("installed %q\n%s", b, log)
				}
				m := regexp.MustCompile(`release_chunks=(\d+) trusted_chunks=(\d+)`).FindStringSubmatch(log)
				if edit == nil {
					// Nothing touched: every chunk of the current release is
					// trusted, none read back and hashed.
					if m == nil || m[1] != m[2] || must(strconv.Atoi(m[2])) < 4 {
						t.Fatalf("the delta did not trust the release's files: %v\n%s", m, log)
					}
					return
				}
				if !strings.Contains(log, "chunk not read back from the current release") && !strings.Contains(log, "delta failed; fetching the archive") {
					t.Fatalf("the edit of lib/part2 was not noticed\n%s", log)
				}
			})
		}
	}
}
