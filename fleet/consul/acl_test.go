package consul

import (
	"os"
	"path/filepath"
	"testing"
)

// The example policies are what `dropship fleet acl-policy` prints for a
// host "web-1" running "api", and for the operators.
func TestExampleACLPoliciesAreTheGeneratedOnes(t *testing.T) {
	for file, want := range map[string]string{
		"consul-acl-agent.hcl":    AgentPolicy(DefaultPrefix, "web-1", "", []string{"api"}),
		"consul-acl-operator.hcl": OperatorPolicy(DefaultPrefix),
	} {
		path := filepath.Join("..", "..", "examples", file)
		if os.Getenv("DROPSHIP_UPDATE_EXAMPLES") != "" {
			os.WriteFile(path, []byte(want), 0o644)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s differs from the generated policy (DROPSHIP_UPDATE_EXAMPLES=1 rewrites it):\n%s", file, want)
		}
	}
}
