package artifact

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// keys are settings of a made-up store type: its connection keys by name.
// Open fails for the key "broken".
type keys struct {
	m     map[string]string
	opens *int
}

func (k keys) Over(body hcl.Body, _ string) (Settings, hcl.Diagnostics) {
	attrs, diags := body.JustAttributes()
	m := maps.Clone(k.m)
	if m == nil {
		m = map[string]string{}
	}
	for name, a := range attrs {
		v, d := a.Expr.Value(nil)
		diags = append(diags, d...)
		if !d.HasErrors() {
			m[name] = v.AsString()
		}
	}
	return keys{m: m, opens: k.opens}, diags
}

func (k keys) Key() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(k.m)) {
		parts = append(parts, name+"="+k.m[name])
	}
	return strings.Join(parts, ",")
}

func (k keys) Open() (Store, error) {
	*k.opens++
	if _, bad := k.m["broken"]; bad {
		return nil, errors.New("cannot make a client")
	}
	return &keyStore{keys: k}, nil
}

type keyStore struct{ keys keys }

func (s *keyStore) Source(string, string) Source { return nil }
func (s *keyStore) Publish(context.Context, string, string, string, int64) (Info, error) {
	return Info{}, nil
}
func (s *keyStore) Settings() Settings { return s.keys }

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

// An artifact block uses its repo's store unless it writes keys of its
// own; blocks that come to the same keys share one store; a repo of
// another type, or a block that already has errors, makes none.
func TestStoreOfAnArtifactBlock(t *testing.T) {
	opens := 0
	none := keys{opens: &opens}
	repoStore, diags := RepoStore(body(t, `endpoint = "repo.example"`), "", none, "Test")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	other, _ := RepoStore(body(t, `endpoint = "other.example"`), "", none, "Test")
	env := Env{Repos: map[string]*Repo{
		"test":   {Name: "test", Type: "test", Store: repoStore},
		"other":  {Name: "other", Type: "elsewhere", Store: other},
		"failed": {Name: "failed", Type: "test"},
	}, Stores: &Stores{}}
	conn := func(repo *string, keys string) (Store, hcl.Diagnostics) {
		return env.Store(body(t, keys), Conn{Kind: "test", Types: []string{"test"}, Repo: repo, Keys: body(t, keys), None: none, What: "Test"}, nil)
	}
	named := func(s string) *string { return &s }
	endpoint := func(st Store) string { return st.Settings().(keys).m["endpoint"] }
	opens = 0

	if st, d := conn(nil, ""); d.HasErrors() || st != repoStore {
		t.Fatalf("no keys of its own: %v, %v; want the repo's store", st, d)
	}
	if st, d := conn(nil, `endpoint = "repo.example"`); d.HasErrors() || st != repoStore {
		t.Fatalf("the repo's own keys: %v, %v; want the repo's store", st, d)
	}
	a, d := conn(nil, `region = "eu"`)
	if d.HasErrors() || a == repoStore || endpoint(a) != "repo.example" || a.Settings().(keys).m["region"] != "eu" {
		t.Fatalf("keys over the repo's: %+v, %v", a, d)
	}
	if b, _ := conn(named("test"), `region = "eu"`); b != a {
		t.Fatal("two blocks with the same keys made two stores")
	}
	if opens != 1 {
		t.Fatalf("%d stores made, want 1", opens)
	}

	if _, d := conn(named("other"), ""); !d.HasErrors() || d[0].Summary != "Wrong repo type" {
		t.Fatalf("a repo of another type: %v", d)
	}
	if st, d := conn(named("failed"), ""); st != nil || d.HasErrors() {
		t.Fatalf("a repo that failed to load: %v, %v; want no store and no second diagnostic", st, d)
	}
	if _, d := conn(named("missing"), ""); !d.HasErrors() || d[0].Summary != "Unknown repo" {
		t.Fatalf("an unknown repo: %v", d)
	}
	if _, d := conn(nil, `broken = "yes"`); !d.HasErrors() || d[0].Summary != "Invalid Test settings" {
		t.Fatalf("keys that make no store: %v", d)
	}

	opens = 0
	prior := hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Missing path"}}
	st, d := env.Store(body(t, ""), Conn{Kind: "test", Types: []string{"test"}, Keys: body(t, `region = "us"`), None: none, What: "Test"}, prior)
	if st != nil || len(d) != 1 || opens != 0 {
		t.Fatalf("a block with errors already: %v, %v, %d stores made", st, d, opens)
	}

	env.Repos = nil
	if st, d := conn(nil, `endpoint = "own.example"`); d.HasErrors() || endpoint(st) != "own.example" {
		t.Fatalf("no repo at all: %v, %v", st, d)
	}
}
