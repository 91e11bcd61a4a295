package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/fleet"
)

// fleet loads the config and returns its fleet.
func (g *globals) fleet() (fleet.Fleet, error) {
	cfg, err := g.load(slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return cfg.Fleet, nil
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
			p, err := g.fleet()
			if err != nil {
				return err
			}
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why, for whoever finds the hold")
			}
			if err := p.Hold(cmd.Context(), args[0], fleet.Hold{Reason: reason, Who: who()}); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: on hold (%s)\n", args[0], reason)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why updates are held")
	return cmd
}

func resumeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume SERVICE",
		Short: "Remove the hold of SERVICE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.fleet()
			if err != nil {
				return err
			}
			if err := p.Resume(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: resumed\n", args[0])
			return nil
		},
	}
}

func fleetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "See and steer the fleet in Consul",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status [SERVICE]",
		Short: "Table of hosts and versions, slot holders, holds and breakers",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.fleet()
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
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "clear SERVICE CHECKSUM",
		Short: "Lift the breaker that stops CHECKSUM from rolling out",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.fleet()
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
			fmt.Fprintf(g.stdout, "%s: breaker for %s lifted; hosts will try it again\n", args[0], args[1])
			return nil
		},
	})
	return cmd
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
	for _, b := range st.Breakers {
		fmt.Fprintf(g.stdout, "BREAKER %s: failed on %s in %s at %s: %s\n", b.Checksum, b.Node, b.Phase, b.Time.Format(time.RFC3339), oneLine(b.Error))
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCHECKSUM\tRELEASE\tLAST RESULT\tPHASE\tTIME\tERROR")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, orDash(n.Checksum), orDash(n.Release), n.Result, orDash(n.Phase),
			n.Time.Format(time.RFC3339), oneLine(n.Error))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
