package agent

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
)

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
	Rollout *rollout.Policy
	// Defer, when set, lets the application hold an update back.
	Defer        *Deferral
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
	// ChunkCache bounds the chunks of the current release kept for
	// deltas, in bytes; 0 turns deltas off (the archive every time).
	ChunkCache int64
	// Stage is when a release is downloaded: StageAhead (before the
	// fleet slot is taken) or StageOff (inside it).
	Stage string
	// ChunkLinks: a delta hard-links the files that did not change from
	// the current release instead of writing them (the default).
	ChunkLinks bool
}

// StageAhead says whether a release is staged before the slot is taken.
func (s *Service) StageAhead() bool { return s.Stage != StageOff }

type sharedBlock struct {
	Dirs  []string `hcl:"dirs,optional"`
	Files []string `hcl:"files,optional"`
	Body  hcl.Body `hcl:",body"`
}

type serviceFile struct {
	Services []serviceBlock `hcl:"service,block"`
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
	Defer         []deferBlock    `hcl:"defer,block"`
	RevokedKeys   []string        `hcl:"revoked_keys,optional"`
	KeepReleases  *int            `hcl:"keep_releases,optional"`
	Stage         *string         `hcl:"stage,optional"`
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
	s.Stage = StageAhead
	if b.Stage != nil {
		s.Stage = *b.Stage
		if s.Stage != StageAhead && s.Stage != StageOff {
			diags = append(diags, hclx.Errorf(b.Body, "stage", "Invalid stage",
				"stage = %q: use %q (download, verify and unpack a release before taking a fleet slot: the default) or %q (download it inside the slot, for hosts whose disk has no room for a release waiting beside the current one).",
				*b.Stage, StageAhead, StageOff))
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
	diags = append(diags, decodeDefer(s, b.Defer, hookEnv)...)
	diags = append(diags, watchDiags(s)...)
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
