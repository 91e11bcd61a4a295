package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/internal/hclx"
)

// ResultDeferred: the application asked for "not now" (its lock file is
// held, or its defer command exited 75); the update waits, without a
// fleet slot and without failing.
const ResultDeferred Result = "deferred"

// PhaseDefer is the deferral: a max_defer reached with on_max_defer =
// "fail", or a defer command that could not say.
const PhaseDefer Phase = "defer"

// exTempFail is EX_TEMPFAIL (sysexits.h): the defer command's "not now".
const exTempFail = 75

// Defaults of the defer block.
const (
	DefaultDeferInterval = time.Second
	DefaultMaxDefer      = time.Hour
	defaultDeferTimeout  = 30 * time.Second
)

// On max_defer: what an update deferred for that long does.
const (
	OnMaxDeferProceed = "proceed"
	OnMaxDeferFail    = "fail"
)

// Deferral is how the application says "not now" to an update: a lock
// file it holds (flock) while busy, or a command that exits 75 while it
// is. The update is looked at again every Interval, for up to MaxDefer.
type Deferral struct {
	LockFile   string
	Command    *script.Hook
	Interval   time.Duration
	MaxDefer   time.Duration
	OnMaxDefer string
}

type deferBlock struct {
	LockFile   *string           `hcl:"lock_file,optional"`
	Command    *string           `hcl:"command,optional"`
	Timeout    *string           `hcl:"timeout,optional"`
	Env        map[string]string `hcl:"env,optional"`
	Interval   *string           `hcl:"interval,optional"`
	MaxDefer   *string           `hcl:"max_defer,optional"`
	OnMaxDefer *string           `hcl:"on_max_defer,optional"`
	Body       hcl.Body          `hcl:",body"`
}

// decodeDefer reads the service's defer block.
func decodeDefer(s *Service, blocks []deferBlock, env hooks.Env) hcl.Diagnostics {
	if len(blocks) == 0 {
		return nil
	}
	if len(blocks) > 1 {
		r := blocks[1].Body.MissingItemRange()
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Duplicate defer block", Detail: "A service has one defer block.", Subject: &r}}
	}
	b := blocks[0]
	d := &Deferral{OnMaxDefer: OnMaxDeferProceed}
	var diags, ds hcl.Diagnostics
	d.Interval, ds = hclx.Duration(b.Body, "interval", hclx.Str(b.Interval), DefaultDeferInterval)
	diags = append(diags, ds...)
	if d.Interval <= 0 && b.Interval != nil {
		diags = append(diags, hclx.Errorf(b.Body, "interval", "Invalid duration", "interval must be more than zero."))
	}
	d.MaxDefer, ds = hclx.Duration(b.Body, "max_defer", hclx.Str(b.MaxDefer), DefaultMaxDefer)
	diags = append(diags, ds...)
	if d.MaxDefer <= 0 && b.MaxDefer != nil {
		diags = append(diags, hclx.Errorf(b.Body, "max_defer", "Invalid duration",
			"max_defer must be more than zero: it is how long the application may hold an update back."))
	}
	if b.OnMaxDefer != nil {
		d.OnMaxDefer = *b.OnMaxDefer
		if d.OnMaxDefer != OnMaxDeferProceed && d.OnMaxDefer != OnMaxDeferFail {
			diags = append(diags, hclx.Errorf(b.Body, "on_max_defer", "Invalid on_max_defer",
				"on_max_defer = %q: use %q (update anyway once max_defer has passed) or %q (fail the update, which is tried again after the failure back-off).",
				*b.OnMaxDefer, OnMaxDeferProceed, OnMaxDeferFail))
		}
	}
	if b.LockFile != nil {
		d.LockFile = hclx.Path(env.BaseDir, *b.LockFile)
	}
	if b.Command != nil {
		timeout, ds := hclx.Duration(b.Body, "timeout", hclx.Str(b.Timeout), defaultDeferTimeout)
		diags = append(diags, ds...)
		h := &script.Hook{Command: *b.Command, Timeout: timeout, Grace: 2 * time.Second, Logger: env.Logger}
		for k, v := range b.Env {
			h.Env = append(h.Env, k+"="+v)
		}
		d.Command = h
	}
	if d.LockFile == "" && d.Command == nil {
		name := "max_defer"
		if b.MaxDefer == nil {
			name = "on_max_defer"
		}
		rng := hclx.AttrRange(b.Body, name)
		if rng == nil {
			r := b.Body.MissingItemRange()
			rng = &r
		}
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Nothing can defer the update",
			Detail:  "The defer block names no deferral source, so max_defer would never apply: set lock_file (a file the application holds with flock while it is busy) or command (exits 75 while it is busy).",
			Subject: rng})
	}
	s.Defer = d
	return diags
}

