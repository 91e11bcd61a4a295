package agent

import (
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/internal/hclx"
)

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
	ChunkCache     *int64   `hcl:"chunk_cache,optional"`
	ChunkLinks     *bool    `hcl:"chunk_links,optional"`
	Full           hcl.Body `hcl:",body"` // for the ranges of the keys above
	Body           hcl.Body `hcl:",remain"`
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
	s.ChunkCache = DefaultChunkCache
	s.ChunkLinks = a.ChunkLinks != nil && *a.ChunkLinks
	if a.ChunkCache != nil {
		s.ChunkCache = *a.ChunkCache
		if s.ChunkCache < 0 {
			diags = append(diags, hclx.Errorf(a.Full, "chunk_cache", "Invalid chunk_cache", "chunk_cache is a number of bytes: 0 turns deltas off."))
		}
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
