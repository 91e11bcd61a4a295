package rig

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// The ACL agent denies what no token allows; a token of Token's rules
// may do what they allow and no more; a second token of the same name in
// a test, or in another run of it (-count), is no clash.
func TestACLConsulTokensHaveTheirRulesOnly(t *testing.T) {
	var s Servers
	s.need = Need{ACLConsul: true}
	t.Cleanup(s.Stop)
	a := s.ACLConsul(t)
	denied := func(c *api.Client, key string) bool {
		_, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte("v")}, nil)
		return err != nil && strings.Contains(err.Error(), "Permission denied")
	}
	if !denied(a.Client(t, ""), "mine/a") {
		t.Fatal("a client without a token wrote a key")
	}
	for range 2 {
		c := a.TokenClient(t, "mine", `key_prefix "mine/" { policy = "write" }`)
		if denied(c, "mine/a") || !denied(c, "other/a") {
			t.Fatal("the token of rules writing mine/ may not write there, or may write elsewhere")
		}
		t.Run("sub", func(t *testing.T) { a.Token(t, "mine", `key_prefix "mine/" { policy = "read" }`) })
	}
	if kv, _, err := a.Admin(t).KV().Get("mine/a", nil); err != nil || kv == nil {
		t.Fatalf("the management token does not read mine/a: %v", err)
	}
}
