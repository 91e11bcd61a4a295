package dashboard

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

//go:embed assets
var assets embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"short": short,
	// A name in a link is one path segment, whatever it holds ("?",
	// "#", "%"): services are folders anyone with write access can name.
	"pathEscape": url.PathEscape,
	"plural":     plural,
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"resultText": func(r string) string {
		if r == "rolledback" {
			return "rolled back"
		}
		return r
	},
	"stateClass": func(s string) string { return strings.ReplaceAll(s, " ", "-") },
	"cardOf": func(root string, s any) cardView {
		if p, ok := s.(*Service); ok {
			return cardView{root, *p}
		}
		return cardView{root, s.(Service)}
	},
}).ParseFS(assets, "assets/*.html"))

// Handler serves
//
//	GET  /                              the overview
//	GET  /services/NAME                 a service with its hosts and history
//	GET  /events[?service=NAME]         Server-Sent Events: the page's live part
//	GET  /api/v1/fleet                  JSON: every service
//	GET  /api/v1/services/NAME          JSON: one service with its events
//	POST /api/v1/services/NAME/hold     {"reason": "…"}      (actions only)
//	POST /api/v1/services/NAME/resume                        (actions only)
//	POST /api/v1/services/NAME/clear    {"checksum": "…"}    (actions only)
//	POST /api/v1/services/NAME/approve  {"wave": "…", "checksum": "…"?} (actions only)
//	POST /api/v1/services/NAME/freeze   {"reason": "…"}      (actions only)
//	POST /api/v1/services/NAME/unfreeze                      (actions only)
//
// Every link is relative, so it runs under any path of a reverse proxy.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /services/{name}", s.servicePage)
	mux.HandleFunc("GET /events", s.sse)
	mux.HandleFunc("GET /api/v1/fleet", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Snapshot()) })
	mux.HandleFunc("GET /api/v1/services/{name}", s.serviceJSON)
	mux.HandleFunc("POST /api/v1/services/{name}/{action}", s.act)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if f := s.Snapshot(); f.Error != "" {
			http.Error(w, f.Error, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return headers(s.readers(mux))
}

// readers lets through only the holders of a read or action token, when
// read tokens are configured: the pages show hook output and where
// operators act from. /healthz and the static assets stay open, for load
// balancers and the login prompt's page.
func (s *Server) readers(h http.Handler) http.Handler {
	if len(s.readTokens) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || strings.HasPrefix(r.URL.Path, "/static/") {
			h.ServeHTTP(w, r)
			return
		}
		if _, ok := s.reader(r); !ok {
			// Basic, so that a browser asks for it (the token as the
			// password) and sends it with the event stream too.
			w.Header().Set("WWW-Authenticate", `Basic realm="dropship fleet", charset="UTF-8"`)
			http.Error(w, "this dashboard needs a read token: Authorization: Bearer TOKEN, or any user name with the token as password", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// HTTPServer returns the server that serves h with the time limits a
// dashboard on a shared network needs: a client that sends its request
// slowly, or keeps an idle connection, is let go. The event stream sets
// its own write deadline on each write.
func HTTPServer(h http.Handler, idle time.Duration) *http.Server {
	if idle <= 0 {
		idle = 2 * time.Minute
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: idle, MaxHeaderBytes: 64 << 10}
}

// headers: nothing inline runs, nothing frames the page, nothing leaks.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'")
		w.Header().Set("X-Frame-Options", "DENY") // browsers that know no frame-ancestors
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// cardView is one service's card, with the way back to the root.
type cardView struct {
	Root string
	Service
}

// view is what a page template gets.
type view struct {
	Root    string // relative path to the root: "" or "../"
	Fleet   *Fleet
	Service *Service // the service page
	Events  []fleet.Event
	Actions bool
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	s.render(w, "overview.html", view{Fleet: s.Snapshot(), Actions: s.actor != nil})
}

func (s *Server) serviceView(name string) (view, bool) {
	f := s.Snapshot()
	svc, ok := f.service(name)
	return view{Root: "../", Fleet: f, Service: &svc, Events: s.Events(name), Actions: s.actor != nil}, ok
}

func (s *Server) servicePage(w http.ResponseWriter, r *http.Request) {
	v, ok := s.serviceView(r.PathValue("name"))
	if !ok {
		http.Error(w, fmt.Sprintf("no service %q in the fleet", r.PathValue("name")), http.StatusNotFound)
		return
	}
	s.render(w, "service.html", v)
}

func (s *Server) render(w http.ResponseWriter, name string, v view) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, v); err != nil {
		s.log.Error("render", "page", name, "error", err)
		http.Error(w, "could not render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b.Bytes())
}

func (s *Server) serviceJSON(w http.ResponseWriter, r *http.Request) {
	v, ok := s.serviceView(r.PathValue("name"))
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no service %q in the fleet", r.PathValue("name"))})
		return
	}
	svc := *v.Service
	svc.Events = v.Events
	if svc.Events == nil {
		svc.Events = []fleet.Event{}
	}
	writeJSON(w, http.StatusOK, svc)
}

// sse streams the live part of a page, re-rendered on the server after
// each change, as `event: update`. The first comes at once, so a client
// that reconnects is current.
func (s *Server) sse(w http.ResponseWriter, r *http.Request) {
	client := s.client(r)
	if !s.openStream(client) {
		w.Header().Set("Retry-After", "30")
		http.Error(w, fmt.Sprintf("too many open event streams from you (at most %d): close a tab, or reload later", s.perMax), http.StatusTooManyRequests)
		return
	}
	defer s.closeStream(client)
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		w.Header().Set("Retry-After", "30")
		http.Error(w, "too many open event streams: reload later", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	// A client that stops reading fills the buffers and blocks the
	// write: the deadline ends it (and frees its stream).
	deadline := func() { rc.SetWriteDeadline(time.Now().Add(s.writeMax)) }
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	name := r.URL.Query().Get("service")
	ch, cancel := s.subscribe()
	defer cancel()
	ping := time.NewTicker(25 * time.Second) // keeps proxies from closing an idle stream
	defer ping.Stop()
	var last *Fleet
	send := func() error {
		f := s.Snapshot()
		if f == last {
			return nil
		}
		last = f
		var b bytes.Buffer
		var err error
		if name == "" {
			err = pages.ExecuteTemplate(&b, "live-overview", view{Fleet: f, Actions: s.actor != nil})
		} else {
			v, _ := s.serviceView(name)
			err = pages.ExecuteTemplate(&b, "live-service", v)
		}
		if err != nil {
			return err
		}
		bw := bufio.NewWriter(w)
		fmt.Fprintf(bw, "event: update\nid: %d\n", f.Index)
		// An EventSource ends a line at CR as well as LF: a CR in a
		// host's record would end the data early and let the host write
		// fields and events of its own. HTML reads CR as LF anyway.
		for line := range strings.SplitSeq(lineEnds.Replace(b.String()), "\n") {
			fmt.Fprintf(bw, "data: %s\n", line)
		}
		bw.WriteString("\n")
		deadline()
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	if err := send(); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ch:
			last = nil // the events may have moved without a new snapshot
			if send() != nil {
				return
			}
		case <-ping.C:
			deadline()
			if _, err := io.WriteString(w, ": ping\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

// client names who opened a stream: the identity of its token, else its
// address (without the port: one browser opens many connections).
func (s *Server) client(r *http.Request) string {
	if who, ok := s.reader(r); ok && who != "" {
		return "token " + who
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "addr " + host
}

func (s *Server) openStream(client string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perOpen[client] >= s.perMax {
		return false
	}
	s.perOpen[client]++
	return true
}

func (s *Server) closeStream(client string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perOpen[client]--; s.perOpen[client] <= 0 {
		delete(s.perOpen, client)
	}
}

// lineEnds turns every line end an EventSource knows into LF.
var lineEnds = strings.NewReplacer("\r\n", "\n", "\r", "\n")

// act runs hold, resume or clear for the bearer of a known token.
func (s *Server) act(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	if s.actor == nil {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "actions are disabled: this dashboard is read-only (start it with --allow-actions and --token-file)"})
		return
	}
	identity, ok := s.identity(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="dropship"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token is required (Authorization: Bearer TOKEN)"})
		return
	}
	var body struct {
		Reason   string `json:"reason"`
		Checksum string `json:"checksum"`
		Wave     string `json:"wave"`
	}
	if r.ContentLength != 0 {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "send the body as application/json"})
			return
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "read the request: " + err.Error()})
			return
		}
	}
	svc, known := s.Snapshot().service(name)
	if !known {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no service %q in the fleet", name)})
		return
	}
	ctx := r.Context()
	ev := fleet.Event{Who: identity, Via: "dashboard", From: r.RemoteAddr}
	var err error
	switch action {
	case "hold":
		if strings.TrimSpace(body.Reason) == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "a hold needs a reason: say why, for whoever finds it"})
			return
		}
		ev.Kind, ev.Detail = fleet.EventHold, body.Reason
		err = s.actor.Hold(ctx, name, fleet.Hold{Reason: body.Reason, Who: identity + " (dashboard)"})
	case "resume":
		ev.Kind = fleet.EventResume
		err = s.actor.Resume(ctx, name)
	case "clear":
		if body.Checksum == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "clear needs the checksum whose breaker to lift"})
			return
		}
		ev.Kind, ev.Checksum = fleet.EventClear, body.Checksum
		var found bool
		found, err = s.actor.Clear(ctx, name, body.Checksum)
		if err == nil && !found {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("%s: no breaker for checksum %s", name, body.Checksum)})
			return
		}
	case "approve":
		// The checksum the operator saw, never the one rolling out at the
		// time of the click: a publish in between is not approved.
		sum := body.Checksum
		if sum == "" || strings.TrimSpace(body.Wave) == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "approve needs the wave and the checksum of the release approved"})
			return
		}
		if sum != svc.RolloutOf {
			writeJSON(w, http.StatusConflict, map[string]string{"error": fmt.Sprintf("%s is not the release rolling out (%s): reload and look again", sum, svc.RolloutOf)})
			return
		}
		// Only a wave the page showed: any other name would be written as
		// an approval no host ever reads.
		var names []string
		for _, wv := range svc.Waves {
			names = append(names, wv.Name)
		}
		if !slices.Contains(names, body.Wave) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("%s has no wave %.40q (its waves: %s)", name, body.Wave, strings.Join(names, ", "))})
			return
		}
		ev.Kind, ev.Checksum, ev.Detail = fleet.EventApprove, sum, "wave "+body.Wave
		err = s.actor.Approve(ctx, name, fleet.Approval{Checksum: sum, Wave: body.Wave, Who: identity + " (dashboard)"})
	case "freeze":
		if strings.TrimSpace(body.Reason) == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "a freeze needs a reason: say why, for whoever finds it"})
			return
		}
		ev.Kind, ev.Detail = fleet.EventFreeze, fleet.Clip(body.Reason)
		err = s.actor.SetFreeze(ctx, name, &fleet.Freeze{Reason: fleet.Clip(body.Reason), Who: identity + " (dashboard)"})
	case "unfreeze":
		ev.Kind = fleet.EventUnfreeze
		err = s.actor.SetFreeze(ctx, name, nil)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no action %q (hold, resume, clear, approve, freeze, unfreeze)", action)})
		return
	}
	if err != nil {
		s.log.Error("dashboard action failed", "service", name, "action", action, "who", identity, "error", err)
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": fmt.Sprintf("%s %s: %v", action, name, err)})
		return
	}
	s.log.Info("dashboard action", "service", name, "action", action, "who", identity, "from", r.RemoteAddr)
	if err := s.actor.Record(ctx, name, ev); err != nil {
		s.log.Error("could not write the action to the audit log", "service", name, "action", action, "error", err)
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "warning": "done, but not written to the audit log: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "service": name, "action": action, "who": identity})
}

