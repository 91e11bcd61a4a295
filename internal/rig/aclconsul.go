package rig

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/consul/api"
)

// ACLConsul is a dev-mode Consul agent whose ACLs deny what no token
// allows, and its management token.
type ACLConsul struct {
	*Consul
	Root string // the management token
}

// StartACLConsul starts a Consul agent with ACLs on, denying by default.
func StartACLConsul() (*ACLConsul, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	root := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	c, err := StartConsul("-hcl", fmt.Sprintf(`acl {
  enabled        = true
  default_policy = "deny"
  tokens { initial_management = %q }
}`, root))
	if err != nil {
		return nil, err
	}
	return &ACLConsul{Consul: c, Root: root}, nil
}

// Client is a client of the agent with token ("" for none).
func (a *ACLConsul) Client(t testing.TB, token string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: a.Addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Admin is a client of the management token.
func (a *ACLConsul) Admin(t testing.TB) *api.Client {
	t.Helper()
	return a.Client(t, a.Root)
}

var (
	// notPolicyName is what a policy's name may not hold.
	notPolicyName = regexp.MustCompile(`[^A-Za-z0-9_-]`)
	policySeq     atomic.Int64
)

// Token makes a token of a new policy of rules and returns its secret.
// The policy is named name, the test's and a number new to the process:
// policy names are the agent's, which the package's tests share, and a
// test may make two tokens of one name (or run again, with -count).
func (a *ACLConsul) Token(t testing.TB, name, rules string) string {
	t.Helper()
	admin := a.Admin(t)
	name = notPolicyName.ReplaceAllString(fmt.Sprintf("%s-%s-%d", name, t.Name(), policySeq.Add(1)), "-")
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("policy %s: %v\n%s", name, err, rules)
	}
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}

// TokenClient is a client of a new token with rules (Token).
func (a *ACLConsul) TokenClient(t testing.TB, name, rules string) *api.Client {
	t.Helper()
	return a.Client(t, a.Token(t, name, rules))
}
