package s3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Credentials are one set of AWS keys and where they came from.
type Credentials struct {
	AccessKey    string
	SecretKey    string
	SessionToken string
	Expires      time.Time // zero: does not expire
	Source       string    // for logs and errors, never the keys
}

// provider fetches credentials; the cache in front of it decides when.
type provider interface {
	retrieve(ctx context.Context) (Credentials, error)
}

// credCache hands out credentials, fetching again five minutes before
// they expire.
type credCache struct {
	p   provider
	now func() time.Time

	mu  sync.Mutex
	cur Credentials
	ok  bool
}

func newCache(p provider) *credCache { return &credCache{p: p, now: time.Now} }

func (c *credCache) get(ctx context.Context) (Credentials, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok && (c.cur.Expires.IsZero() || c.now().Add(5*time.Minute).Before(c.cur.Expires)) {
		return c.cur, nil
	}
	v, err := c.p.retrieve(ctx)
	if err != nil {
		return Credentials{}, err
	}
	c.cur, c.ok = v, true
	return v, nil
}

type staticProvider struct{ c Credentials }

func (s staticProvider) retrieve(context.Context) (Credentials, error) { return s.c, nil }

// credEnv is the process environment, a function so tests can set it.
type credEnv func(string) string

func (e credEnv) get(names ...string) string {
	for _, n := range names {
		if v := e(n); v != "" {
			return v
		}
	}
	return ""
}

// resolveProvider picks where credentials come from when the config has
// no keys, in the order of the AWS SDKs' default chain: environment keys,
// a web identity token, the shared config profile, the container's
// credentials endpoint, and the EC2 instance role. It reads the
// environment and the shared files; nothing is fetched yet.
func resolveProvider(env credEnv, profile string, hc *http.Client, region string) (provider, string, error) {
	if p, ok := envKeys(env); ok && profile == "" {
		return p, "", nil
	}
	explicit := profile != ""
	if profile == "" {
		profile = env.get("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
		explicit = profile != ""
	}
	if profile == "" {
		profile = "default"
	}
	if tok, role := env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"); tok != "" && role != "" && !explicit {
		return &webIdentity{sts: newSTS(env, hc, region), tokenFile: tok, role: role, session: env("AWS_ROLE_SESSION_NAME")}, "", nil
	}
	files, err := loadShared(env)
	if err != nil {
		return nil, "", err
	}
	p, profRegion, err := files.provider(env, profile, hc, region, 0)
	if err != nil {
		return nil, "", err
	}
	if p != nil {
		return p, profRegion, nil
	}
	if explicit {
		if _, found := files.profiles[profile]; found {
			return nil, "", fmt.Errorf("AWS profile %q (%s) has no credentials: no keys, credential_process, role_arn or web_identity_token_file",
				profile, files.from[profile])
		}
		return nil, "", fmt.Errorf("AWS profile %q not found in %s", profile, strings.Join(files.paths, " or "))
	}
	if p := containerProvider(env, noProxy(hc)); p != nil {
		return p, profRegion, nil
	}
	if strings.EqualFold(env("AWS_EC2_METADATA_DISABLED"), "true") {
		return nil, profRegion, errors.New("no AWS credentials: none in the config, the environment or the shared files, and the instance metadata service is disabled")
	}
	return instanceRole(env, hc), profRegion, nil
}

// envKeys is the keys in the environment, if both are set.
func envKeys(env credEnv) (provider, bool) {
	ak, sk := env.get("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"), env.get("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY")
	return staticProvider{Credentials{AccessKey: ak, SecretKey: sk, SessionToken: env("AWS_SESSION_TOKEN"),
		Source: "environment (AWS_ACCESS_KEY_ID)"}}, ak != "" && sk != ""
}

func instanceRole(env credEnv, hc *http.Client) provider {
	return &imdsProvider{hc: noProxy(hc), endpoint: strings.TrimSuffix(env("AWS_EC2_METADATA_SERVICE_ENDPOINT"), "/")}
}

