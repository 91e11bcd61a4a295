package agent

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"aead.dev/minisign"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
	"github.com/dropshipd/dropship/lock/local"
)

// Defaults of the agent and service files.
const (
	DefaultConfig        = "/etc/dropship.d/dropship.hcl"
	DefaultStatePath     = "/var/lib/dropship"
	DefaultCheckInterval = 10 * time.Second
	DefaultKeepReleases  = 5
	DefaultUpdateTimeout = time.Hour
	// DefaultWatchInterval is the poll of a service whose fleet announces
	// releases (lock "consul"): the watch brings updates at once, the
	// poll only catches what a lost announcement missed.
	DefaultWatchInterval = 5 * time.Minute
)

// Registry lists the plugins a config may name, by block label. It is
// built explicitly by the command; nothing registers itself.
type Registry struct {
	Sources map[string]artifact.Factory
	Hooks   map[string]hooks.Factory // before, after and rollback chains
	// Announcers report an update's outcome; only after blocks name them.
	Announcers map[string]hooks.AnnouncerFactory
	Checks     map[string]hooks.Factory // health checks
	Fleets     map[string]fleet.Factory // by the label of the lock block
	// Repos decodes a `repo` block, by its type, into its store.
	Repos map[string]artifact.RepoFactory
}

// Config is a loaded, validated agent configuration.
type Config struct {
	File        string
	ServicePath string
	StatePath   string
	NodeName    string
	NodeTags    []string // registered in the fleet; rollout waves may name them
	StatusAddr  string
	// StatusToken, when set, lets a TCP status_addr take POSTs that carry
	// it as a bearer token; without it a TCP listener is read-only.
	StatusToken string
	Fleet       fleet.Agent // never nil: a single host without a lock block
	LockKind    string
	Repos       map[string]*artifact.Repo
	Services    []*Service
}

// Service is one configured service.
type Service struct {
	Name          string
	File          string
	CheckInterval time.Duration
	Sequential    bool
	Concurrency   int
	Hold          time.Duration
	UpdateTimeout time.Duration // from holding the slot to the commit
	// Watch: a release announced in the fleet triggers a check at once.
	Watch bool
	// Keys, when set, is who may sign releases: nothing else is installed.
	Keys *signature.Keyring
	// SharedDirs and SharedFiles are paths of every release kept in the
	// service's shared directory and linked into each release.
	SharedDirs, SharedFiles []string
	// Rollout, when set, shapes how the fleet takes a release: canary,
	// waves, bake, gates, approvals, window, fleet revert.
	Rollout      *rollout.Policy
	KeepReleases int
	Source       artifact.Source
	Destination  string
	Unpack       archive.Options
	DiskFactor   float64 // free space needed, as a multiple of the artifact size
	Before       []hooks.Step
	After        []hooks.Step
	Checks       []hooks.Step
	Rollback     []hooks.Step
	// Report holds the announcers (Graphite, webhooks, Consul events) of
	// the after blocks: they run once the update's outcome is known, with
	// {{.Result}} success, failure or rollback.
	Report []hooks.Announce
}

type agentFile struct {
	ServicePath *string        `hcl:"service_path,optional"`
	StatePath   *string        `hcl:"state_path,optional"`
	NodeName    *string        `hcl:"node_name,optional"`
	NodeTags    []string       `hcl:"node_tags,optional"`
	StatusAddr  *string        `hcl:"status_addr,optional"`
	StatusToken *string        `hcl:"status_token_file,optional"`
	Repos       []repoBlock    `hcl:"repo,block"`
	Locks       []pluginBlock  `hcl:"lock,block"`
	Services    []serviceBlock `hcl:"service,block"`
}

type sharedBlock struct {
	Dirs  []string `hcl:"dirs,optional"`
	Files []string `hcl:"files,optional"`
	Body  hcl.Body `hcl:",body"`
}