// deferring is the deferral of one checksum in progress on this host.
type deferring struct {
	checksum string
	since    time.Time
	reason   string
	reported string // the reason the fleet was last told
	overdue  bool   // max_defer passed and the update proceeds regardless
}

// busy says why the application wants no update now, or "". When the
// lock file is free, the agent takes it (shared with nothing: exclusive)
// and holds it until release is called, so that the application does
// not start its busy work in the middle of the switch.
func (d *Deferral) busy(ctx context.Context, ev hooks.Event) (reason string, release func(), err error) {
	release = func() {}
	if d.LockFile != "" {
		// The file is the application's, whose user may put anything at
		// its path: a link is not followed (to a device, say, whose
		// opening does something), a FIFO does not wait for a writer,
		// and only a regular file is locked.
		f, err := os.OpenFile(d.LockFile, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err == nil {
			if fi, serr := f.Stat(); serr != nil || !fi.Mode().IsRegular() {
				f.Close()
				return "", release, fmt.Errorf("defer: the lock file %s is not a regular file (%v): %w", d.LockFile, fileMode(fi), errors.Join(serr, errNotRegular))
			}
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// No lock file: the application is not running, or not busy.
		case errors.Is(err, syscall.ELOOP):
			return "", release, fmt.Errorf("defer: the lock file %s is a symbolic link, not a regular file: %w", d.LockFile, err)
		case err != nil:
			return "", release, fmt.Errorf("defer: open the lock file %s: %w", d.LockFile, err)
		default:
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				f.Close()
				if errors.Is(err, syscall.EWOULDBLOCK) {
					return "the application holds " + d.LockFile, func() {}, nil
				}
				return "", release, fmt.Errorf("defer: lock %s: %w", d.LockFile, err)
			}
			release = func() { f.Close() } // closing drops the flock
		}
	}
	if d.Command != nil {
		ev.Phase = string(PhaseDefer)
		err := d.Command.Run(ctx, ev)
		var ee *script.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.Code == exTempFail:
			release()
			// Never the command's text: it may carry a secret, and the
			// reason goes to the status, the node record and the audit log.
			return fmt.Sprintf("the defer command exited %d (not now)", exTempFail), func() {}, nil
		default:
			release()
			return "", func() {}, fmt.Errorf("defer: %w (exit 0 to go on, %d to defer)", err, exTempFail)
		}
	}
	return "", release, nil
}

var errNotRegular = errors.New("only a regular file is locked")

