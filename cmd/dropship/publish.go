package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
)

func publishCmd(g *globals) *cobra.Command {
	var to, repoName, signKey, consulAddr, consulPrefix string
	var partSize int64
	var claims signature.Claims
	cmd := &cobra.Command{
		Use:   "publish FILE --to s3://BUCKET/KEY | swift://CONTAINER/KEY",
		Short: "Upload an artifact with its MD5 and SHA-256, for the fleet to pick up",
		Long: "Upload FILE to S3 or Swift (Rackspace Cloud Files) with its MD5 and SHA-256 stored as\n" +
			"metadata, so agents verify it even when it is stored in parts. Credentials and endpoints\n" +
			"come from the repo blocks of --config (repo \"s3\", \"swift\" or \"rackspace\", or --repo NAME);\n" +
			"without them S3 uses the AWS SDK's default credential chain.\n\n" +
			"--sign KEY writes a minisign signature (KEY.minisig beside the artifact) and uploads it\n" +
			"before the artifact, so that an agent never sees the new artifact beside an old signature.\n" +
			"With a lock \"consul\" block in --config (or --consul ADDR), the release is then announced\n" +
			"to the fleet: watching agents check it at once.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := url.Parse(to)
			if err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "" {
				return fmt.Errorf("--to %q: want s3://BUCKET/KEY or swift://CONTAINER/KEY", to)
			}
			cfg, err := g.publishConfig()
			if err != nil {
				return err
			}
			var repos map[string]*artifact.Repo
			if cfg != nil {
				repos = cfg.Repos
			}
			ctx, stop := signalContext()
			defer stop()
			store, err := pickStore(registry(), repos, repoName, u.Scheme)
			if err != nil {
				return fmt.Errorf("publish to %s: %w", to, err)
			}
			fl, err := announcer(cfg, consulAddr, consulPrefix)
			if err != nil {
				return err
			}
			key := strings.TrimPrefix(u.Path, "/")
			if signKey != "" && claims.Service == "" {
				// A signature binds its service: one that names none could
				// be moved to any service trusting the key.
				if claims.Service = serviceOf(cfg, key); claims.Service == "" {
					return fmt.Errorf("--sign needs --service NAME: the signature names the service it is for")
				}
			}
			if signKey != "" {
				if err := publishSignature(ctx, g, store, u.Host, key, args[0], signKey, claims); err != nil {
					return err
				}
			}
			info, err := store.Publish(ctx, u.Host, key, args[0], partSize)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "published %s (%d bytes, md5 %s, sha256 %s)\n", info.Key, info.Size, info.MD5, info.SHA256)
			if fl == nil {
				return nil
			}
			service := claims.Service
			if service == "" {
				service = serviceOf(cfg, info.Key)
			}
			if service == "" {
				fmt.Fprintln(g.stderr, "not announced: pass --service NAME to tell the fleet which service this release is for")
				return nil
			}
			g.record(ctx, fl, service, fleet.Event{Kind: fleet.EventPublish, Checksum: info.Checksum(),
				Detail: fmt.Sprintf("%s://%s/%s (%d bytes)", u.Scheme, u.Host, key, info.Size)})
			pub := fleet.Published{Service: service, Key: info.Key, Checksum: info.Checksum(), Size: info.Size,
				VersionID: info.VersionID, Signed: signKey != "", Publisher: who()}
			if err := fl.Announce(ctx, pub); err != nil {
				// The release is in the store; agents find it by polling.
				fmt.Fprintf(g.stderr, "published, but not announced (agents will find it at their next poll): %v\n", err)
				return exitError{3}
			}
			fmt.Fprintf(g.stdout, "announced %s to the fleet\n", service)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination: s3://BUCKET/KEY or swift://CONTAINER/KEY")
	cmd.Flags().StringVar(&repoName, "repo", "", "repo block of the agent config to take credentials from")
	cmd.Flags().Int64Var(&partSize, "part-size", 64<<20, "upload files larger than this in parts (bytes)")
	cmd.Flags().StringVar(&signKey, "sign", "", "secret key to sign the release with (see dropship keygen)")
	cmd.Flags().StringVar(&claims.Service, "service", "", "the service the release is for (signature and announcement)")
	cmd.Flags().StringVar(&claims.Version, "version", "", "version or build id, in the signature")
	cmd.Flags().StringVar(&consulAddr, "consul", "", "Consul address to announce the release at, without a lock \"consul\" block in --config")
	cmd.Flags().StringVar(&consulPrefix, "consul-prefix", "dropship", "with --consul: the fleet's key prefix")
	cmd.MarkFlagRequired("to")
	return cmd
}

// publishSignature signs the file and uploads the signature beside where
// the artifact will be, before the artifact itself.
func publishSignature(ctx context.Context, g *globals, store artifact.Store, container, key, path, keyFile string, c signature.Claims) error {
	priv, err := loadSecretKey(g, keyFile)
	if err != nil {
		return err
	}
	sig, err := signFile(priv, path, c)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp("", "dropship-sig-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(sig); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	info, err := store.Publish(ctx, container, key+signature.Suffix, tmp.Name(), 0)
	if err != nil {
		return fmt.Errorf("upload the signature: %w", err)
	}
	fmt.Fprintf(g.stdout, "signed: %s\n", info.Key)
	return nil
}

// announcer is where publish announces: the fleet of --config when it is
// one that announces, else a Consul at --consul.
func announcer(cfg *agent.Config, addr, prefix string) (fleet.Fleet, error) {
	if addr != "" {
		client, err := api.NewClient(&api.Config{Address: addr})
		if err != nil {
			return nil, fmt.Errorf("--consul %q: %w", addr, err)
		}
		return &consul.Fleet{Client: client, Prefix: strings.Trim(prefix, "/")}, nil
	}
	if cfg == nil {
		return nil, nil
	}
	if f, ok := cfg.Fleet.(interface {
		fleet.Fleet
		fleet.Watcher
	}); ok {
		return f, nil
	}
	return nil, nil
}

// serviceOf finds the service of --config whose artifact is at key.
func serviceOf(cfg *agent.Config, key string) string {
	if cfg == nil {
		return ""
	}
	for _, s := range cfg.Services {
		if s.Source != nil && s.Source.String() == key {
			return s.Name
		}
	}
	return ""
}

// publishConfig returns the agent config; a missing default config file
// is no error (publishing from a build machine): nil.
func (g *globals) publishConfig() (*agent.Config, error) {
	if _, err := os.Stat(g.config); errors.Is(err, fs.ErrNotExist) && g.config == agent.DefaultConfig {
		return nil, nil
	}
	cfg, diags := agent.Load(g.config, registry(), slog.New(slog.DiscardHandler))
	printDiags(g.stderr, diags)
	if diags.HasErrors() {
		return nil, exitError{2}
	}
	return cfg, nil
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