type serviceFile struct {
	Services []serviceBlock `hcl:"service,block"`
}

type repoBlock struct {
	Name        string   `hcl:"name,label"`
	Type        *string  `hcl:"type,optional"`
	TrustedKeys []string `hcl:"trusted_keys,optional"`
	RevokedKeys []string `hcl:"revoked_keys,optional"`
	Body        hcl.Body `hcl:",remain"`
}

// repoOf names the repo an artifact block uses: its repo attribute, else
// the repo named like its kind (as the source plugins choose).
func repoOf(a artifactBlock) string {
	if attrs, _ := a.Body.JustAttributes(); attrs["repo"] != nil {
		if v, d := attrs["repo"].Expr.Value(nil); !d.HasErrors() && v.Type() == cty.String && v.IsKnown() && !v.IsNull() {
			return v.AsString()
		}
	}
	return a.Kind
}

type pluginBlock struct {
	Kind string   `hcl:"kind,label"`
	Body hcl.Body `hcl:",remain"`
}

type hookBlock struct {
	Kind      string   `hcl:"kind,label"`
	OnFailure *string  `hcl:"on_failure,optional"`
	Full      hcl.Body `hcl:",body"` // for the ranges of the keys above
	Body      hcl.Body `hcl:",remain"`
}

type artifactBlock struct {
	Kind           string   `hcl:"kind,label"`
	Destination    string   `hcl:"destination"`
	ContentType    *string  `hcl:"content_type,optional"`
	MaxSize        *int64   `hcl:"max_size,optional"`
	MaxFiles       *int64   `hcl:"max_files,optional"`
	MaxRatio       *float64 `hcl:"max_ratio,optional"`
	MaxDepth       *int     `hcl:"max_depth,optional"`
	AllowSymlinks  []string `hcl:"allow_symlinks_to,optional"`
	PreserveSetuid *bool    `hcl:"preserve_setuid,optional"`
	Owner          *string  `hcl:"owner,optional"`
	Group          *string  `hcl:"group,optional"`
	FileMode       *string  `hcl:"file_mode,optional"`
	DirMode        *string  `hcl:"dir_mode,optional"`
	DiskFactor     *float64 `hcl:"disk_space_factor,optional"`
	StallTimeout   *string  `hcl:"stall_timeout,optional"`
	Full           hcl.Body `hcl:",body"` // for the ranges of the keys above
	Body           hcl.Body `hcl:",remain"`
}

type serviceBlock struct {
	Name          string          `hcl:"name,label"`
	CheckInterval *string         `hcl:"check_interval,optional"`
	OldInterval   *string         `hcl:"checkInterval,optional"`
	Sequential    *bool           `hcl:"sequential,optional"`
	OldSequential *bool           `hcl:"sequentialUpdates,optional"`
	Concurrency   *int            `hcl:"concurrency,optional"`
	Hold          *string         `hcl:"hold,optional"`
	OldTTL        *string         `hcl:"updateTTL,optional"`
	UpdateTimeout *string         `hcl:"update_timeout,optional"`
	Watch         *bool           `hcl:"watch,optional"`
	TrustedKeys   []string        `hcl:"trusted_keys,optional"`
	Shared        []sharedBlock   `hcl:"shared,block"`
	Rollout       []rolloutBlock  `hcl:"rollout,block"`
	RevokedKeys   []string        `hcl:"revoked_keys,optional"`
	KeepReleases  *int            `hcl:"keep_releases,optional"`
	Artifacts     []artifactBlock `hcl:"artifact,block"`
	Before        []hookBlock     `hcl:"before,block"`
	After         []hookBlock     `hcl:"after,block"`
	Checks        []hookBlock     `hcl:"check,block"`
	Rollback      []hookBlock     `hcl:"rollback,block"`
	Body          hcl.Body        `hcl:",body"`
}

var legacyService = map[string]string{
	"checkInterval":     "check_interval",
	"sequentialUpdates": "sequential",
	"updateTTL":         "hold",
}

