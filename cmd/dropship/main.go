// Command dropship is a pull-based deployment agent: see README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	_ "time/tzdata" // deploy windows name time zones; hosts may lack the zone files

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet/consul"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

// exitError carries an exit status without printing more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// Nothing serves heap profiles: without sampling, the runtime's
	// profile buckets (a 1.4 MB hash table, touched a page per new stack)
	// never fill with pages.
	runtime.MemProfileRate = 0
	// A deploy agent idles on every server: trade a little GC work during
	// an update for a smaller peak. 25 rather than 50: 1.5 MiB less at the
	// peak of a 1 GiB .tar.zst install (the decoder's window is live heap,
	// so the GC's headroom grows with it), no measurable difference in
	// time (make bench -env 'GOGC=50;GOGC=25'). GOGC in the environment
	// still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
	err := newRoot(os.Stdout, os.Stderr).Execute()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "dropship:", err)
		os.Exit(1)
	}
}

type globals struct {
	config    string
	logLevel  string
	logFormat string
	// operatorKey signs operators' records (--operator-key).
	operatorKey string
	stdout      io.Writer
	stderr      io.Writer
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "dropship",
		Short:         "Pull-based deployment agent",
		Long:          "dropship polls an artifact store for a changed release, takes a slot in a fleet-wide\nsemaphore, runs hooks, installs the release atomically and rolls back on failure.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVarP(&g.config, "config", "c", agent.DefaultConfig, "agent config file")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "text or json")
	root.AddCommand(
		agentCmd(g), validateCmd(g), rollbackCmd(g), historyCmd(g), publishCmd(g), versionCmd(g),
		fleetCmd(g), holdCmd(g), resumeCmd(g), statusCmd(g), serviceCmd(g), keygenCmd(g), signCmd(g), verifyCmd(g),
	)
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", g.logFormat)
}

// load reads the config and prints its diagnostics (warnings too).
func (g *globals) load(logger *slog.Logger) (*agent.Config, error) {
	cfg, diags := agent.Load(g.config, registry(), logger)
	printDiags(g.stderr, diags)
	if diags.HasErrors() {
		return nil, exitError{2}
	}
	return cfg, nil
}

// printDiags writes one line per diagnostic: file:line:column: severity: summary: detail.
func printDiags(w io.Writer, diags hcl.Diagnostics) {
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		where := "dropship"
		if d.Subject != nil {
			where = fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		fmt.Fprintf(w, "%s: %s: %s\n", where, sev, msg)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func agentCmd(g *globals) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run every configured service's update loop",
		Long: "Run every configured service's update loop until SIGINT or SIGTERM; SIGHUP reloads the\n" +
			"config (one with errors is refused and the running config stays). The status endpoint\n" +
			"listens on status_addr. With --once, check every service once, install what changed,\n" +
			"and exit 0 only if nothing failed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := g.logger()
			if err != nil {
				return err
			}
			cfg, err := g.load(logger)
			if err != nil {
				return err
			}
			if len(cfg.Services) == 0 {
				logger.Warn("no services configured", "config", cfg.File, "service_path", cfg.ServicePath)
			}
			if c, ok := cfg.Fleet.(*consul.Fleet); ok && len(c.OperatorKeys) == 0 {
				logger.Warn(`no operator_keys in lock "consul": holds, freezes, pins, approvals and clears are acted on whoever wrote them (anyone with write on the prefix, an agent's token included)`)
			}
			if once {
				a, err := agent.New(cfg, nil, logger)
				if err != nil {
					return err
				}
				ctx, stop := signalContext()
				defer stop()
				if err := a.Once(ctx); err != nil {
					return exitError{1}
				}
				return nil
			}
			d := &daemon{g: g, logger: logger, cfg: cfg, hup: make(chan os.Signal, 1)}
			signal.Notify(d.hup, syscall.SIGHUP)
			defer signal.Stop(d.hup)
			return runForeground(d)
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "check every service once and exit")
	return cmd
}

func validateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the agent config and every service file",
		Long:  "Load the agent config and every service file, print every diagnostic as file:line:column,\nand exit non-zero on any error.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, diags := agent.Load(g.config, registry(), slog.New(slog.DiscardHandler))
			printDiags(g.stderr, diags)
			if diags.HasErrors() {
				return exitError{2}
			}
			names := make([]string, 0, len(cfg.Services))
			for _, s := range cfg.Services {
				names = append(names, s.Name)
			}
			fmt.Fprintf(g.stdout, "%s: ok (%d services: %s)\n", cfg.File, len(names), strings.Join(names, ", "))
			return nil
		},
	}
}

// runner finds the runner of one service.
func (g *globals) runner(name string) (*agent.Runner, *slog.Logger, error) {
	logger, err := g.logger()
	if err != nil {
		return nil, nil, err
	}
	cfg, err := g.load(logger)
	if err != nil {
		return nil, nil, err
	}
	for _, s := range cfg.Services {
		if s.Name == name {
			r, err := agent.NewRunner(cfg, s, logger)
			return r, logger, err
		}
	}
	return nil, nil, fmt.Errorf("no service %q in %s", name, cfg.File)
}

func rollbackCmd(g *globals) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "rollback SERVICE",
		Short: "Switch a service back to the previous (or a named) kept release",
		Long: "Switch SERVICE back to the release installed before the current one, or to --to RELEASE,\n" +
			"and run its after hooks. The agent does not reinstall the checksum rolled back from\nuntil a different one is published.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, err := g.runner(args[0])
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			rel, err := r.Rollback(ctx, to)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: rolled back to %s (checksum %s)\n", args[0], rel.ID, rel.Checksum)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "release id (or a unique prefix) to switch to")
	return cmd
}

func historyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history SERVICE",
		Short: "List a service's kept releases and recent attempts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, err := g.runner(args[0])
			if err != nil {
				return err
			}
			rels, attempts, err := r.History()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CURRENT\tRELEASE\tINSTALLED\tCHECKSUM\tSOURCE")
			for _, rel := range rels {
				mark := ""
				if rel.Current {
					mark = "*"
				}
				if rel.Unrecorded {
					fmt.Fprintf(tw, "%s\t%s\t-\t-\t(not in the state file yet: an update is finishing, or the agent could not save it)\n", mark, rel.ID)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", mark, rel.ID, rel.Installed.Format(time.RFC3339), rel.Checksum, rel.Source)
			}
			tw.Flush()
			if len(attempts) > 0 {
				fmt.Fprintln(g.stdout, "\nRecent attempts:")
				tw = tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tRESULT\tCHECKSUM\tPHASE\tERROR")
				for _, a := range attempts {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Time.Format(time.RFC3339), a.Result, a.Checksum, a.Phase, oneLine(a.Error))
				}
				tw.Flush()
			}
			return nil
		},
	}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(g.stdout, "dropship", version)
		},
	}
}
