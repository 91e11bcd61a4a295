package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
)

// statusClient talks to the running agent's status endpoint.
// The token is the config's status token, for a TCP listener.
func (g *globals) statusClient() (*http.Client, string, string, error) {
	cfg, err := g.load(slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, "", "", err
	}
	network, addr := agent.StatusAddr(cfg)
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, network + ":" + addr, cfg.StatusToken, nil
}

func statusCmd(g *globals) *cobra.Command {
	var check string
	var force bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the running agent has installed, when it checks, and what failed",
		Long:  "Ask the running agent (its status endpoint, status_addr) for every service's state.\nWith --check SERVICE, ask it to check SERVICE now.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, where, token, err := g.statusClient()
			if err != nil {
				return err
			}
			if check != "" {
				u := "http://agent/v1/services/" + check + "/check"
				if force {
					u += "?force"
				}
				req, _ := http.NewRequest(http.MethodPost, u, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				resp, err := client.Do(req)
				if err != nil {
					return fmt.Errorf("is the agent running? %s: %w", where, err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					return fmt.Errorf("check %s: %s", check, resp.Status)
				}
				fmt.Fprintf(g.stdout, "check of %s queued\n", check)
				return nil
			}
			resp, err := client.Get("http://agent/v1/status")
			if err != nil {
				return fmt.Errorf("is the agent running? %s: %w", where, err)
			}
			defer resp.Body.Close()
			var rep agent.StatusReport
			if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
				return fmt.Errorf("status from %s: %w", where, err)
			}
			fmt.Fprintf(g.stdout, "node %s, dropship %s\n", rep.Node, rep.Version)
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tCHECKSUM\tRELEASE\tLAST CHECK\tRESULT\tNEXT CHECK\tSLOT\tLAST ERROR")
			for _, s := range rep.Services {
				slot := "-"
				switch {
				case s.Holding:
					slot = "holding"
				case s.Waiting:
					slot = "waiting"
				}
				detail := oneLine(s.LastError)
				switch {
				case s.Deferred != "":
					detail = "deferred since " + when(s.DeferredSince) + ": " + oneLine(s.Deferred)
				case !s.WatchUntil.IsZero():
					detail = "watching the new release's health until " + when(s.WatchUntil)
				case s.Staged != "" && detail == "":
					detail = "staged " + s.Staged + ", waiting to install it"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Service, orDash(s.Checksum), orDash(s.Release),
					when(s.LastCheck), orDash(string(s.LastResult)), when(s.NextCheck), slot, detail)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&check, "check", "", "ask the agent to check this service now (after its error back-off)")
	cmd.Flags().BoolVar(&force, "force", false, "with --check: skip the error back-off (unix socket only)")
	return cmd
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("15:04:05")
}