// Load reads the agent file at path and every *.hcl file of its
// service_path. It returns every diagnostic found, not just the first.
func Load(path string, reg Registry, logger *slog.Logger) (*Config, hcl.Diagnostics) {
	if logger == nil {
		logger = slog.Default()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	parser := hclparse.NewParser()
	f, diags := parser.ParseHCLFile(abs)
	if diags.HasErrors() {
		return nil, diags
	}
	// Decoding goes on after errors: gohcl fills what it can, so one run
	// reports every problem, not the first.
	var af agentFile
	diags = append(diags, gohcl.DecodeBody(f.Body, nil, &af)...)
	base := filepath.Dir(abs)
	cfg := &Config{File: abs, StatePath: DefaultStatePath}
	if af.StatePath != nil {
		cfg.StatePath = hclx.Path(base, *af.StatePath)
	}
	if af.ServicePath != nil {
		cfg.ServicePath = hclx.Path(base, *af.ServicePath)
	}
	if af.StatusAddr != nil {
		cfg.StatusAddr = *af.StatusAddr
	}
	if af.StatusToken != nil {
		b, err := os.ReadFile(hclx.Path(base, *af.StatusToken))
		tok := strings.TrimSpace(string(b))
		switch {
		case err != nil:
			diags = append(diags, hclx.Errorf(f.Body, "status_token_file", "Unreadable status_token_file", "%v", err))
		case len(tok) < 16:
			diags = append(diags, hclx.Errorf(f.Body, "status_token_file", "Weak status token",
				"the token in %s is %d characters; use at least 16 (say, `openssl rand -hex 32`).", *af.StatusToken, len(tok)))
		default:
			cfg.StatusToken = tok
		}
	}
	cfg.NodeName, _ = os.Hostname()
	if af.NodeName != nil && *af.NodeName != "" {
		cfg.NodeName = *af.NodeName
	}
	for _, tag := range af.NodeTags {
		if tag == "" || strings.ContainsAny(tag, " ,:/") {
			diags = append(diags, hclx.Errorf(f.Body, "node_tags", "Invalid node tag",
				"%q: a tag is a word (letters, digits, - and _), like \"canary\" or \"eu\".", tag))
		}
	}
	cfg.NodeTags = af.NodeTags

	repos := map[string]*artifact.Repo{}
	repoKeys := map[string]keyLists{}
	for _, r := range af.Repos {
		kind := r.Name
		if r.Type != nil {
			kind = *r.Type
		}
		rng := r.Body.MissingItemRange()
		if prev, dup := repos[r.Name]; dup {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate repo",
				Detail: fmt.Sprintf("repo %q is already defined at %s:%d.", r.Name, prev.Range.Filename, prev.Range.Start.Line), Subject: &rng})
			continue
		}
		factory, ok := reg.Repos[kind]
		if !ok {
			diags = append(diags, unknown("repo", kind, keys(reg.Repos), rng))
			continue
		}
		// Decoded once, here: relative paths resolve against this file's
		// directory, and every service of the repo shares its store.
		store, d := factory(kind, r.Body, base)
		diags = append(diags, d...)
		repos[r.Name] = &artifact.Repo{Name: r.Name, Type: kind, Store: store, Range: rng}
		k, d := parseKeys(r.Body, r.TrustedKeys, r.RevokedKeys, base)
		diags = append(diags, d...)
		repoKeys[r.Name] = k
	}

	cfg.Repos = repos
	cfg.Fleet, cfg.LockKind = local.Fleet{Dir: cfg.StatePath}, "local"
	for i, l := range af.Locks {
		rng := l.Body.MissingItemRange()
		if i > 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate lock block",
				Detail: "Only one lock block may be given.", Subject: &rng})
			continue
		}
		factory, ok := reg.Fleets[l.Kind]
		if !ok {
			diags = append(diags, unknown("lock", l.Kind, keys(reg.Fleets), rng))
			continue
		}
		p, d := factory(l.Kind, l.Body, fleet.Env{BaseDir: base, StatePath: cfg.StatePath, NodeName: cfg.NodeName})
		diags = append(diags, d...)
		if p != nil {
			cfg.Fleet, cfg.LockKind = p, l.Kind
		}
	}

	_, watchable := cfg.Fleet.(fleet.Watcher)
	dec := decoder{watchable: watchable, fleetKind: cfg.LockKind, reg: reg, repos: repos, repoKeys: repoKeys, stores: &artifact.Stores{}, logger: logger, seen: map[string]hcl.Range{}}
	diags = append(diags, dec.services(cfg, abs, af.Services)...)
	if cfg.ServicePath != "" {
		files, err := filepath.Glob(filepath.Join(cfg.ServicePath, "*.hcl"))
		if err == nil {
			if _, serr := os.Stat(cfg.ServicePath); serr != nil && !os.IsNotExist(serr) {
				err = serr
			}
		}
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read service_path",
				Detail: err.Error(), Subject: hclx.AttrRange(f.Body, "service_path")})
		}
		sort.Strings(files)
		for _, file := range files {
			sf, d := parser.ParseHCLFile(file)
			diags = append(diags, d...)
			if d.HasErrors() {
				continue
			}
			var body serviceFile
			diags = append(diags, gohcl.DecodeBody(sf.Body, nil, &body)...)
			diags = append(diags, dec.services(cfg, file, body.Services)...)
		}
	}
	return cfg, diags
}

