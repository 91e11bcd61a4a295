package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/fleet/dashboard"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/blocking"
)

// fleet loads the config and returns its fleet.
func (g *globals) fleet() (fleet.Fleet, error) {
	cfg, err := g.load(slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return fleet.Shared(cfg.Fleet)
}

// operatorKeyEnv names the operator's secret key when --operator-key
// does not.
const operatorKeyEnv = "DROPSHIP_OPERATOR_KEY"

// operatorFleet is fleet for a command that writes operators' records:
// with --operator-key (or $DROPSHIP_OPERATOR_KEY) they are signed.
func (g *globals) operatorFleet() (fleet.Fleet, error) {
	cfg, err := g.load(slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return g.signing(cfg.Fleet)
}

// signing returns the shared fleet of a, signing what it writes with the
// operator's key when one is given.
func (g *globals) signing(a fleet.Agent) (fleet.Fleet, error) {
	p, err := fleet.Shared(a)
	if err != nil {
		return nil, err
	}
	path := g.operatorKey
	if path == "" {
		path = os.Getenv(operatorKeyEnv)
	}
	c, ok := p.(*consul.Fleet)
	if path == "" || !ok {
		return p, nil
	}
	key, err := loadSecretKey(g, path)
	if err != nil {
		return nil, fmt.Errorf("operator key: %w", err)
	}
	name := c.OperatorKeyName(key.ID())
	if name == "" {
		name = fmt.Sprintf("key %016X", key.ID())
		if len(c.OperatorKeys) > 0 {
			fmt.Fprintf(g.stderr, "warning: operator key %s is not in this config's operator_keys: agents that list theirs ignore what it signs\n", path)
		}
	}
	c.Signer = &consul.Signer{Key: key, Name: name}
	return c, nil
}

func who() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

func holdCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "hold SERVICE --reason TEXT",
		Short: "Stop every host from starting an update of SERVICE",
		Long:  "Write a hold for SERVICE in Consul: no host starts an update while it exists (hosts already\nupdating finish). `dropship resume SERVICE` removes it.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why, for whoever finds the hold")
			}
			if err := p.Hold(cmd.Context(), args[0], fleet.Hold{Reason: reason, Who: who()}); err != nil {
				return err
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventHold, Detail: reason})
			fmt.Fprintf(g.stdout, "%s: on hold (%s)\n", args[0], reason)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why updates are held")
	operatorKeyFlag(g, cmd)
	return cmd
}

func resumeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resume SERVICE",
		Short: "Remove the hold of SERVICE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			if err := p.Resume(cmd.Context(), args[0]); err != nil {
				return err
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventResume})
			fmt.Fprintf(g.stdout, "%s: resumed\n", args[0])
			return nil
		},
	}
	operatorKeyFlag(g, cmd)
	return cmd
}

// operatorKeyFlag adds --operator-key: the minisign secret key that signs
// the operators' records a command writes.
func operatorKeyFlag(g *globals, cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&g.operatorKey, "operator-key", "",
		"operator's minisign secret key (dropship keygen): sign the records written, for agents with operator_keys (or $"+operatorKeyEnv+")")
}

func fleetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "See and steer the fleet in Consul",
	}
	operatorKeyFlag(g, cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "status [SERVICE]",
		Short: "Table of hosts and versions, slot holders, holds, breakers, and rollouts wave by wave",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load(slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			p, err := fleet.Shared(cfg.Fleet)
			if err != nil {
				return err
			}
			services := args
			if len(services) == 0 {
				if services, err = p.Services(cmd.Context()); err != nil {
					return err
				}
			}
			for i, svc := range services {
				st, err := p.Status(cmd.Context(), svc)
				if err != nil {
					return err
				}
				if i > 0 {
					fmt.Fprintln(g.stdout)
				}
				printFleet(g, st)
				printRollout(cmd.Context(), g, policyOf(cfg, svc), st)
				printOnce(cmd.Context(), g, p, svc)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "clear SERVICE CHECKSUM",
		Short: "Lift the breaker that stops CHECKSUM from rolling out",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			ok, err := p.Clear(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: no breaker for checksum %s", args[0], args[1])
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventClear, Checksum: args[1]})
			fmt.Fprintf(g.stdout, "%s: breaker for %s lifted; hosts will try it again\n", args[0], args[1])
			return nil
		},
	}, fleetLogCmd(g), fleetServeCmd(g), fleetApproveCmd(g), fleetFreezeCmd(g), fleetUnfreezeCmd(g),
		fleetPinCmd(g), fleetUnpinCmd(g), fleetForgetCmd(g), fleetACLPolicyCmd(g))
	return cmd
}

// record appends an operator's event to the audit log. The action itself
// is done: a log that cannot be written is a warning, not a failure.
func (g *globals) record(ctx context.Context, p fleet.Agent, service string, ev fleet.Event) {
	ev.Who, ev.Via = who(), "cli"
	if c, ok := p.(*consul.Fleet); ok && c.Signer != nil {
		ev.Who = c.Signer.Name // the key's name, as the agents know it
	}
	if err := p.Record(ctx, service, ev); err != nil {
		fmt.Fprintf(g.stderr, "warning: %s: could not write the %s to the audit log: %v\n", service, ev.Kind, err)
	}
}

