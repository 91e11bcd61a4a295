package consulx

import (
	"net/http"
	"net/http/httptest"
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

// A client of a Consul on this host's loopback asks for no compression
// (Consul would gzip its answers for this process to gunzip); one of a
// Consul across the network does.
func TestCompressionOnlyAcrossTheNetwork(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Accept-Encoding"))
		w.Header().Set("X-Consul-Index", "1")
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String() // 127.0.0.1:port
	c, err := Conn{Address: &addr}.Client("")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.KV().Get("k", nil); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "" {
		t.Fatalf("a client of a Consul on loopback asked for %q", got)
	}
	for addr, want := range map[string]bool{
		"127.0.0.1:8500": true, "localhost:8500": true, "http://[::1]:8500": true, "https://127.0.0.2:8501/consul": true, "[::1]": true,
		"[::1%lo]:8500": true, "localhost.:8500": true, "localhost@evil.example:8500": false,
		"consul.internal:8500": false, "https://10.0.0.5:8501": false, "192.168.1.9": false,
	} {
		if got := (Conn{Address: &addr}).Config("").Transport.DisableCompression; got != want {
			t.Errorf("%s: compression disabled %v, want %v", addr, got, want)
		}
	}
}