type decoder struct {
	// watchable: the fleet announces releases (lock "consul").
	watchable bool
	fleetKind string // the lock block's kind
	reg       Registry
	repos     map[string]*artifact.Repo
	repoKeys  map[string]keyLists // trusted and revoked keys of repo blocks
	stores    *artifact.Stores
	logger    *slog.Logger
	seen      map[string]hcl.Range
}

func (d *decoder) services(cfg *Config, file string, blocks []serviceBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, b := range blocks {
		rng := b.Body.MissingItemRange()
		if prev, dup := d.seen[b.Name]; dup {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate service",
				Detail: fmt.Sprintf("service %q is already defined at %s:%d.", b.Name, prev.Filename, prev.Start.Line), Subject: &rng})
			continue
		}
		d.seen[b.Name] = rng
		s, ds := d.service(file, b)
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			cfg.Services = append(cfg.Services, s)
		}
	}
	return diags
}

func (d *decoder) service(file string, b serviceBlock) (*Service, hcl.Diagnostics) {
	base := filepath.Dir(file)
	rng := b.Body.MissingItemRange()
	diags := hclx.Legacy(b.Body, legacyService)
	if !validName(b.Name) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid service name",
			Detail: fmt.Sprintf("%q: use letters, digits, '.', '_' and '-' only, not starting with '_' (it names a directory and Consul keys).", b.Name), Subject: &rng})
	}
	s := &Service{Name: b.Name, File: file, Concurrency: 1, KeepReleases: DefaultKeepReleases, DiskFactor: 2,
		UpdateTimeout: DefaultUpdateTimeout}
	var ds hcl.Diagnostics
	interval := hclx.First(b.CheckInterval, b.OldInterval)
	name := "check_interval"
	if b.CheckInterval == nil {
		name = "checkInterval"
	}
	s.Watch = d.watchable && (b.Watch == nil || *b.Watch)
	defInterval := DefaultCheckInterval
	if s.Watch {
		defInterval = DefaultWatchInterval
	}
	s.CheckInterval, ds = hclx.Duration(b.Body, name, hclx.Str(interval), defInterval)
	diags = append(diags, ds...)
	if s.CheckInterval <= 0 && interval != nil {
		diags = append(diags, hclx.Errorf(b.Body, name, "Invalid duration", "%s must be more than zero.", name))
	}
	hold := hclx.First(b.Hold, b.OldTTL)
	name = "hold"
	if b.Hold == nil {
		name = "updateTTL"
	}
	s.Hold, ds = hclx.Duration(b.Body, name, hclx.Str(hold), 0)
	diags = append(diags, ds...)
	s.UpdateTimeout, ds = hclx.Duration(b.Body, "update_timeout", hclx.Str(b.UpdateTimeout), DefaultUpdateTimeout)
	diags = append(diags, ds...)
	if s.UpdateTimeout <= 0 && b.UpdateTimeout != nil {
		diags = append(diags, hclx.Errorf(b.Body, "update_timeout", "Invalid duration", "update_timeout must be more than zero."))
	}
	svcKeys, dk := parseKeys(b.Body, b.TrustedKeys, b.RevokedKeys, base)
	diags = append(diags, dk...)
	diags = append(diags, decodeShared(s, b)...)
	diags = append(diags, decodeRollout(s, b.Rollout, d.fleetKind)...)
	if v := hclx.First(b.Sequential, b.OldSequential); v != nil {
		s.Sequential = *v
	}
	if b.Concurrency != nil {
		s.Concurrency = *b.Concurrency
		if s.Concurrency < 1 {
			diags = append(diags, hclx.Errorf(b.Body, "concurrency", "Invalid concurrency", "concurrency must be 1 or more."))
		}
	}
	if b.KeepReleases != nil {
		s.KeepReleases = *b.KeepReleases
		if s.KeepReleases < 2 {
			diags = append(diags, hclx.Errorf(b.Body, "keep_releases", "Invalid keep_releases",
				"keep_releases must be 2 or more: the current release and one to roll back to."))
		}
	}

	switch len(b.Artifacts) {
	case 0:
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing artifact block",
			Detail: fmt.Sprintf("service %q needs an artifact block saying where its releases come from.", b.Name), Subject: &rng})
	case 1:
		diags = append(diags, d.artifact(s, base, b.Artifacts[0])...)
		var dk hcl.Diagnostics
		s.Keys, dk = keyring(svcKeys, d.repoKeys[repoOf(b.Artifacts[0])])
		diags = append(diags, dk...)
	default:
		r := b.Artifacts[1].Body.MissingItemRange()
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate artifact block",
			Detail: "A service has exactly one artifact.", Subject: &r})
	}

	hookEnv := hooks.Env{BaseDir: base, Logger: d.logger.With("service", b.Name)}
	for _, c := range []struct {
		what   string
		reg    map[string]hooks.Factory
		blocks []hookBlock
		dst    *[]hooks.Step
	}{
		{"before", d.reg.Hooks, b.Before, &s.Before},
		{"after", d.reg.Hooks, b.After, &s.After},
		{"check", d.reg.Checks, b.Checks, &s.Checks},
		{"rollback", d.reg.Hooks, b.Rollback, &s.Rollback},
	} {
		var dd hcl.Diagnostics
		*c.dst, dd = d.chain(c.reg, c.what, c.blocks, hookEnv, s)
		diags = append(diags, dd...)
	}
	return s, diags
}