func fleetLogCmd(g *globals) *cobra.Command {
	var follow bool
	var limit int
	cmd := &cobra.Command{
		Use:   "log SERVICE [--follow]",
		Short: "The audit log of SERVICE: publishes, installs, failures, rollbacks, holds, clears",
		Long: "Print the audit log of SERVICE kept in Consul (the newest 1,000 events), oldest first.\n" +
			"With --follow, keep printing events as they are written (Consul blocking queries).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.fleet()
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			evs, idx, err := p.Log(ctx, args[0], 0)
			if err != nil {
				return fmt.Errorf("audit log of %s: %w", args[0], err)
			}
			if limit > 0 && len(evs) > limit {
				evs = evs[len(evs)-limit:]
			}
			var last printed
			for _, ev := range evs {
				last.print(g, ev)
			}
			if !follow {
				return nil
			}
			// Each event is printed once. Consul's index goes backwards on
			// a restored snapshot or a restarted agent, and after an error
			// the log is read afresh: Log then returns all of it, of which
			// only what was not printed is new.
			loop := blocking.Loop{Down: func(err error) {
				fmt.Fprintf(g.stderr, "warning: %v (retrying with back-off)\n", err)
			}}
			loop.Run(ctx, idx, func(ctx context.Context, idx uint64) (uint64, error) {
				evs, n, err := p.Log(ctx, args[0], idx)
				if err != nil {
					return idx, err
				}
				for _, ev := range evs {
					last.print(g, ev)
				}
				return n, nil
			})
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().IntVarP(&limit, "lines", "n", 0, "print only the last N events (0: all)")
	return cmd
}

// printed is what `fleet log` has printed: each event is printed once,
// also when the log is read afresh. Events are told apart by what they
// say (their time to the nanosecond, host, kind…), not by Consul's
// index, which a restored snapshot or a restarted agent renumbers; the
// log's order is Consul's, not the events' times, so no time can stand
// for "printed up to here". It remembers the newest 2 × MaxEvents.
type printed struct {
	seen  map[fleet.Event]bool
	order []fleet.Event
}

// print prints ev unless it was printed.
func (p *printed) print(g *globals, ev fleet.Event) {
	key := ev
	key.Index = 0
	if p.seen[key] {
		return
	}
	if p.seen == nil {
		p.seen = map[fleet.Event]bool{}
	}
	p.seen[key] = true
	p.order = append(p.order, key)
	if len(p.order) > 2*fleet.MaxEvents {
		delete(p.seen, p.order[0])
		p.order = p.order[1:]
	}
	printEvent(g, ev)
}

// printEvent writes one event as one line.
func printEvent(g *globals, ev fleet.Event) {
	line := fmt.Sprintf("%s  %-8s", ev.Time.UTC().Format(time.RFC3339), ev.Kind)
	if ev.Node != "" {
		line += " on " + ev.Node
	}
	if ev.Checksum != "" {
		line += " checksum " + ev.Checksum
	}
	if ev.Release != "" {
		line += " release " + ev.Release
	}
	if ev.Phase != "" && ev.Kind == fleet.EventFailure {
		line += " in " + ev.Phase
	}
	line += " by " + orDash(ev.Who)
	switch {
	case ev.Writer != "":
		line += " (" + orDash(ev.Via) + " on " + ev.Writer + ")"
	case ev.Via != "":
		line += " (" + ev.Via + ")"
	}
	if ev.Detail != "" {
		line += ": " + oneLine(ev.Detail)
	}
	fmt.Fprintln(g.stdout, line)
}

func printFleet(g *globals, st fleet.Status) {
	// The newest checksum is the one most recently installed anywhere.
	newest, at := "", time.Time{}
	for _, n := range st.Nodes {
		if n.Result == "installed" && n.Time.After(at) {
			newest, at = n.Checksum, n.Time
		}
	}
	on := 0
	for _, n := range st.Nodes {
		if newest != "" && n.Checksum == newest {
			on++
		}
	}
	fmt.Fprintf(g.stdout, "service %s: %d hosts, %d on the newest checksum %s\n", st.Service, len(st.Nodes), on, orDash(newest))
	fmt.Fprintf(g.stdout, "slots: %d of %d held %s\n", len(st.Holders), st.Limit, strings.Join(st.Holders, ", "))
	if st.Hold != nil {
		fmt.Fprintf(g.stdout, "HOLD since %s by %s: %s\n", st.Hold.Time.Format(time.RFC3339), st.Hold.Who, st.Hold.Reason)
	}
	for _, ig := range st.Ignored {
		fmt.Fprintf(g.stdout, "IGNORED %s: %s\n", ig.Key, oneLine(ig.Reason))
	}
	for _, b := range st.Breakers {
		fmt.Fprintf(g.stdout, "BREAKER %s: failed on %s in %s at %s: %s\n", b.Checksum, b.Node, b.Phase, b.Time.Format(time.RFC3339), oneLine(b.Error))
	}
	now := time.Now()
	for _, n := range st.Nodes {
		if fleet.Ahead(n.Time, now) {
			fmt.Fprintf(g.stdout, "CLOCK AHEAD on %s? its record is dated %s, %s after this host's clock; rollouts count it as of when they first read it\n",
				n.Node, n.Time.Format(time.RFC3339), n.Time.Sub(now).Round(time.Second))
		}
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCHECKSUM\tRELEASE\tLAST RESULT\tPHASE\tTIME\tERROR")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, orDash(n.Checksum), orDash(n.Release), n.Result, orDash(n.Phase),
			n.Time.Format(time.RFC3339), oneLine(n.Error+n.Reason))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fleetServeCmd(g *globals) *cobra.Command {
	var listen, tokenFile, readTokenFile string
	var allowActions bool
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR",
		Short: "Serve the fleet dashboard: every service and host, live, in a browser",
		Long: "Serve a web page of every service in Consul (release per host, last results, holds,\n" +
			"breakers, the audit log), updated live over Server-Sent Events, and its JSON API under\n" +
			"/api/v1/. Read-only unless --allow-actions and --token-file are given: then hold, resume\n" +
			"and clear are accepted as POSTs with `Authorization: Bearer TOKEN`, and written to the\n" +
			"audit log under the token's identity. The token file has one `IDENTITY TOKEN` per line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load(slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			p, err := fleet.Shared(cfg.Fleet)
			if allowActions && err == nil {
				p, err = g.signing(cfg.Fleet) // actions signed with --operator-key
			}
			if err != nil {
				return fmt.Errorf("fleet serve: %w", err)
			}
			store, ok := p.(dashboard.Store)
			if !ok {
				return fmt.Errorf("fleet serve: %w", fleet.ErrSingleHost)
			}
			opts := dashboard.Options{Store: store, Logger: slog.New(slog.NewTextHandler(g.stderr, nil)),
				Policies: map[string]*rollout.Policy{}}
			for _, svc := range cfg.Services {
				opts.Policies[svc.Name] = svc.Rollout
			}
			switch {
			case allowActions && tokenFile == "":
				return fmt.Errorf("--allow-actions needs --token-file: every action is done by someone")
			case !allowActions && tokenFile != "":
				return fmt.Errorf("--token-file without --allow-actions: the dashboard is read-only, the tokens would do nothing")
			case allowActions:
				if opts.Tokens, err = dashboard.LoadTokens(tokenFile); err != nil {
					return err
				}
				opts.Actor = p
			}
			if readTokenFile != "" {
				if opts.ReadTokens, err = dashboard.LoadTokens(readTokenFile); err != nil {
					return err
				}
			} else {
				opts.Logger.Warn("fleet serve: anyone who reaches the address reads the dashboard (hook output, operators' addresses); give --read-token-file to require a token")
			}
			srv, err := dashboard.New(opts)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("fleet serve: listen on %s: %w", listen, err)
			}
			ctx, stop := signalContext()
			defer stop()
			go srv.Run(ctx)
			hs := dashboard.HTTPServer(srv.Handler(), 0)
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				hs.Shutdown(sctx)
			}()
			opts.Logger.Info("fleet dashboard", "listen", ln.Addr().String(), "actions", allowActions)
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("fleet serve: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8600", "address to serve on")
	cmd.Flags().BoolVar(&allowActions, "allow-actions", false, "accept hold, resume and clear (needs --token-file)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file of `IDENTITY TOKEN` lines allowed to act")
	cmd.Flags().StringVar(&readTokenFile, "read-token-file", "", "file of `IDENTITY TOKEN` lines allowed to read (else anyone who reaches --listen reads)")
	return cmd
}

