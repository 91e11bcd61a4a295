package main

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
)

// policyOf returns the rollout policy of service in the local config, or
// nil when this host does not run it or it has no rollout block.
func policyOf(cfg *agent.Config, service string) *rollout.Policy {
	for _, s := range cfg.Services {
		if s.Name == service {
			return s.Rollout
		}
	}
	return nil
}

func fleetApproveCmd(g *globals) *cobra.Command {
	var wave, checksum string
	cmd := &cobra.Command{
		Use:   "approve SERVICE [--wave NAME]",
		Short: "Let a wave of SERVICE's rollout start",
		Long: "Approve a wave (\"canary\", \"1\", \"2\", …) of the release SERVICE is rolling out, for the\n" +
			"waves its rollout block lists under approve. Without --wave: the first such wave not yet\n" +
			"approved. Without --checksum: the release announced last (or installed last).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load(slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			svc, ctx := args[0], cmd.Context()
			p, err := g.signing(cfg.Fleet)
			if err != nil {
				return err
			}
			st, err := p.Status(ctx, svc)
			if err != nil {
				return err
			}
			if checksum == "" {
				if checksum = rollout.Rolling(st); checksum == "" {
					return fmt.Errorf("%s: no release is rolling out; name it with --checksum", svc)
				}
			}
			if wave == "" {
				p := policyOf(cfg, svc)
				if p == nil {
					return fmt.Errorf("%s has no rollout block in this host's config: name the wave with --wave", svc)
				}
				for _, name := range p.Approve {
					if !approvedWave(st.Approvals, checksum, name) {
						wave = name
						break
					}
				}
				if wave == "" {
					return fmt.Errorf("%s: every wave that needs approval is approved for %s", svc, checksum)
				}
			} else if p := policyOf(cfg, svc); p != nil && !contains(p.Names(), wave) {
				return fmt.Errorf("%s: no wave %q (the waves are %s)", svc, wave, strings.Join(p.Names(), ", "))
			} else if p == nil && !rollout.PossibleWave(wave) {
				// Without the policy the waves are unknown here, but not
				// their names: an approval no rollout can ask for is a typo.
				return fmt.Errorf("%s: no rollout has a wave %q: waves are named canary, 1, 2, … (%s has no rollout block in this host's config to say which it has)", svc, wave, svc)
			}
			if err := p.Approve(ctx, svc, fleet.Approval{Checksum: checksum, Wave: wave, Who: who()}); err != nil {
				return err
			}
			g.record(ctx, p, svc, fleet.Event{Kind: fleet.EventApprove, Checksum: checksum, Detail: "wave " + wave})
			fmt.Fprintf(g.stdout, "%s: wave %s of %s approved\n", svc, wave, checksum)
			return nil
		},
	}
	cmd.Flags().StringVar(&wave, "wave", "", "the wave to approve: canary, 1, 2, …")
	cmd.Flags().StringVar(&checksum, "checksum", "", "the release (checksum) the approval is for")
	return cmd
}

func approvedWave(as []fleet.Approval, checksum, wave string) bool {
	for _, a := range as {
		if a.Checksum == checksum && a.Wave == wave {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fleetFreezeCmd(g *globals) *cobra.Command {
	var reason, until string
	cmd := &cobra.Command{
		Use:   "freeze SERVICE --reason TEXT [--until TIME]",
		Short: "Stop new waves of SERVICE's rollouts everywhere (a revert still runs)",
		Long: "Write a freeze: no host starts a new wave of a rollout of SERVICE until `fleet unfreeze`\n" +
			"or --until (RFC 3339, like 2026-12-24T08:00:00+01:00, or a duration from now, like 48h).\n" +
			"Hosts already updating finish; a fleet revert still runs.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why, for whoever finds the freeze")
			}
			f := &fleet.Freeze{Reason: reason, Who: who()}
			if until != "" {
				if f.Until, err = parseUntil(until, time.Now()); err != nil {
					return err
				}
			}
			if err := p.SetFreeze(cmd.Context(), args[0], f); err != nil {
				return err
			}
			detail := reason
			if !f.Until.IsZero() {
				detail += " (until " + f.Until.Format(time.RFC3339) + ")"
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventFreeze, Detail: detail})
			fmt.Fprintf(g.stdout, "%s: frozen: %s\n", args[0], detail)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why new waves are stopped")
	cmd.Flags().StringVar(&until, "until", "", "when the freeze ends by itself (RFC 3339 time or a duration)")
	return cmd
}

func parseUntil(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--until %q: want an RFC 3339 time (2026-12-24T08:00:00+01:00) or a duration (48h)", s)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("--until %q is in the past", s)
	}
	return t.UTC(), nil
}

func fleetUnfreezeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unfreeze SERVICE",
		Short: "Lift the freeze of SERVICE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			if err := p.SetFreeze(cmd.Context(), args[0], nil); err != nil {
				return err
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventUnfreeze})
			fmt.Fprintf(g.stdout, "%s: unfrozen\n", args[0])
			return nil
		},
	}
}