// noProxy is hc without the proxy: link-local credential endpoints must
// be reached directly.
func noProxy(hc *http.Client) *http.Client {
	tr, ok := hc.Transport.(*http.Transport)
	if !ok {
		return hc
	}
	tr = tr.Clone()
	tr.Proxy = nil
	return &http.Client{Transport: tr}
}

// shared holds the profiles of ~/.aws/credentials and ~/.aws/config.
type shared struct {
	paths    []string
	profiles map[string]map[string]string
	from     map[string]string // profile -> file it was found in
}

func loadShared(env credEnv) (*shared, error) {
	home, _ := os.UserHomeDir()
	credFile := env("AWS_SHARED_CREDENTIALS_FILE")
	if credFile == "" && home != "" {
		credFile = filepath.Join(home, ".aws", "credentials")
	}
	cfgFile := env("AWS_CONFIG_FILE")
	if cfgFile == "" && home != "" {
		cfgFile = filepath.Join(home, ".aws", "config")
	}
	s := &shared{profiles: map[string]map[string]string{}, from: map[string]string{}}
	// The config file first: keys in the credentials file win.
	for _, f := range []struct {
		path   string
		config bool
	}{{cfgFile, true}, {credFile, false}} {
		if f.path == "" {
			continue
		}
		s.paths = append(s.paths, f.path)
		data, err := os.ReadFile(f.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("AWS shared config: %w", err)
		}
		if err := s.parse(f.path, data, f.config); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// parse reads the INI dialect of the AWS files: [section], key = value,
// comments with # or ;, and indented lines continuing a nested value
// (which are skipped: dropship needs none of them).
func (s *shared) parse(path string, data []byte, config bool) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur map[string]string
	line := 0
	for sc.Scan() {
		line++
		raw := sc.Text()
		t := strings.TrimSpace(raw)
		if t == "" || t[0] == '#' || t[0] == ';' {
			continue
		}
		if t[0] == '[' {
			if !strings.HasSuffix(t, "]") {
				return fmt.Errorf("%s:%d: section header %q has no closing ]", path, line, t)
			}
			name := strings.TrimSpace(t[1 : len(t)-1])
			if config {
				if n, ok := strings.CutPrefix(name, "profile "); ok {
					name = strings.TrimSpace(n)
				} else if name != "default" {
					cur = nil // sso-session and services sections
					continue
				}
			}
			if s.profiles[name] == nil {
				s.profiles[name] = map[string]string{}
			}
			cur = s.profiles[name]
			s.from[name] = path
			continue
		}
		if raw[0] == ' ' || raw[0] == '\t' || cur == nil {
			continue
		}
		k, v, ok := strings.Cut(t, "=")
		if !ok {
			return fmt.Errorf("%s:%d: expected key = value, found %q", path, line, t)
		}
		cur[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	return sc.Err()
}

// provider is the credentials profile names, or nil when it has none.
func (s *shared) provider(env credEnv, name string, hc *http.Client, region string, depth int) (provider, string, error) {
	p, ok := s.profiles[name]
	if !ok {
		return nil, "", nil
	}
	if depth > 4 {
		return nil, "", fmt.Errorf("AWS profile %q: source_profile chain too long (a loop?)", name)
	}
	where := fmt.Sprintf("shared config profile %q (%s)", name, s.from[name])
	if region == "" {
		region = p["region"]
	}
	switch {
	case p["role_arn"] != "" && p["web_identity_token_file"] != "":
		return &webIdentity{sts: newSTS(env, hc, region), tokenFile: p["web_identity_token_file"], role: p["role_arn"], session: p["role_session_name"]}, p["region"], nil
	case p["role_arn"] != "":
		var src provider
		var err error
		switch {
		case p["source_profile"] == name && p["aws_access_key_id"] != "":
			src = staticProvider{s.static(name, p)}
		case p["source_profile"] != "":
			src, _, err = s.provider(env, p["source_profile"], hc, region, depth+1)
			if err == nil && src == nil {
				err = fmt.Errorf("AWS profile %q: source_profile %q not found", name, p["source_profile"])
			}
		case p["credential_source"] != "":
			src, err = credentialSource(env, p["credential_source"], hc)
		default:
			err = fmt.Errorf("AWS profile %q: role_arn needs source_profile or credential_source", name)
		}
		if err != nil {
			return nil, "", err
		}
		dur, _ := strconv.Atoi(p["duration_seconds"])
		return &assumeRole{sts: newSTS(env, hc, region), src: newCache(src), role: p["role_arn"], session: p["role_session_name"],
			externalID: p["external_id"], duration: dur}, p["region"], nil
	case p["aws_access_key_id"] != "":
		if p["aws_secret_access_key"] == "" {
			return nil, "", fmt.Errorf("AWS profile %q has aws_access_key_id but no aws_secret_access_key", name)
		}
		return staticProvider{s.static(name, p)}, p["region"], nil
	case p["credential_process"] != "":
		return &processProvider{command: p["credential_process"], source: where}, p["region"], nil
	case p["sso_session"] != "" || p["sso_start_url"] != "":
		return nil, "", fmt.Errorf("AWS profile %q uses IAM Identity Center (SSO), which dropship does not support; "+
			"give the host an instance role, or keys, or a credential_process", name)
	}
	return nil, p["region"], nil
}

func (s *shared) static(name string, p map[string]string) Credentials {
	return Credentials{AccessKey: p["aws_access_key_id"], SecretKey: p["aws_secret_access_key"], SessionToken: p["aws_session_token"],
		Source: fmt.Sprintf("shared config profile %q (%s)", name, s.from[name])}
}

func credentialSource(env credEnv, kind string, hc *http.Client) (provider, error) {
	switch kind {
	case "Environment":
		if p, ok := envKeys(env); ok {
			return p, nil
		}
		return nil, errors.New("credential_source Environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
	case "Ec2InstanceMetadata":
		return instanceRole(env, hc), nil
	case "EcsContainer":
		if p := containerProvider(env, noProxy(hc)); p != nil {
			return p, nil
		}
		return nil, errors.New("credential_source EcsContainer: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI is not set")
	}
	return nil, fmt.Errorf("credential_source %q: want Environment, Ec2InstanceMetadata or EcsContainer", kind)
}

// jsonCreds is the shape the container endpoint, the instance metadata
// service and credential_process all answer with.
type jsonCreds struct {
	Version         int
	Code            string
	Message         string
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	SessionToken    string
	Expiration      *time.Time
}

func (j jsonCreds) creds(source string) (Credentials, error) {
	if j.Code != "" && j.Code != "Success" {
		return Credentials{}, fmt.Errorf("%s: %s: %s", source, j.Code, j.Message)
	}
	if j.AccessKeyID == "" || j.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("%s: answer has no AccessKeyId or SecretAccessKey", source)
	}
	c := Credentials{AccessKey: j.AccessKeyID, SecretKey: j.SecretAccessKey, SessionToken: j.Token, Source: source}
	if c.SessionToken == "" {
		c.SessionToken = j.SessionToken
	}
	if j.Expiration != nil {
		c.Expires = *j.Expiration
	}
	return c, nil
}

// processProvider runs credential_process.
type processProvider struct {
	command string
	source  string
}

func (p *processProvider) retrieve(ctx context.Context) (Credentials, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", p.command)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Credentials{}, fmt.Errorf("credential_process of %s: %w: %s", p.source, err, strings.TrimSpace(stderr.String()))
	}
	var j jsonCreds
	if err := json.Unmarshal(out, &j); err != nil {
		return Credentials{}, fmt.Errorf("credential_process of %s: output is not the credentials JSON: %w", p.source, err)
	}
	if j.Version != 1 {
		return Credentials{}, fmt.Errorf("credential_process of %s: Version %d, want 1", p.source, j.Version)
	}
	return j.creds("credential_process of " + p.source)
}

// containerProvider is the ECS/EKS container credentials endpoint, when
// the environment names one.
func containerProvider(env credEnv, hc *http.Client) provider {
	u := env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
	if rel := env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
		u = "http://169.254.170.2" + rel
	}
	if u == "" {
		return nil
	}
	return &containerCreds{hc: hc, url: u, token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"), tokenFile: env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")}
}

