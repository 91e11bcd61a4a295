package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// stallingFactory is a file source whose stream sends a few bytes, then
// nothing until the update gives up on it.
func stallingFactory(kind string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	s, d := file.Factory(kind, body, env)
	return stalling{s}, d
}

type stalling struct{ artifact.Source }

func (s stalling) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	rc, err := s.Source.Open(ctx, pin)
	if err != nil {
		return nil, err
	}
	return &stallAfter{ctx: ctx, rc: rc, left: 100}, nil
}

type stallAfter struct {
	ctx  context.Context
	rc   io.ReadCloser
	left int
}

func (s *stallAfter) Read(p []byte) (int, error) {
	if s.left <= 0 {
		<-s.ctx.Done()
		return 0, s.ctx.Err()
	}
	n, err := s.rc.Read(p[:min(len(p), s.left)])
	s.left -= n
	return n, err
}

func (s *stallAfter) Close() error { return s.rc.Close() }

// opaqueFactory is a file source that, like a store with multipart ETags,
// reports no content digest: only an opaque version token.
func opaqueFactory(kind string, body hcl.Body, env artifact.Env) (artifact.Source, hcl.Diagnostics) {
	s, d := file.Factory(kind, body, env)
	return opaque{s}, d
}

type opaque struct{ artifact.Source }

func (o opaque) Stat(ctx context.Context) (artifact.Info, error) {
	info, err := o.Source.Stat(ctx)
	info.ETag, info.MD5, info.SHA256, info.ChecksumFrom = "opaque-"+info.MD5[:8]+"-2", "", "", "opaque-etag"
	return info, err
}

func (o opaque) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	info, err := o.Source.Stat(ctx)
	if err != nil {
		return nil, err
	}
	return o.Source.Open(ctx, info)
}

// An update whose download stops arriving fails at update_timeout: the
// previous release stays, staging is cleaned, the failure is recorded and
// backed off, and the next check starts afresh.
func TestUpdateTimeoutEndsAStalledDownload(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	e.check(e.runner(e.config("")), agent.ResultInstalled)
	e.publish("v2", bigFiles(20)...)
	cfg := e.configKind("stalling", `update_timeout = "1s"`)
	r := e.runner(cfg)
	out := e.check(r, agent.ResultFailed)
	if out.Phase != agent.PhaseDownload || !strings.Contains(out.Err.Error(), "update_timeout") {
		t.Fatalf("phase %s, error %v", out.Phase, out.Err)
	}
	if e.current() != "v1" {
		t.Fatalf("current = %q after a stalled update", e.current())
	}
	if left, _ := os.ReadDir(filepath.Join(r.Dir(), "staging")); len(left) != 0 {
		t.Fatalf("staging not cleaned: %v", left)
	}
	st := e.state_(r)
	if f := st.Failures[out.Checksum]; f == nil || f.Count != 1 || f.Phase != "download" {
		t.Fatalf("failure not recorded: %+v", st.Failures)
	}
	// Backed off, then a store that answers again installs it.
	e.check(r, agent.ResultSkipped)
}

// The state keeps the digests computed over the bytes installed, even
// when the store only gave an opaque version token.
func TestStateKeepsComputedDigests(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	r := e.runner(e.configKind("opaque", ""))
	out := e.check(r, agent.ResultInstalled)
	if !strings.HasPrefix(out.Checksum, "etag:opaque-") {
		t.Fatalf("checksum %q is not the opaque ETag", out.Checksum)
	}
	body, _ := os.ReadFile(e.store)
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:])
	st := e.state_(r)
	if st.SHA256 != want || len(st.Releases) != 1 || st.Releases[0].SHA256 != want || st.Releases[0].MD5 == "" {
		t.Fatalf("state digests: sha256 %q releases %+v; want %s", st.SHA256, st.Releases, want)
	}
}