func fleetPinCmd(g *globals) *cobra.Command {
	var nodes string
	cmd := &cobra.Command{
		Use:   "pin SERVICE --nodes GLOB CHECKSUM|RELEASE",
		Short: "Keep the hosts matching GLOB on one release, out of rollouts",
		Long: "Pin the hosts whose node names match GLOB (like \"db-*\") to a release, by checksum or\n" +
			"release id: they switch to it if they keep it, take no new release while pinned, and are\n" +
			"left out of waves. `fleet unpin` lifts it.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			if _, err := path.Match(nodes, ""); err != nil || nodes == "" {
				return fmt.Errorf("--nodes %q: want a glob of node names, like \"web-1\" or \"db-*\"", nodes)
			}
			if _, err := p.SetPin(cmd.Context(), args[0], nodes, &fleet.Pin{Target: args[1], Who: who()}); err != nil {
				return err
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventPin, Checksum: args[1], Detail: "hosts " + nodes})
			fmt.Fprintf(g.stdout, "%s: hosts %s pinned to %s\n", args[0], nodes, args[1])
			return nil
		},
	}
	cmd.Flags().StringVar(&nodes, "nodes", "", "glob of node names")
	cmd.MarkFlagRequired("nodes")
	return cmd
}

func fleetUnpinCmd(g *globals) *cobra.Command {
	var nodes string
	cmd := &cobra.Command{
		Use:   "unpin SERVICE --nodes GLOB",
		Short: "Lift the pin of the hosts matching GLOB",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			ok, err := p.SetPin(cmd.Context(), args[0], nodes, nil)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: no pin for hosts %q", args[0], nodes)
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventUnpin, Detail: "hosts " + nodes})
			fmt.Fprintf(g.stdout, "%s: hosts %s unpinned\n", args[0], nodes)
			return nil
		},
	}
	cmd.Flags().StringVar(&nodes, "nodes", "", "the glob given to fleet pin")
	cmd.MarkFlagRequired("nodes")
	return cmd
}

// printRollout adds the rollout of st to `fleet status`: the checksum,
// wave by wave, the freeze, the pins, the hosts whose policy differs.
func printRollout(ctx context.Context, g *globals, p *rollout.Policy, st fleet.Status) {
	for _, pin := range st.Pins {
		fmt.Fprintf(g.stdout, "PIN hosts %s on %s (by %s at %s)\n", pin.Nodes, pin.Target, pin.Who, pin.Time.Format(time.RFC3339))
	}
	if f := st.Freeze; f != nil {
		until := ""
		if !f.Until.IsZero() {
			until = " until " + f.Until.Format(time.RFC3339)
		}
		fmt.Fprintf(g.stdout, "FROZEN by %s at %s%s: %s\n", f.Who, f.Time.Format(time.RFC3339), until, f.Reason)
	}
	if p == nil {
		return
	}
	mine := p.Hash()
	for _, n := range st.Nodes {
		if n.Policy != mine {
			fmt.Fprintf(g.stdout, "POLICY DIFFERS on %s: %s (this config: %s)\n", n.Node, orDash(n.Policy), mine)
		}
	}
	sum := rollout.Rolling(st)
	if sum == "" {
		fmt.Fprintf(g.stdout, "rollout (policy %s): no release announced or installed yet\n", mine)
		return
	}
	fmt.Fprintf(g.stdout, "rollout of %s (policy %s, on failure: %s):\n", sum, mine, p.OnFailure)
	for _, w := range rollout.NewDecider(p).Describe(ctx, sum, st, time.Now()) {
		line := fmt.Sprintf("  wave %-7s %d hosts: %d done", w.Name, len(w.Nodes), len(w.Done))
		if len(w.Failed) > 0 {
			line += fmt.Sprintf(", %d failed (%s)", len(w.Failed), strings.Join(w.Failed, ", "))
		}
		if len(w.Running) > 0 {
			line += fmt.Sprintf(", %d running (%s)", len(w.Running), strings.Join(w.Running, ", "))
		}
		if len(w.Waiting) > 0 {
			line += fmt.Sprintf(", %d waiting: %s", len(w.Waiting), w.Reason)
		}
		if len(w.Nodes) == 0 {
			line += " (empty)"
		}
		fmt.Fprintln(g.stdout, line)
	}
}

func fleetForgetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "forget SERVICE NODE",
		Short: "Remove the record of a host that is gone for good",
		Long: "Delete NODE's record of SERVICE in Consul. Rollout waves are planned from the registered\n" +
			"hosts and wait for every host of a wave: a host taken out of service must be forgotten, or\n" +
			"its wave waits for it. A host that is still running registers again at its next look.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.operatorFleet()
			if err != nil {
				return err
			}
			ok, err := p.Forget(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: no record of host %q", args[0], args[1])
			}
			g.record(cmd.Context(), p, args[0], fleet.Event{Kind: fleet.EventForget, Node: args[1]})
			fmt.Fprintf(g.stdout, "%s: host %s forgotten\n", args[0], args[1])
			return nil
		},
	}
}
