package agent

import (
	"fmt"

	"aead.dev/minisign"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/internal/hclx"
)

type repoBlock struct {
	Name        string   `hcl:"name,label"`
	Type        *string  `hcl:"type,optional"`
	TrustedKeys []string `hcl:"trusted_keys,optional"`
	RevokedKeys []string `hcl:"revoked_keys,optional"`
	Body        hcl.Body `hcl:",remain"`
}

// decodeRepos makes the store of each repo block, once, with base the
// directory of the agent file, and reads the keys each trusts.
func decodeRepos(blocks []repoBlock, reg Registry, base string) (map[string]*artifact.Repo, map[string]keyLists, hcl.Diagnostics) {
	repos := map[string]*artifact.Repo{}
	repoKeys := map[string]keyLists{}
	var diags hcl.Diagnostics
	for _, r := range blocks {
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
	return repos, repoKeys, diags
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