func fileMode(fi fs.FileInfo) string {
	if fi == nil {
		return "unknown type"
	}
	switch m := fi.Mode(); {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "type " + fi.Mode().Type().String()
}

// mayStart asks the application whether the update of sum may start. It
// returns what to call once the update is over (the lock file is held
// until then), or the outcome that ends the check: deferred, or, after
// max_defer with on_max_defer = "fail", failed.
func (r *Runner) mayStart(ctx context.Context, st *State, sum string) (func(), *Outcome) {
	d := r.svc.Defer
	if d == nil {
		return func() {}, nil
	}
	if r.deferral.checksum != sum {
		r.deferral = deferring{}
	}
	ev := hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: sum, PreviousHash: st.Checksum, Release: st.Release, Time: r.now()}
	if st.Release != "" {
		ev.ReleaseDir = r.lay.releaseDir(st.Release)
	}
	reason, release, err := d.busy(ctx, ev)
	if err != nil {
		return nil, &Outcome{Result: ResultError, Phase: PhaseDefer, Checksum: sum, Err: err}
	}
	now := r.now()
	if reason == "" {
		if !r.deferral.since.IsZero() {
			r.logger.Info("the application no longer defers the update", "checksum", sum,
				"deferred_for", now.Sub(r.deferral.since).Round(time.Millisecond))
		}
		r.deferral = deferring{}
		r.setDeferred("", time.Time{})
		return release, nil
	}
	if r.deferral.since.IsZero() {
		r.deferral = deferring{checksum: sum, since: now}
		r.logger.Info("update deferred by the application", "checksum", sum, "reason", reason, "max_defer", d.MaxDefer)
	}
	r.deferral.reason = reason
	if r.deferral.overdue {
		return release, nil // looked at again once the slot is held: it still proceeds
	}
	if waited := now.Sub(r.deferral.since); waited >= d.MaxDefer {
		since := r.deferral.since
		r.deferral = deferring{}
		r.setDeferred("", time.Time{})
		if d.OnMaxDefer == OnMaxDeferFail {
			err := fmt.Errorf("deferred for %s, past max_defer (%s): %s", waited.Round(time.Second), d.MaxDefer, reason)
			st.failed(Attempt{Time: since.UTC(), Checksum: sum, Result: "failure", Phase: string(PhaseDefer),
				Error: err.Error(), Duration: waited}, now.UTC())
			return nil, &Outcome{Result: ResultFailed, Checksum: sum, Phase: PhaseDefer, Err: err}
		}
		r.logger.Warn("max_defer reached; updating anyway", "checksum", sum, "deferred_for", waited.Round(time.Second), "reason", reason)
		r.deferral = deferring{checksum: sum, since: since, overdue: true}
		return release, nil
	}
	r.setDeferred(reason, r.deferral.since)
	return nil, &Outcome{Result: ResultDeferred, Checksum: sum, Reason: reason, Until: now.Add(d.Interval)}
}

// reportDeferred tells the fleet (node record, audit log) that this host
// defers an update, once per reason: not at every look.
func (r *Runner) reportDeferred(ctx context.Context, st *State, out Outcome) {
	if r.deferral.reported == out.Reason {
		return
	}
	ns := fleet.NodeStatus{Node: r.node, Checksum: st.Checksum, Release: st.Release, Result: string(ResultDeferred),
		Attempt: out.Checksum, Phase: string(PhaseDefer), Reason: fleet.Clip(out.Reason), Time: r.now().UTC(),
		Tags: r.tags, Policy: r.policyHash()}
	// Told when its event is in the log, even if its status was refused:
	// at every look it would only be repeated there.
	if err := r.report(ctx, ns, fleet.OutcomeEvents(ns)); err != nil && !errors.Is(err, fleet.ErrEventsWritten) {
		return
	}
	r.deferral.reported = out.Reason
}

// deferredNow reports, at scrape time, which services the application
// holds back.
type deferredNow struct{ s *Server }

var deferredDesc = prometheus.NewDesc("dropship_update_deferred",
	"1 while the application defers an update of the service (its defer block), else 0.", []string{"service"}, nil)

func (deferredNow) Describe(ch chan<- *prometheus.Desc) { ch <- deferredDesc }

func (g deferredNow) Collect(ch chan<- prometheus.Metric) {
	a := g.s.current()
	if a == nil {
		return
	}
	for _, run := range a.runners {
		if run.svc.Defer == nil {
			continue
		}
		v := 0.0
		if run.Status().Deferred != "" {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(deferredDesc, prometheus.GaugeValue, v, run.svc.Name)
	}
}

// deferralEnded tells the fleet that a host which said "deferred" no
// longer waits, when its check ended with no attempt to report (the
// release was withdrawn, a hold came): its record would say deferred
// until the next update otherwise.
func (r *Runner) deferralEnded(ctx context.Context, st *State, out Outcome) {
	if r.deferral.reported == "" || (out.Result != ResultNoop && out.Result != ResultSkipped) {
		return
	}
	ns := fleet.NodeStatus{Node: r.node, Checksum: st.Checksum, Release: st.Release, Result: "registered",
		Time: r.now().UTC(), Tags: r.tags, Policy: r.policyHash()}
	if err := r.fleet.Report(ctx, r.svc.Name, ns); err != nil {
		r.logger.Warn("could not report node status", "error", err)
		return
	}
	r.deferral.reported = ""
}