// identity returns who holds the request's action token, sent as a
// bearer token only: a browser attaches Basic credentials to requests
// other sites make it send, and an action must not be one of those.
func (s *Server) identity(r *http.Request) (string, bool) {
	return lookup(s.tokens, bearer(r))
}

// reader returns who holds the request's read or action token.
func (s *Server) reader(r *http.Request) (string, bool) {
	tok := presented(r)
	if who, ok := lookup(s.readTokens, tok); ok {
		return who, true
	}
	return lookup(s.tokens, tok)
}

// presented is the token of a request: a bearer token, or the password
// of Basic authentication (what a browser's prompt sends).
func presented(r *http.Request) string {
	if _, pw, ok := r.BasicAuth(); ok {
		return pw
	}
	return bearer(r)
}

func bearer(r *http.Request) string {
	// The scheme is case-insensitive (RFC 9110): curl users type "bearer".
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// lookup finds the identity of tok. Every token is compared, in constant
// time, so the time taken tells nothing.
func lookup(tokens map[string]string, tok string) (string, bool) {
	if tok == "" {
		return "", false
	}
	who, found := "", false
	for t, id := range tokens {
		if subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			who, found = id, true
		}
	}
	return who, found
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// LoadTokens reads a token file: one `IDENTITY TOKEN` per line, blank
// lines and # comments ignored. The identity is what the audit log says
// did each action.
func LoadTokens(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch {
		case len(f) != 2:
			return nil, fmt.Errorf("token file %s line %d: want `IDENTITY TOKEN`", path, i+1)
		case len(f[1]) < 16:
			return nil, fmt.Errorf("token file %s line %d: the token of %s is shorter than 16 characters", path, i+1, f[0])
		}
		if _, dup := out[f[1]]; dup {
			return nil, fmt.Errorf("token file %s line %d: a token given twice", path, i+1)
		}
		out[f[1]] = f[0]
	}
	if len(out) == 0 {
		return nil, errors.New("token file " + path + ": no tokens")
	}
	return out, nil
}
