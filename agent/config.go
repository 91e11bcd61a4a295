package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
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

type pluginBlock struct {
	Kind string   `hcl:"kind,label"`
	Body hcl.Body `hcl:",remain"`
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

	repos, repoKeys, d := decodeRepos(af.Repos, reg, base)
	diags = append(diags, d...)
	cfg.Repos = repos
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
	if cfg.Fleet == nil && len(af.Locks) == 0 {
		// No lock block: the host's own, lock "local" with its defaults.
		if factory, ok := reg.Fleets["local"]; ok {
			p, d := factory("local", hcl.EmptyBody(), fleet.Env{BaseDir: base, StatePath: cfg.StatePath, NodeName: cfg.NodeName})
			diags = append(diags, d...)
			cfg.Fleet, cfg.LockKind = p, "local"
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
	dests     map[string]string // destination: the service switching it
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
			// Two services switching one destination would each install
			// into, link from and roll back to what the other made.
			dest := filepath.Clean(s.Destination)
			if other, dup := d.dests[dest]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Destination of two services",
					Detail: fmt.Sprintf("service %q has destination %q, as service %q does: a destination is one service's.", b.Name, s.Destination, other), Subject: &rng})
				continue
			}
			if d.dests == nil {
				d.dests = map[string]string{}
			}
			d.dests[dest] = b.Name
			cfg.Services = append(cfg.Services, s)
		}
	}
	return diags
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