// decodeShared reads the shared block: relative, clean paths inside the
// release, each named once.
func decodeShared(s *Service, b serviceBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if len(b.Shared) > 1 {
		r := b.Shared[1].Body.MissingItemRange()
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Duplicate shared block", Detail: "A service has one shared block.", Subject: &r}}
	}
	seen := map[string]bool{}
	for _, sb := range b.Shared {
		for _, list := range []struct {
			key   string
			paths []string
			dst   *[]string
		}{{"dirs", sb.Dirs, &s.SharedDirs}, {"files", sb.Files, &s.SharedFiles}} {
			for _, p := range list.paths {
				c := filepath.Clean(p)
				if p == "" || filepath.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
					diags = append(diags, hclx.Errorf(sb.Body, list.key, "Invalid shared path",
						"%q: a shared path is relative to the release and stays inside it (like \"log\" or \"config/secrets.yml\").", p))
					continue
				}
				if seen[c] {
					diags = append(diags, hclx.Errorf(sb.Body, list.key, "Duplicate shared path", "%q is listed twice.", p))
					continue
				}
				seen[c] = true
				*list.dst = append(*list.dst, c)
			}
		}
	}
	// One inside another could never be linked: the outer one is a link
	// out of the release by then.
	all := append(append([]string{}, s.SharedDirs...), s.SharedFiles...)
	for _, p := range all {
		for _, q := range all {
			if strings.HasPrefix(p, q+"/") {
				diags = append(diags, hclx.Errorf(b.Shared[0].Body, "dirs", "Nested shared paths",
					"%q is inside the shared %q: each shared path is linked whole, so list only the outer one.", p, q))
			}
		}
	}
	return diags
}

