package rig

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Swift is a running single-node OpenStack Swift with tempauth (auth v1):
// account, container and object servers, a proxy, and memcached.
type Swift struct {
	AuthURL string // http://127.0.0.1:PORT/auth/v1.0
	Addr    string // the proxy's 127.0.0.1:PORT
	User    string // test:tester
	Key     string // testing
	ports   []int  // proxy, account, container, object, memcached
	procs
}

const swiftCommon = `[DEFAULT]
devices = %[1]s/devices
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = %[2]d
workers = 0
user = %[3]s
swift_dir = %[1]s
log_name = %[4]s
`

// StartSwift builds rings, writes configs into a private directory (so
// /etc/swift is never touched) and starts the four servers, starting
// over on new ports if one is taken.
func StartSwift() (*Swift, error) {
	for _, b := range []string{"swift-ring-builder", "swift-proxy-server", "swift-account-server", "swift-container-server", "swift-object-server", "memcached"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s not installed (run `make rig`): %w", b, err)
		}
	}
	return startOver("swift", startSwift)
}

func startSwift() (*Swift, error) {
	dir, err := os.MkdirTemp("", "rig-swift-")
	if err != nil {
		return nil, err
	}
	s := &Swift{User: "test:tester", Key: "testing"}
	s.dirs = append(s.dirs, dir)
	fail := func(err error) (*Swift, error) {
		s.stop()
		return nil, err
	}
	p, err := s.reserve(5) // proxy, account, container, object, memcached
	if err != nil {
		return fail(err)
	}
	s.ports = p
	s.Addr = fmt.Sprintf("127.0.0.1:%d", p[0])
	s.AuthURL = "http://" + s.Addr + "/auth/v1.0"
	if err := os.MkdirAll(filepath.Join(dir, "devices", "d1"), 0o755); err != nil {
		return fail(err)
	}
	user := os.Getenv("USER")
	if user == "" {
		user = "root"
	}
	files := map[string]string{
		"swift.conf": "[swift-hash]\nswift_hash_path_suffix = dropshiptest\nswift_hash_path_prefix = dropshiptest\n\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n",
		"proxy-server.conf": fmt.Sprintf(swiftCommon, dir, p[0], user, "proxy") + fmt.Sprintf(`
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth copy dlo slo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
user_other_reader = secret .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:%d

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:dlo]
use = egg:swift#dlo
[filter:slo]
use = egg:swift#slo
`, p[4]),
	}
	for i, kind := range []string{"account", "container", "object"} {
		files[kind+"-server.conf"] = fmt.Sprintf(swiftCommon, dir, p[i+1], user, kind) + fmt.Sprintf(`
[pipeline:main]
pipeline = healthcheck %[1]s-server

[app:%[1]s-server]
use = egg:swift#%[1]s

[filter:healthcheck]
use = egg:swift#healthcheck
`, kind)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fail(err)
		}
	}
	for i, kind := range []string{"account", "container", "object"} {
		builder := filepath.Join(dir, kind+".builder")
		for _, args := range [][]string{
			{builder, "create", "8", "1", "1"},
			{builder, "add", fmt.Sprintf("r1z1-127.0.0.1:%d/d1", p[i+1]), "100"},
			{builder, "rebalance"},
		} {
			cmd := exec.Command("swift-ring-builder", args...)
			cmd.Dir = dir
			// rebalance exits 1 with a warning on a one-device ring; the
			// ring file is what matters.
			out, err := cmd.CombinedOutput()
			if err != nil && args[1] != "rebalance" {
				return fail(fmt.Errorf("swift-ring-builder %s: %v\n%s", strings.Join(args[1:], " "), err, out))
			}
		}
		if _, err := os.Stat(filepath.Join(dir, kind+".ring.gz")); err != nil {
			return fail(fmt.Errorf("ring %s not built: %w", kind, err))
		}
	}
	mc, err := s.start(dir, "memcached", exec.Command("memcached", "-u", user, "-l", "127.0.0.1", "-p", fmt.Sprint(p[4]), "-U", "0", "-m", "16"))
	if err != nil {
		return fail(err)
	}
	servers := []listener{{p[4], mc}}
	for _, sv := range []struct {
		kind string
		port int
	}{{"account", p[1]}, {"container", p[2]}, {"object", p[3]}, {"proxy", p[0]}} {
		cmd := exec.Command("swift-"+sv.kind+"-server", filepath.Join(dir, sv.kind+"-server.conf"))
		cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin")
		pr, err := s.start(dir, sv.kind, cmd)
		if err != nil {
			return fail(err)
		}
		servers = append(servers, listener{sv.port, pr})
	}
	// A healthcheck alone cannot tell our server from another Swift's
	// sharing the port: each must be the only one listening on it.
	if err := awaitListening(servers, 60*time.Second); err != nil {
		return fail(fmt.Errorf("swift: %w", err))
	}
	// Every server, not just the proxy: the proxy is healthy before the
	// object server listens.
	for _, sv := range servers[1:] {
		url := fmt.Sprintf("http://127.0.0.1:%d/healthcheck", sv.port)
		if err := waitHTTP(url, 60*time.Second, ok200); err != nil {
			return fail(fmt.Errorf("swift %s: %w\n%s", sv.p.name, err, tail(sv.p.logPath)))
		}
	}
	// tempauth answers once memcached does.
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", s.AuthURL, nil)
		req.Header.Set("X-Auth-User", s.User)
		req.Header.Set("X-Auth-Key", s.Key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 && resp.Header.Get("X-Auth-Token") != "" {
				// Once more, now that all answer: a port shared since
				// would split requests between two Swifts.
				if err := checkListening(servers); err != nil {
					return fail(fmt.Errorf("swift: %w", err))
				}
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("swift tempauth not ready: %v %v\n%s", err, resp, tail(filepath.Join(dir, "proxy.log"))))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills every Swift process and removes the data.
func (s *Swift) Stop() { s.stop() }
