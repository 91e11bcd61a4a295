package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"
)

// unitTemplate is the systemd unit: `dropship service install` renders it
// with this binary's path, and debian/dropship.service is the same for
// /usr/bin/dropship (a test keeps the two equal).
const unitTemplate = `[Unit]
Description={{.Description}}
Documentation=file:///usr/share/doc/dropship/README.md
After=network-online.target
Wants=network-online.target
ConditionFileIsExecutable={{.Path}}

[Service]
Type=simple
ExecStart={{.Path}}{{range .Arguments}} {{.}}{{end}}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=10s
# SIGTERM to the agent only: it lets a switched update finish its after
# hooks; then everything left in the cgroup is killed. So a hook must start
# long-running services with systemctl, never directly: a process a hook
# started itself dies with the agent's next restart.
KillMode=mixed
TimeoutStopSec=15min
# Releases must stay readable by the services that run them.
UMask=0022
# The file system is read-only but for the state path and /srv. THE ONE
# THING TO EXTEND: a destination elsewhere, or a hook that writes
# elsewhere (say /etc/nginx/conf.d), needs a drop-in:
#   systemctl edit dropship  ->  [Service] ReadWritePaths=/opt/app /etc/nginx/conf.d
ProtectSystem=strict
ReadWritePaths=/var/lib/dropship -/srv
ProtectHome=read-only
# What an installer needs: chown and chmod releases, replace files it does
# not own, run hooks as other users, signal processes; CAP_FSETID so that a
# setgid bit survives on a file whose group is not the agent's (group and
# preserve_setuid). Nothing else: no binding low ports or loading modules
# from a hook.
CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_FSETID CAP_SETUID CAP_SETGID CAP_KILL
NoNewPrivileges=yes
# Hooks get their own /tmp: nothing they leave there is shared with other
# services (pass files through the release or the state path instead).
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
# Not RestrictSUIDSGID: preserve_setuid = true must be able to keep the
# setuid bits a release ships.
# Hooks have no need to make namespaces (containers are started through
# their daemons, over a socket).
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# The agent idles at about 25 MiB; the rest is for hooks and unpacking.
MemoryMax=1G
TasksMax=512
StateDirectory=dropship
StateDirectoryMode=0751

[Install]
WantedBy=multi-user.target
`

const unitDescription = "dropship deploy agent"

func serviceConfig(g *globals) (*service.Config, error) {
	cfg, err := filepath.Abs(g.config)
	if err != nil {
		return nil, err
	}
	return &service.Config{
		Name:        "dropship",
		DisplayName: "dropship",
		Description: unitDescription,
		Arguments:   []string{"agent", "--config", cfg},
		Option:      service.KeyValue{"SystemdScript": unitTemplate},
	}, nil
}

func serviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install and control dropship as a system service (systemd) on hosts without the .deb",
	}
	for _, action := range []struct{ name, short string }{
		{"install", "Write the service unit (running `dropship agent --config CONFIG`) and enable it"},
		{"uninstall", "Remove the service unit"},
		{"start", "Start the service"},
		{"stop", "Stop the service (a switched update finishes its hooks first)"},
		{"restart", "Restart the service"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   action.name,
			Short: action.short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if action.name == "install" {
					// Refuse to install a service that would not start.
					if _, err := g.load(slog.New(slog.DiscardHandler)); err != nil {
						return err
					}
				}
				s, err := newService(g)
				if err != nil {
					return err
				}
				if err := service.Control(s, action.name); err != nil {
					return fmt.Errorf("service %s: %w", action.name, err)
				}
				fmt.Fprintf(g.stdout, "dropship service: %s done (%s)\n", action.name, s.Platform())
				return nil
			},
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Say whether the service is installed and running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := newService(g)
			if err != nil {
				return err
			}
			st, err := s.Status()
			switch {
			case err == service.ErrNotInstalled:
				fmt.Fprintln(g.stdout, "dropship service: not installed")
				return exitError{3}
			case err != nil:
				return fmt.Errorf("service status: %w", err)
			case st == service.StatusRunning:
				fmt.Fprintln(g.stdout, "dropship service: running")
				return nil
			case st == service.StatusStopped:
				fmt.Fprintln(g.stdout, "dropship service: stopped")
				return exitError{3}
			}
			fmt.Fprintln(g.stdout, "dropship service: unknown")
			return exitError{4}
		},
	})
	return cmd
}

func newService(g *globals) (service.Service, error) {
	cfg, err := serviceConfig(g)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err == nil {
		cfg.Executable = exe
	}
	return service.New(&daemon{g: g}, cfg)
}