// decodeKeys reads trusted_keys and revoked_keys: minisign public keys,
// as their base64 ("RWQ…") or the path of a .pub file.
func parseKeys(body hcl.Body, trusted, revoked []string, base string) (keyLists, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	parse := func(name string, vals []string) []minisign.PublicKey {
		var out []minisign.PublicKey
		for _, v := range vals {
			pk, err := signature.ParseKey(v, base)
			if err != nil {
				diags = append(diags, hclx.Errorf(body, name, "Invalid key", "%s: %v", name, err))
				continue
			}
			out = append(out, pk)
		}
		return out
	}
	k := keyLists{trusted: parse("trusted_keys", trusted), revoked: parse("revoked_keys", revoked), set: trusted != nil, body: body}
	if trusted != nil && len(trusted) == 0 {
		diags = append(diags, hclx.Errorf(body, "trusted_keys", "Invalid key",
			"trusted_keys is empty: list the keys that may sign releases, or leave it out to install unsigned ones."))
	}
	return k, diags
}

// keyLists are the keys a repo or service block names.
type keyLists struct {
	trusted, revoked []minisign.PublicKey
	set              bool // trusted_keys written (a service's replaces its repo's)
	body             hcl.Body
}

// keyring combines a service's keys with its repo's: the service's
// trusted_keys replace the repo's, revoked keys of both are refused.
func keyring(svc, repo keyLists) (*signature.Keyring, hcl.Diagnostics) {
	trusted := repo.trusted
	if svc.set {
		trusted = svc.trusted
	}
	revoked := append(append([]minisign.PublicKey{}, repo.revoked...), svc.revoked...)
	if len(trusted) == 0 {
		if len(svc.revoked) > 0 {
			return nil, hcl.Diagnostics{hclx.Errorf(svc.body, "revoked_keys", "Revoked keys without trusted keys",
				"revoked_keys only narrows trusted_keys: without trusted_keys (here or on the repo), releases are not checked at all.")}
		}
		return nil, nil
	}
	return signature.NewKeyring(trusted, revoked), nil
}