// A destination that was a link of another tool (a Capistrano `current`)
// or a directory is kept aside by the first install and put back when
// that install fails.
func TestFirstInstallKeepsWhatTheDestinationWas(t *testing.T) {
	for _, kind := range []string{"symlink", "directory"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			old := filepath.Join(e.dir, "capistrano", "releases", "42")
			os.MkdirAll(old, 0o755)
			os.WriteFile(filepath.Join(old, "VERSION"), []byte("capistrano"), 0o644)
			os.MkdirAll(filepath.Dir(e.dest), 0o755)
			if kind == "symlink" {
				if err := os.Symlink(old, e.dest); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Rename(old, e.dest); err != nil {
				t.Fatal(err)
			}
			e.publish("v1")
			r := e.runner(e.config(`check "script" {
    command = "false"
  }`))
			e.check(r, agent.ResultFailed)
			if e.current() != "capistrano" {
				t.Fatalf("destination after a failed first install: %q", e.current())
			}
			fi, err := os.Lstat(e.dest)
			if err != nil || (kind == "symlink") != (fi.Mode()&os.ModeSymlink != 0) {
				t.Fatalf("destination is no longer the %s it was: %v %v", kind, fi, err)
			}
			if kind == "symlink" {
				if target, _ := os.Readlink(e.dest); target != old {
					t.Fatalf("link points at %q, want %q", target, old)
				}
			}
			// A good release replaces it, and what was there is kept aside.
			e.publish("v2")
			e.check(e.runner(e.config("")), agent.ResultInstalled)
			aside, _ := filepath.Glob(e.dest + ".dropship-orig-*")
			if e.current() != "v2" || len(aside) != 1 {
				t.Fatalf("current %q, kept aside %v", e.current(), aside)
			}
			if b, _ := os.ReadFile(filepath.Join(aside[0], "VERSION")); string(b) != "capistrano" {
				t.Fatalf("what was kept aside holds %q", b)
			}
		})
	}
}

// The state file may hold hook output: no other user reads it.
func TestStateFileIsNotWorldReadable(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	r := e.runner(e.config(""))
	e.check(r, agent.ResultInstalled)
	fi, err := os.Stat(filepath.Join(r.Dir(), "state.json"))
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("state.json: %v %v", fi.Mode(), err)
	}
	di, err := os.Stat(r.Dir())
	if err != nil || di.Mode().Perm()&0o004 != 0 {
		t.Fatalf("state directory is listable by others: %v %v", di.Mode(), err)
	}
}

// bigFiles makes a release large enough that a stalled stream stops
// inside it.
func bigFiles(n int) []testutil.File {
	var fs []testutil.File
	for i := range n {
		fs = append(fs, testutil.File{Name: fmt.Sprintf("data/f%d", i), Body: strings.Repeat(fmt.Sprint(i), 4096)})
	}
	return fs
}

// A state file left world-readable by an older version is made private
// at the agent's start, not at the next update.
func TestOldStateFileIsMadePrivate(t *testing.T) {
	e := newEnv(t)
	e.publish("v1")
	r := e.runner(e.config(""))
	e.check(r, agent.ResultInstalled)
	path := filepath.Join(r.Dir(), "state.json")
	os.Chmod(path, 0o644)
	e.check(e.runner(e.config("")), agent.ResultNoop)
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("state.json is %v after a restart", fi.Mode().Perm())
	}
}

// A first install whose switch fails after moving the destination aside
// (here: something is in the way of the switch link) puts it back.
func TestFirstInstallSwitchFailurePutsTheDestinationBack(t *testing.T) {
	e := newEnv(t)
	os.MkdirAll(e.dest, 0o755)
	os.WriteFile(filepath.Join(e.dest, "VERSION"), []byte("by hand"), 0o644)
	os.MkdirAll(filepath.Join(filepath.Dir(e.dest), ".app.dropship-tmp", "in-the-way"), 0o755)
	e.publish("v1")
	out := e.check(e.runner(e.config("")), agent.ResultFailed)
	if out.Phase != agent.PhaseSwitch {
		t.Fatalf("phase %s: %v", out.Phase, out.Err)
	}
	if e.current() != "by hand" {
		t.Fatalf("destination after a failed switch reads %q; aside: %v", e.current(), must(filepath.Glob(e.dest+".dropship-orig-*")))
	}
}

func must[T any](v T, _ error) T { return v }
