package artifact

import (
	"context"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/internal/hclx"
)

// Store is one account on one store, decoded once from a `repo` block (or
// from the connection keys of an artifact block): it owns the client and
// its connection pool, and every Source and upload of that repo goes
// through it.
type Store interface {
	// Source is the artifact at key in container (bucket) of this store.
	Source(container, key string) Source
	// Publish uploads the file at path to container/key with its MD5 and
	// SHA-256 as metadata (in parts above partSize; 0: the store's
	// default), then stats it as agents will see it.
	Publish(ctx context.Context, container, key, path string, partSize int64) (Info, error)
	// Settings are the connection keys the store was made of: an
	// artifact block's own keys go over them.
	Settings() Settings
}

// Settings are the connection keys of one store type (a repo block's, or
// an artifact block's own), and how they make a store.
type Settings interface {
	// Over returns the settings with the keys written in body set over
	// them; relative paths in body resolve against base.
	Over(body hcl.Body, base string) (Settings, hcl.Diagnostics)
	// Key identifies the settings: blocks with equal keys share a store.
	Key() string
	// Open makes the store. Nothing is dialled.
	Open() (Store, error)
}

// RepoStore is the store of a repo block: its keys over none (the
// settings of no keys), made once for every service of the repo. what
// names the store type in errors ("S3").
func RepoStore(body hcl.Body, base string, none Settings, what string) (Store, hcl.Diagnostics) {
	s, diags := none.Over(body, base)
	if diags.HasErrors() {
		return nil, diags
	}
	st, err := s.Open()
	if err != nil {
		return nil, append(diags, invalid(body, what, err))
	}
	return st, diags
}

func invalid(body hcl.Body, what string, err error) *hcl.Diagnostic {
	rng := body.MissingItemRange()
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + what + " settings", Detail: err.Error(), Subject: &rng}
}

// Conn is how an artifact block of a store type reaches its store: the
// logic the S3 and Swift sources share.
type Conn struct {
	Kind  string   // the artifact block's kind
	Types []string // the repo types it may use
	Repo  *string  // its repo attribute
	Keys  hcl.Body // the rest of the block: connection keys of its own
	None  Settings // the settings of no keys at all, for a block without a repo
	What  string   // the store type, in errors ("S3")
}

// Store is the store of an artifact block: its repo's (see Repo), or,
// when the block writes connection keys of its own, a store of those keys
// over the repo's (or over none), shared with every block of this load
// that comes to the same keys. diags are the block's diagnostics so far:
// the returned ones add to them, and with errors among them no store is
// made.
func (env Env) Store(body hcl.Body, c Conn, diags hcl.Diagnostics) (Store, hcl.Diagnostics) {
	r, d := env.Repo(body, c.Repo, c.Kind, c.Types...)
	diags = append(diags, d...)
	base := c.None
	if r != nil && r.Store != nil {
		base = r.Store.Settings()
	}
	s, d := base.Over(c.Keys, env.BaseDir)
	diags = append(diags, d...)
	switch {
	case diags.HasErrors():
		return nil, diags
	case r != nil && r.Store == nil:
		return nil, diags // the repo block's own diagnostics say why
	case r != nil && s.Key() == base.Key():
		return r.Store, diags
	}
	st, err := env.Stores.Get(s.Key(), s.Open)
	if err != nil {
		return nil, append(diags, invalid(body, c.What, err))
	}
	return st, diags
}

// RepoFactory decodes the body of a `repo` block of type kind into its
// store. base is the directory of the file the block is written in: a
// relative path in it (ca_file) resolves against that directory, and only
// there.
type RepoFactory func(kind string, body hcl.Body, base string) (Store, hcl.Diagnostics)

// Repo is a `repo "NAME"` block of the agent file, decoded at load.
type Repo struct {
	Name  string
	Type  string
	Store Store
	Range hcl.Range
}

// Env is what a source plugin may use while decoding its block.
type Env struct {
	BaseDir string           // directory of the file the block is in
	Repos   map[string]*Repo // by name
	// Stores shares one store among artifact blocks that spell out the
	// same connection keys themselves; nil makes a store per block.
	Stores *Stores
}

// Repo returns the repo block a source of kind uses: the one its `repo`
// attribute names (named), else the one called like its kind, if any. It
// must be of one of types.
func (env Env) Repo(body hcl.Body, named *string, kind string, types ...string) (*Repo, hcl.Diagnostics) {
	name := kind
	if named != nil {
		name = *named
	}
	r, ok := env.Repos[name]
	if !ok {
		if named == nil {
			return nil, nil
		}
		return nil, hcl.Diagnostics{hclx.Errorf(body, "repo", "Unknown repo", "No repo %q is defined in the agent file.", name)}
	}
	for _, t := range types {
		if r.Type == t {
			return r, nil
		}
	}
	return nil, hcl.Diagnostics{hclx.Errorf(body, "repo", "Wrong repo type",
		"repo %q is of type %q; a %s artifact uses one of: %s.", name, r.Type, kind, strings.Join(types, ", "))}
}

// Stores remembers the stores one config load made from connection keys
// written in artifact blocks, by those keys: services that repeat the same
// keys share a client. It lives as long as the loaded config.
type Stores struct {
	mu sync.Mutex
	m  map[string]Store
}

// Get returns the store made for key, making it with mk the first time.
func (s *Stores) Get(key string, mk func() (Store, error)) (Store, error) {
	if s == nil {
		return mk()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.m[key]; ok {
		return st, nil
	}
	st, err := mk()
	if err != nil {
		return nil, err
	}
	if s.m == nil {
		s.m = map[string]Store{}
	}
	s.m[key] = st
	return st, nil
}