func (d *decoder) artifact(s *Service, base string, a artifactBlock) hcl.Diagnostics {
	rng := a.Body.MissingItemRange()
	factory, ok := d.reg.Sources[a.Kind]
	if !ok {
		return hcl.Diagnostics{unknown("artifact", a.Kind, keys(d.reg.Sources), rng)}
	}
	src, diags := factory(a.Kind, a.Body, artifact.Env{BaseDir: base, Repos: d.repos, Stores: d.stores})
	policy := artifact.DefaultPolicy
	stall, ds := hclx.Duration(a.Full, "stall_timeout", hclx.Str(a.StallTimeout), artifact.DefaultStall)
	diags = append(diags, ds...)
	if stall > 0 {
		policy.Stall = stall
	}
	if src != nil {
		// Every source a service gets is retried by the one policy.
		s.Source = artifact.Retry(src, policy, d.logger.With("service", s.Name))
	}
	diags = append(diags, hclx.Required(a.Full, "destination", a.Destination)...)
	s.Destination = hclx.Path(base, a.Destination)
	o := archive.Options{UID: -1, GID: -1}
	if a.ContentType != nil {
		f, err := archive.FromContentType(*a.ContentType)
		if err != nil {
			diags = append(diags, hclx.Errorf(a.Full, "content_type", "Invalid content_type", "%v", err))
		}
		o.Format = f
	}
	if a.MaxSize != nil {
		o.MaxSize = *a.MaxSize
	}
	if a.MaxFiles != nil {
		o.MaxFiles = *a.MaxFiles
	}
	if a.MaxRatio != nil {
		o.MaxRatio = *a.MaxRatio
	}
	for _, p := range a.AllowSymlinks {
		if !filepath.IsAbs(p) {
			diags = append(diags, hclx.Errorf(a.Full, "allow_symlinks_to", "Invalid allow_symlinks_to",
				"%q is not an absolute directory: links are allowed into absolute directories (\"/\" for anywhere).", p))
		}
	}
	o.AllowSymlinksTo = a.AllowSymlinks
	if a.MaxDepth != nil {
		o.MaxDepth = *a.MaxDepth
		if o.MaxDepth < 1 {
			diags = append(diags, hclx.Errorf(a.Full, "max_depth", "Invalid max_depth", "max_depth must be 1 or more."))
		}
	}
	if a.PreserveSetuid != nil {
		o.PreserveSetuid = *a.PreserveSetuid
	}
	if a.DiskFactor != nil {
		s.DiskFactor = *a.DiskFactor
	}
	for _, m := range []struct {
		name string
		val  *string
		dst  *fs.FileMode
	}{{"file_mode", a.FileMode, &o.FileMode}, {"dir_mode", a.DirMode, &o.DirMode}} {
		if m.val == nil {
			continue
		}
		var v uint32
		if _, err := fmt.Sscanf(*m.val, "%o", &v); err != nil || v > 0o7777 || v == 0 {
			diags = append(diags, hclx.Errorf(a.Full, m.name, "Invalid mode", "%s = %q is not an octal mode like \"0644\".", m.name, *m.val))
			continue
		}
		*m.dst = fs.FileMode(v & 0o777)
		if v&0o4000 != 0 {
			*m.dst |= fs.ModeSetuid
		}
		if v&0o2000 != 0 {
			*m.dst |= fs.ModeSetgid
		}
		if v&0o1000 != 0 {
			*m.dst |= fs.ModeSticky
		}
	}
	if a.Owner != nil {
		uid, err := lookupID(*a.Owner, true)
		if err != nil {
			diags = append(diags, hclx.Errorf(a.Full, "owner", "Unknown owner", "%v", err))
		}
		o.UID = uid
	}
	if a.Group != nil {
		gid, err := lookupID(*a.Group, false)
		if err != nil {
			diags = append(diags, hclx.Errorf(a.Full, "group", "Unknown group", "%v", err))
		}
		o.GID = gid
	}
	s.Unpack = o
	return diags
}

// policies are the on_failure values each chain accepts, its default first.
var policies = map[string][]hooks.Policy{
	// Nothing is switched yet: a failure stops the update, or is ignored.
	"before": {hooks.Abort, hooks.Continue},
	// The new release is current: a failure rolls it back, or is ignored.
	"after": {hooks.Rollback, hooks.Continue},
	"check": {hooks.Rollback, hooks.Continue},
	// Already going back: a failure skips the rest of the chain, or not.
	"rollback": {hooks.Continue, hooks.Abort},
}

