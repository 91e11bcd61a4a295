package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/kardianos/service"

	"github.com/dropshipd/dropship/agent"
)

// stopTimeout bounds how long a stop waits for an update that already
// switched to finish its after hooks (the unit's TimeoutStopSec is longer).
const stopTimeout = 10 * time.Minute

// daemon runs the agent until stopped, reloading on SIGHUP. It is the
// service.Interface that kardianos/service drives: Start returns at once,
// Stop cancels and waits.
type daemon struct {
	g      *globals
	logger *slog.Logger
	cfg    *agent.Config
	hup    chan os.Signal

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// Start runs the agent in the background.
func (d *daemon) Start(service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	d.mu.Lock()
	d.cancel, d.done = cancel, make(chan error, 1)
	d.mu.Unlock()
	go func() { d.done <- d.run(ctx) }()
	return nil
}

// Stop cancels: updates not yet switched are abandoned, one that switched
// finishes its after hooks, within stopTimeout.
func (d *daemon) Stop(service.Service) error {
	d.mu.Lock()
	cancel, done := d.cancel, d.done
	d.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(stopTimeout):
		return errors.New("stop: an update did not finish in time")
	}
}

func (d *daemon) run(ctx context.Context) error {
	srv := agent.NewServer(version)
	ln, err := agent.Listen(d.cfg)
	if err != nil {
		return err
	}
	network, addr := agent.StatusAddr(d.cfg)
	httpSrv := srv.HTTPServer(agent.Access{Unix: network == "unix", Token: d.cfg.StatusToken})
	go httpSrv.Serve(ln)
	defer httpSrv.Close()
	d.logger.Info("dropship agent started", "version", version, "services", len(d.cfg.Services),
		"node", d.cfg.NodeName, "status", network+":"+addr)

	cfg := d.cfg
	for cfg != nil {
		if cfg, err = d.runConfig(ctx, srv, cfg); err != nil {
			return err
		}
	}
	d.logger.Info("dropship agent stopped")
	return nil
}

// runConfig runs the agent of cfg until ctx ends (nil is returned) or a
// valid new config is loaded on SIGHUP (it is returned). An invalid one
// is refused with its diagnostics and cfg keeps running.
func (d *daemon) runConfig(ctx context.Context, srv *agent.Server, cfg *agent.Config) (*agent.Config, error) {
	a, err := agent.New(cfg, srv, d.logger)
	if err != nil {
		return nil, err
	}
	srv.SetAgent(a)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	finished := make(chan struct{})
	go func() { a.Run(runCtx); close(finished) }()
	for {
		select {
		case <-ctx.Done():
			stop()
			<-finished
			return nil, nil
		case <-d.hup:
			next, diags := agent.Load(d.g.config, registry(), d.logger)
			printDiags(d.g.stderr, diags)
			if diags.HasErrors() {
				d.logger.Error("reload refused: the new config has errors; the running config stays", "config", d.g.config)
				continue
			}
			d.logger.Info("reloading", "config", next.File, "services", len(next.Services))
			stop()
			<-finished
			return next, nil
		}
	}
}

// runForeground runs the daemon until SIGINT or SIGTERM.
func runForeground(d *daemon) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(term)
	if err := d.Start(nil); err != nil {
		return err
	}
	select {
	case <-term:
		d.logger.Info("stopping: updates not yet switched are abandoned, a switched one finishes its hooks")
		return d.Stop(nil)
	case err := <-d.done:
		return err
	}
}
