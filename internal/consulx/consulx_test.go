package consulx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Keys from flags resolve and fail as a block's do: relative files against
// the base directory, over Consul's environment; an unreadable token file
// is an error naming token_file.
func TestConnOfFlags(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
	t.Setenv("CONSUL_CACERT", "")
	dir := t.TempDir()
	addr, ca, tok := "https://consul.internal:8501", "ca.pem", "token"
	c := Conn{Address: &addr, CAFile: &ca, TokenFile: &tok}
	cfg := c.Config(dir)
	if cfg.TLSConfig.CAFile != filepath.Join(dir, ca) || cfg.TokenFile != filepath.Join(dir, tok) || cfg.Address != addr {
		t.Fatalf("config %+v", cfg)
	}
	if _, err := c.Client(dir); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Fatalf("a missing token file: %v", err)
	}

	os.WriteFile(filepath.Join(dir, tok), []byte("from-the-file\n"), 0o600)
	c.CAFile = nil
	if _, err := c.Client(dir); err != nil {
		t.Fatalf("a readable token file: %v", err)
	}
	plain := Conn{Address: &addr}
	if cfg := plain.Config(dir); cfg.Token != "from-the-environment" {
		t.Fatalf("the environment's token is not the default: %q", cfg.Token)
	}
}
