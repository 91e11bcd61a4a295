package agent

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/hclx"
)

type hookBlock struct {
	Kind      string   `hcl:"kind,label"`
	OnFailure *string  `hcl:"on_failure,optional"`
	Once      *string  `hcl:"once,optional"`
	Full      hcl.Body `hcl:",body"` // for the ranges of the keys above
	Body      hcl.Body `hcl:",remain"`
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
		once, ds := decodeOnce(what, b, d.fleetKind)
		diags = append(diags, ds...)
		steps = append(steps, hooks.Step{Kind: b.Kind, Hook: h, OnFailure: policy, Range: rng, Once: once})
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