// chain decodes the blocks of one chain. Announcers named in an after
// block go to s.Report; anywhere else they are an error, since they
// cannot gate anything.
func (d *decoder) chain(reg map[string]hooks.Factory, what string, blocks []hookBlock, env hooks.Env, s *Service) ([]hooks.Step, hcl.Diagnostics) {
	var steps []hooks.Step
	var diags hcl.Diagnostics
	allowed := policies[what]
	for _, b := range blocks {
		rng := b.Body.MissingItemRange()
		factory, ok := reg[b.Kind]
		if !ok {
			if af, isAnnouncer := d.reg.Announcers[b.Kind]; isAnnouncer {
				diags = append(diags, d.announcer(af, what, b, env, s)...)
				continue
			}
			known := keys(reg)
			if what == "after" {
				known = append(known, keys(d.reg.Announcers)...)
				sort.Strings(known)
			}
			diags = append(diags, unknown(what, b.Kind, known, rng))
			continue
		}
		h, ds := factory(b.Kind, b.Body, env)
		diags = append(diags, ds...)
		if ds.HasErrors() || h == nil {
			continue
		}
		policy := allowed[0]
		if b.OnFailure != nil {
			policy = hooks.Policy(*b.OnFailure)
			if !slices.Contains(allowed, policy) {
				diags = append(diags, hclx.Errorf(b.Full, "on_failure", "Invalid on_failure",
					"on_failure = %q has no meaning in %s block: use %s. %s", *b.OnFailure, article(what), quoteList(allowed), policyWhy[what]))
				continue
			}
		}
		steps = append(steps, hooks.Step{Kind: b.Kind, Hook: h, OnFailure: policy, Range: rng})
	}
	return steps, diags
}

var policyWhy = map[string]string{
	"before":   "Nothing is switched yet, so there is nothing to roll back.",
	"after":    "The new release is already current: a failure rolls it back (rollback) or is ignored (continue).",
	"check":    "The new release is already current: a failure rolls it back (rollback) or is ignored (continue).",
	"rollback": "A failure in the rollback chain skips its remaining hooks (abort) or not (continue).",
}

// announcer decodes an announcer block: only in an after block, where it
// reports the outcome; it never fails an update, so on_failure can only
// say "continue".
func (d *decoder) announcer(f hooks.AnnouncerFactory, what string, b hookBlock, env hooks.Env, s *Service) hcl.Diagnostics {
	rng := b.Body.MissingItemRange()
	if what != "after" {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Reporting hook in " + article(what) + " block",
			Detail:  fmt.Sprintf("%q reports how an update ended and cannot stop one: put it in an after block, where it runs once the outcome is known.", b.Kind),
			Subject: &rng}}
	}
	if b.OnFailure != nil && hooks.Policy(*b.OnFailure) != hooks.Continue {
		return hcl.Diagnostics{hclx.Errorf(b.Full, "on_failure", "Invalid on_failure",
			"on_failure = %q has no meaning for %q: a reporting hook never fails or rolls back an update (its failure is logged).", *b.OnFailure, b.Kind)}
	}
	a, diags := f(b.Kind, b.Body, env)
	if !diags.HasErrors() && a != nil {
		s.Report = append(s.Report, hooks.Announce{Kind: b.Kind, Announcer: a, Range: rng})
	}
	return diags
}

func article(what string) string {
	if strings.ContainsRune("aeiou", rune(what[0])) {
		return "an " + what
	}
	return "a " + what
}

func quoteList(ps []hooks.Policy) string {
	q := make([]string, len(ps))
	for i, p := range ps {
		q[i] = fmt.Sprintf("%q", p)
	}
	return strings.Join(q, " or ")
}

func unknown(what, kind string, known []string, rng hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf("Unknown %s type", what),
		Detail:  fmt.Sprintf("%s %q is not a known type; known: %s.", what, kind, strings.Join(known, ", ")),
		Subject: &rng}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func validName(n string) bool {
	// A leading "_" is kept for the fleet's own folders in Consul.
	if n == "" || n == "." || n == ".." || len(n) > 128 || n[0] == '_' {
		return false
	}
	for _, r := range n {
		if !(r == '-' || r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