var _ dashboard.Store = (*consul.Fleet)(nil)

func fleetACLPolicyCmd(g *globals) *cobra.Command {
	var node, consulNode string
	cmd := &cobra.Command{
		Use:   "acl-policy agent|operator",
		Short: "Print the Consul ACL rules of this host's agent, or of the operators",
		Long: "Print the least Consul ACL rules dropship needs, for the prefix of the config's lock \"consul\"\n" +
			"block. agent: the rules of this host's agent (its node_name and the services of its config):\n" +
			"its own node record and audit folder, the breaker, slots, run-once records; read on the rest.\n" +
			"Each host gets a policy of its own. operator: write on every record of the prefix.",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"agent", "operator"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load(slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			c, ok := cfg.Fleet.(*consul.Fleet)
			if !ok {
				return fleet.ErrSingleHost
			}
			switch args[0] {
			case "agent":
				if node == "" {
					node = cfg.NodeName
				}
				var services []string
				for _, s := range cfg.Services {
					services = append(services, s.Name)
				}
				fmt.Fprint(g.stdout, consul.AgentPolicy(c.Prefix, node, consulNode, services))
			case "operator":
				fmt.Fprint(g.stdout, consul.OperatorPolicy(c.Prefix))
			default:
				return fmt.Errorf("acl-policy %q: agent or operator", args[0])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the agent's node_name (default: the config's)")
	cmd.Flags().StringVar(&consulNode, "consul-node", "", "the Consul agent's node name, to allow sessions there only (default: any node)")
	return cmd
}
