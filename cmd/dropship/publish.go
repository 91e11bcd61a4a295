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
	"path/filepath"
	"slices"
	"strings"

	"aead.dev/minisign"
	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/consulx"
)

func publishCmd(g *globals) *cobra.Command {
	var to, repoName, signKey, consulPrefix string
	var consulConn consulx.Conn
	var partSize int64
	var noChunks bool
	var claims signature.Claims
	cmd := &cobra.Command{
		Use:   "publish FILE --to s3://BUCKET/KEY | swift://CONTAINER/KEY | file:///PATH",
		Short: "Upload an artifact with its MD5 and SHA-256, for the fleet to pick up",
		Long: "Upload FILE to S3 or Swift (Rackspace Cloud Files) with its MD5 and SHA-256 stored as\n" +
			"metadata, so agents verify it even when it is stored in parts. Credentials and endpoints\n" +
			"come from the repo blocks of --config (repo \"s3\", \"swift\" or \"rackspace\", or --repo NAME);\n" +
			"without them S3 uses the AWS SDK's default credential chain.\n\n" +
			"--sign KEY writes a minisign signature (KEY.minisig beside the artifact) and uploads it\n" +
			"before the artifact, so that an agent never sees the new artifact beside an old signature.\n" +
			"A tar archive (.tar, .tar.gz, .tar.zst, …) also gets a chunk index (KEY.chunks, signed\n" +
			"with --sign too) and its chunks under .dropship/chunks/ of the same bucket or container,\n" +
			"each uploaded once: agents then fetch only the chunks that changed (--no-chunks: not).\n" +
			"With a lock \"consul\" block in --config (or --consul ADDR), the release is then announced\n" +
			"to the fleet: watching agents check it at once. --consul takes its token and TLS settings\n" +
			"from --consul-token-file and --consul-ca-file, else from Consul's environment variables\n" +
			"(CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT, …), as a lock \"consul\" block does.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := url.Parse(to)
			if err == nil && u.Scheme == "file" && strings.Trim(u.Path, "/") != "" {
				// A local directory: the container is the file's directory.
				u.Host, u.Path = filepath.Dir(u.Path), "/"+filepath.Base(u.Path)
			}
			if err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "" {
				return fmt.Errorf("--to %q: want s3://BUCKET/KEY, swift://CONTAINER/KEY or file:///PATH", to)
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
			var store artifact.Store = file.Store{}
			if u.Scheme != "file" {
				store, err = pickStore(registry(), repos, repoName, u.Scheme)
			}
			if err != nil {
				return fmt.Errorf("publish to %s: %w", to, err)
			}
			fl, err := announcer(cfg, consulConn, consulPrefix)
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
			var priv *minisign.PrivateKey
			if signKey != "" {
				k, err := loadSecretKey(g, signKey) // once: it may ask for a passphrase
				if err != nil {
					return err
				}
				priv = &k
			}
			if !noChunks {
				// The chunks and their index first: an agent that sees the
				// new archive finds its index beside it.
				if err := publishChunks(ctx, g, store, u.Host, key, args[0], priv, claims); err != nil {
					return err
				}
			}
			if priv != nil {
				if err := publishSignature(ctx, g, store, u.Host, key, args[0], *priv, claims); err != nil {
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
	cmd.Flags().BoolVar(&noChunks, "no-chunks", false, "do not write the chunk index (agents then always fetch the whole archive)")
	cmd.Flags().StringVar(&repoName, "repo", "", "repo block of the agent config to take credentials from")
	cmd.Flags().Int64Var(&partSize, "part-size", 64<<20, "upload files larger than this in parts (bytes)")
	cmd.Flags().StringVar(&signKey, "sign", "", "secret key to sign the release with (see dropship keygen)")
	cmd.Flags().StringVar(&claims.Service, "service", "", "the service the release is for (signature and announcement)")
	cmd.Flags().StringVar(&claims.Version, "version", "", "version or build id, in the signature")
	cmd.Flags().Func("consul", "Consul address to announce the release at (https://HOST:PORT for TLS), without a lock \"consul\" block in --config",
		flagPtr(&consulConn.Address))
	cmd.Flags().Func("consul-token-file", "with --consul: file holding the ACL token (as token_file in lock \"consul\")", flagPtr(&consulConn.TokenFile))
	cmd.Flags().Func("consul-ca-file", "with --consul: CA certificate to verify Consul's TLS certificate with (as ca_file)", flagPtr(&consulConn.CAFile))
	cmd.Flags().StringVar(&consulPrefix, "consul-prefix", "dropship", "with --consul: the fleet's key prefix")
	cmd.MarkFlagRequired("to")
	return cmd
}

// publishChunks writes the chunk index of a tar archive and the chunks
// the store lacks (signed like the archive with --sign). Another kind of
// artifact has none: agents fetch it whole.
func publishChunks(ctx context.Context, g *globals, store artifact.Store, container, key, path string, priv *minisign.PrivateKey, c signature.Claims) error {
	var sign chunks.Sign
	if priv != nil {
		sign = func(p string) ([]byte, error) { return signFile(*priv, p, c) }
	}
	out, err := chunks.Publish(ctx, store, container, key, path, sign)
	if errors.Is(err, archive.ErrRefused) {
		fmt.Fprintf(g.stdout, "no chunk index: %v\n", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("publish the chunk index: %w", err)
	}
	fmt.Fprintf(g.stdout, "chunk index: %d chunks, %d new (%d bytes uploaded), tar sha256 %s\n",
		out.Chunks, out.Uploaded, out.Bytes, out.Index.Tar.SHA256)
	return nil
}

// publishSignature signs the file and uploads the signature beside where
// the artifact will be, before the artifact itself.
func publishSignature(ctx context.Context, g *globals, store artifact.Store, container, key, path string, priv minisign.PrivateKey, c signature.Claims) error {
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

// announcer is where publish announces: a Consul at --consul, made as a
// lock "consul" block's client is (the same defaults, environment, token
// and TLS files), else the fleet of --config when it is one that announces.
func announcer(cfg *agent.Config, conn consulx.Conn, prefix string) (fleet.Fleet, error) {
	if conn.Address == nil {
		if conn.TokenFile != nil || conn.CAFile != nil {
			return nil, fmt.Errorf("--consul-token-file and --consul-ca-file go with --consul ADDR (a lock \"consul\" block has its own token_file and ca_file)")
		}
	} else {
		client, err := conn.Client("")
		if err != nil {
			return nil, fmt.Errorf("--consul %q: %w", *conn.Address, err)
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

// flagPtr sets *dst to a flag's value when the flag is given.
func flagPtr(dst **string) func(string) error {
	return func(v string) error {
		*dst = &v
		return nil
	}
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
