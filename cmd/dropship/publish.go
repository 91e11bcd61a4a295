package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
)

func publishCmd(g *globals) *cobra.Command {
	var to, repoName string
	var partSize int64
	cmd := &cobra.Command{
		Use:   "publish FILE --to s3://BUCKET/KEY | swift://CONTAINER/KEY",
		Short: "Upload an artifact with its MD5 and SHA-256, for the fleet to pick up",
		Long: "Upload FILE to S3 or Swift (Rackspace Cloud Files) with its MD5 and SHA-256 stored as\n" +
			"metadata, so agents verify it even when it is stored in parts. Credentials and endpoints\n" +
			"come from the repo blocks of --config (repo \"s3\", \"swift\" or \"rackspace\", or --repo NAME);\n" +
			"without them S3 uses the standard AWS credential chain.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := url.Parse(to)
			if err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "" {
				return fmt.Errorf("--to %q: want s3://BUCKET/KEY or swift://CONTAINER/KEY", to)
			}
			repos, err := g.repos()
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			store, err := pickStore(registry(), repos, repoName, u.Scheme)
			if err != nil {
				return fmt.Errorf("publish to %s: %w", to, err)
			}
			info, err := store.Publish(ctx, u.Host, strings.TrimPrefix(u.Path, "/"), args[0], partSize)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "published %s (%d bytes, md5 %s, sha256 %s)\n", info.Key, info.Size, info.MD5, info.SHA256)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination: s3://BUCKET/KEY or swift://CONTAINER/KEY")
	cmd.Flags().StringVar(&repoName, "repo", "", "repo block of the agent config to take credentials from")
	cmd.Flags().Int64Var(&partSize, "part-size", 64<<20, "upload files larger than this in parts (bytes)")
	cmd.MarkFlagRequired("to")
	return cmd
}

// repos returns the repo blocks of the agent config; a missing default
// config file is no error (publishing from a build machine).
func (g *globals) repos() (map[string]*artifact.Repo, error) {
	if _, err := os.Stat(g.config); errors.Is(err, fs.ErrNotExist) && g.config == agent.DefaultConfig {
		return nil, nil
	}
	cfg, diags := agent.Load(g.config, registry(), slog.New(slog.DiscardHandler))
	printDiags(g.stderr, diags)
	if diags.HasErrors() {
		return nil, exitError{2}
	}
	return cfg.Repos, nil
}

// pickStore is the store publish uploads to: the repo --repo names, else
// the repo named like the scheme, else one made from no keys at all
// (for S3, the AWS SDK's default credential chain). The store comes from
// the same registry and the same decoding as the agent's.
func pickStore(reg agent.Registry, repos map[string]*artifact.Repo, name, scheme string) (artifact.Store, error) {
	types, ok := publishTargets[scheme]
	if !ok {
		return nil, fmt.Errorf("scheme must be one of %s", strings.Join(slices.Sorted(maps.Keys(publishTargets)), ", "))
	}
	var r *artifact.Repo
	if name != "" {
		if r, ok = repos[name]; !ok {
			return nil, fmt.Errorf("no repo %q in the agent config", name)
		}
		if !slices.Contains(types, r.Type) {
			return nil, fmt.Errorf("repo %q is of type %q; %s:// takes one of: %s", name, r.Type, scheme, strings.Join(types, ", "))
		}
	} else {
		for _, t := range types {
			if c, ok := repos[t]; ok && slices.Contains(types, c.Type) {
				r = c
				break
			}
		}
	}
	if r != nil {
		if r.Store == nil {
			return nil, fmt.Errorf("repo %q has errors", r.Name)
		}
		return r.Store, nil
	}
	wd, _ := os.Getwd()
	store, diags := reg.Repos[types[0]](types[0], hcl.EmptyBody(), wd)
	if diags.HasErrors() {
		return nil, fmt.Errorf("no repo %q block in the agent config (or --repo), and none works without one: %w", types[0], diags)
	}
	return store, nil
}
