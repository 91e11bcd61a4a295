package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/webhook"
)

func TestSlackStyleAnnouncement(t *testing.T) {
	var got struct {
		method, auth string
		body         map[string]string
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.method, got.auth = r.Method, r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &got.body)
	}))
	defer srv.Close()
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
url     = "`+srv.URL+`/hook"
headers = { Authorization = "Bearer t0k" }
body    = "{\"text\": \"{{.Name}} {{.Hash}} {{.Result}} on {{.Hostname}}\"}"
`), "t.hcl")
	h, diags := webhook.Factory("http", f.Body, hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if err := h.Announce(context.Background(), hooks.Event{Name: "api", Hash: "abc", Result: "success", Hostname: "web-1"}); err != nil {
		t.Fatal(err)
	}
	if got.method != "POST" || got.auth != "Bearer t0k" || got.body["text"] != "api abc success on web-1" {
		t.Fatalf("%+v", got)
	}
}

func TestNon2xxIsAnError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }))
	defer srv.Close()
	f, _ := hclparse.NewParser().ParseHCL([]byte(`url = "`+srv.URL+`"`), "t.hcl")
	h, _ := webhook.Factory("http", f.Body, hooks.Env{})
	if err := h.Announce(context.Background(), hooks.Event{}); err == nil {
		t.Fatal("404 accepted")
	}
}
