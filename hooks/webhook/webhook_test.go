package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/webhook"
)

func TestSlackStyleAnnouncement(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }))
	defer srv.Close()
	f, _ := hclparse.NewParser().ParseHCL([]byte(`url = "`+srv.URL+`"`), "t.hcl")
	h, _ := webhook.Factory("http", f.Body, hooks.Env{})
	if err := h.Announce(context.Background(), hooks.Event{}); err == nil {
		t.Fatal("404 accepted")
	}
}

// json = { … } arrives as valid JSON whatever the error holds: quotes,
// backslashes, newlines.
func TestJSONBodyEscapesTheError(t *testing.T) {
	t.Parallel()
	var raw []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ = io.ReadAll(r.Body)
	}))
	defer srv.Close()
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
url  = "`+srv.URL+`/hook"
json = {
  text    = "{{.Name}} failed on {{.Hostname}}: {{.Error}}"
  channel = "#deploys"
}
`), "t.hcl")
	h, diags := webhook.Factory("http", f.Body, hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	errText := "after hook 1 (script \"systemctl start api\"): exit 1\nJob for api.service failed: C:\\path \"quoted\""
	if err := h.Announce(context.Background(), hooks.Event{Name: "api", Hostname: "web-1", Result: "failure", Error: errText}); err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("not valid JSON: %v\n%s", err, raw)
	}
	if got["text"] != "api failed on web-1: "+errText || got["channel"] != "#deploys" {
		t.Fatalf("%q", got)
	}
}

// The URL of a webhook is its secret: errors name the host only.
//
// Not parallel: the closed server's port must stay refused, and a server
// of a test running beside it could take it.
func TestErrorsDoNotShowTheWebhookURL(t *testing.T) {
	for _, status := range []int{0, 500} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }))
		url := srv.URL
		if status == 0 {
			srv.Close() // connection refused
		} else {
			defer srv.Close()
		}
		secret := "/services/T000/B000/XXXXsecretXXXX?token=s3cr3t"
		f, _ := hclparse.NewParser().ParseHCL([]byte(`url = "`+strings.Replace(url, "http://", "http://user:pa55@", 1)+secret+`"`), "t.hcl")
		h, diags := webhook.Factory("http", f.Body, hooks.Env{})
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		err := h.Announce(context.Background(), hooks.Event{})
		if err == nil {
			t.Fatal("no error")
		}
		for _, s := range []string{"XXXXsecretXXXX", "s3cr3t", "pa55"} {
			if strings.Contains(err.Error(), s) {
				t.Fatalf("error shows %q: %v", s, err)
			}
		}
		if !strings.Contains(err.Error(), strings.TrimPrefix(url, "http://")) {
			t.Fatalf("error does not name the host: %v", err)
		}
	}
}
