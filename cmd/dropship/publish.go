package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/artifact/swift"
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
			var info artifact.Info
			key := strings.TrimPrefix(u.Path, "/")
			switch u.Scheme {
			case "s3":
				info, err = publishS3(ctx, repos, repoName, u.Host, key, args[0], partSize)
			case "swift", "rackspace":
				info, err = publishSwift(ctx, repos, repoName, u.Scheme, u.Host, key, args[0], partSize)
			default:
				return fmt.Errorf("--to %q: scheme must be s3:// or swift://", to)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "published %s (%d bytes, md5 %s, sha256 %s)\n", info.Key, info.Size, info.MD5, info.SHA256)
			g.recordPublish(ctx, u.Scheme+"://"+u.Host+"/"+key, info)
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

func pickRepo(repos map[string]*artifact.Repo, name string, defaults ...string) (*artifact.Repo, error) {
	if name != "" {
		r, ok := repos[name]
		if !ok {
			return nil, fmt.Errorf("no repo %q in the agent config", name)
		}
		return r, nil
	}
	for _, d := range defaults {
		if r, ok := repos[d]; ok {
			return r, nil
		}
	}
	return nil, nil
}

func publishS3(ctx context.Context, repos map[string]*artifact.Repo, name, bucket, key, path string, part int64) (artifact.Info, error) {
	r, err := pickRepo(repos, name, "s3")
	if err != nil {
		return artifact.Info{}, err
	}
	var repo s3.Repo
	if r != nil {
		var diags hcl.Diagnostics
		repo, diags = s3.DecodeRepo(r.Body, filepath.Dir(r.Range.Filename))
		if diags.HasErrors() {
			return artifact.Info{}, diags
		}
	}
	c, err := s3.NewClient(ctx, repo)
	if err != nil {
		return artifact.Info{}, err
	}
	return s3.Publish(ctx, c, bucket, key, path, part)
}

func publishSwift(ctx context.Context, repos map[string]*artifact.Repo, name, scheme, container, key, path string, part int64) (artifact.Info, error) {
	r, err := pickRepo(repos, name, scheme, "swift", "rackspace")
	if err != nil {
		return artifact.Info{}, err
	}
	if r == nil {
		return artifact.Info{}, fmt.Errorf("publishing to Swift needs a repo \"swift\" or \"rackspace\" block in %s (or --repo)", "--config")
	}
	repo, diags := swift.DecodeRepo(r.Body)
	if diags.HasErrors() {
		return artifact.Info{}, diags
	}
	conn, err := swift.NewConnection(r.Type, repo)
	if err != nil {
		return artifact.Info{}, err
	}
	return swift.Publish(ctx, conn, container, key, path, part)
}