type containerCreds struct {
	hc               *http.Client
	url              string
	token, tokenFile string
}

func (c *containerCreds) retrieve(ctx context.Context) (Credentials, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return Credentials{}, fmt.Errorf("container credentials: %w", err)
	}
	tok := c.token
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return Credentials{}, fmt.Errorf("container credentials: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok != "" {
		req.Header.Set("Authorization", tok)
	}
	var j jsonCreds
	if err := getJSON(c.hc, req, &j); err != nil {
		return Credentials{}, fmt.Errorf("container credentials from %s: %w", c.url, err)
	}
	return j.creds("container credentials (" + c.url + ")")
}

// imdsProvider is the EC2 instance role, through IMDSv2 (a session token
// first), falling back to IMDSv1 where the token call is refused.
type imdsProvider struct {
	hc       *http.Client
	endpoint string
}

func (p *imdsProvider) retrieve(ctx context.Context) (Credentials, error) {
	base := p.endpoint
	if base == "" {
		base = "http://169.254.169.254"
	}
	// A host that is not on EC2 must fail fast.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	token := ""
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
	resp, err := p.hc.Do(req)
	if err != nil {
		return Credentials{}, fmt.Errorf("no AWS credentials in the config, the environment or the shared files, and no instance metadata service at %s: %w", base, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		token = strings.TrimSpace(string(body))
	}
	get := func(path string) (*http.Request, error) {
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err == nil && token != "" {
			r.Header.Set("X-Aws-Ec2-Metadata-Token", token)
		}
		return r, err
	}
	r, err := get("/latest/meta-data/iam/security-credentials/")
	if err != nil {
		return Credentials{}, err
	}
	roles, err := getText(p.hc, r)
	if err != nil {
		return Credentials{}, fmt.Errorf("instance metadata: no instance role: %w", err)
	}
	role := strings.TrimSpace(strings.SplitN(roles, "\n", 2)[0])
	if role == "" {
		return Credentials{}, errors.New("instance metadata: the instance has no role")
	}
	r, err = get("/latest/meta-data/iam/security-credentials/" + url.PathEscape(role))
	if err != nil {
		return Credentials{}, err
	}
	var j jsonCreds
	if err := getJSON(p.hc, r, &j); err != nil {
		return Credentials{}, fmt.Errorf("instance metadata: role %s: %w", role, err)
	}
	return j.creds("EC2 instance role " + role)
}

func getText(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

func getJSON(hc *http.Client, req *http.Request, v any) error {
	body, err := getText(hc, req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		return fmt.Errorf("not the credentials JSON: %w", err)
	}
	return nil
}

// stsClient makes the two STS calls dropship needs.
type stsClient struct {
	hc       *http.Client
	endpoint string
	region   string
}

func newSTS(env credEnv, hc *http.Client, region string) *stsClient {
	if region == "" {
		region = env.get("AWS_REGION", "AWS_DEFAULT_REGION")
	}
	if region == "" {
		region = "us-east-1"
	}
	ep := env.get("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL")
	if ep == "" {
		ep = "https://sts." + region + ".amazonaws.com"
	}
	return &stsClient{hc: hc, endpoint: strings.TrimSuffix(ep, "/") + "/", region: region}
}

type stsCreds struct {
	AccessKeyID     string    `xml:"Credentials>AccessKeyId"`
	SecretAccessKey string    `xml:"Credentials>SecretAccessKey"`
	SessionToken    string    `xml:"Credentials>SessionToken"`
	Expiration      time.Time `xml:"Credentials>Expiration"`
}

// call posts an STS action, signed with signer's credentials unless nil.
func (s *stsClient) call(ctx context.Context, form url.Values, signer *Credentials, source string) (Credentials, error) {
	form.Set("Version", "2011-06-15")
	body := form.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, strings.NewReader(body))
	if err != nil {
		return Credentials{}, fmt.Errorf("%s: %w", source, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	if signer != nil {
		sum := sha256Hex([]byte(body))
		sign(req, *signer, s.region, "sts", sum, time.Now())
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return Credentials{}, fmt.Errorf("%s: %w", source, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Credentials{}, fmt.Errorf("%s: %w", source, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Code    string `xml:"Error>Code"`
			Message string `xml:"Error>Message"`
		}
		xml.Unmarshal(data, &e)
		return Credentials{}, fmt.Errorf("%s: %s: %s %s", source, resp.Status, e.Code, e.Message)
	}
	var r struct {
		Role stsCreds `xml:"AssumeRoleResult"`
		Web  stsCreds `xml:"AssumeRoleWithWebIdentityResult"`
	}
	if err := xml.Unmarshal(data, &r); err != nil {
		return Credentials{}, fmt.Errorf("%s: the answer is not STS XML: %w", source, err)
	}
	got := r.Role
	if got.AccessKeyID == "" {
		got = r.Web
	}
	if got.AccessKeyID == "" || got.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("%s: the answer has no credentials", source)
	}
	return Credentials{AccessKey: got.AccessKeyID, SecretKey: got.SecretAccessKey, SessionToken: got.SessionToken,
		Expires: got.Expiration, Source: source}, nil
}

// sessionName is role_session_name, or dropship-<host>.
func sessionName(s string) string {
	if s != "" {
		return s
	}
	h, _ := os.Hostname()
	name := "dropship-" + strings.Map(func(r rune) rune {
		if r < 128 && (r == '=' || r == ',' || r == '.' || r == '@' || r == '-' || r == '_' ||
			('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')) {
			return r
		}
		return '-'
	}, h)
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// assumeRole is role_arn with source_profile or credential_source.
type assumeRole struct {
	sts        *stsClient
	src        *credCache
	role       string
	session    string
	externalID string
	duration   int
}

func (a *assumeRole) retrieve(ctx context.Context) (Credentials, error) {
	src, err := a.src.get(ctx)
	if err != nil {
		return Credentials{}, fmt.Errorf("assume role %s: source credentials: %w", a.role, err)
	}
	form := url.Values{"Action": {"AssumeRole"}, "RoleArn": {a.role}, "RoleSessionName": {sessionName(a.session)}}
	if a.externalID != "" {
		form.Set("ExternalId", a.externalID)
	}
	if a.duration > 0 {
		form.Set("DurationSeconds", strconv.Itoa(a.duration))
	}
	return a.sts.call(ctx, form, &src, "assumed role "+a.role+" (from "+src.Source+")")
}

// webIdentity exchanges a token file (EKS, GitHub, …) for a role.
type webIdentity struct {
	sts       *stsClient
	tokenFile string
	role      string
	session   string
}

func (w *webIdentity) retrieve(ctx context.Context) (Credentials, error) {
	tok, err := os.ReadFile(w.tokenFile)
	if err != nil {
		return Credentials{}, fmt.Errorf("web identity for %s: %w", w.role, err)
	}
	form := url.Values{"Action": {"AssumeRoleWithWebIdentity"}, "RoleArn": {w.role},
		"RoleSessionName": {sessionName(w.session)}, "WebIdentityToken": {strings.TrimSpace(string(tok))}}
	return w.sts.call(ctx, form, nil, "web identity role "+w.role)
}
