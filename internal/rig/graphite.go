package rig

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Graphite is a running graphite-web (Django runserver) and carbon-cache,
// from Debian's packages, with private settings and storage.
type Graphite struct {
	URL        string // http://127.0.0.1:PORT
	CarbonAddr string // 127.0.0.1:PORT, plaintext over TCP and UDP
	procs
}

// StartGraphite configures and starts graphite-web and carbon, starting
// over on new ports if one is taken.
func StartGraphite() (*Graphite, error) {
	for _, b := range []string{"/usr/bin/graphite-manage", "/usr/bin/carbon-cache"} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s not installed (run `make rig`)", b)
		}
	}
	return startOver("graphite", startGraphite)
}

func startGraphite() (*Graphite, error) {
	dir, err := os.MkdirTemp("", "rig-graphite-")
	if err != nil {
		return nil, err
	}
	g := &Graphite{}
	g.dirs = append(g.dirs, dir)
	fail := func(err error) (*Graphite, error) {
		g.stop()
		return nil, err
	}
	p, err := g.reserve(4) // web, carbon line, carbon pickle, carbon cache query
	if err != nil {
		return fail(err)
	}
	g.URL = fmt.Sprintf("http://127.0.0.1:%d", p[0])
	g.CarbonAddr = fmt.Sprintf("127.0.0.1:%d", p[1])
	storage := filepath.Join(dir, "storage")
	for _, d := range []string{"py", "carbon/log", "storage/whisper", "storage/log/webapp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fail(err)
		}
	}
	files := map[string]string{
		"py/rig_graphite_settings.py": fmt.Sprintf(`SECRET_KEY = 'rig-graphite'
STORAGE_DIR = %[1]q
WHISPER_DIR = %[1]q + '/whisper/'
LOG_DIR = %[1]q + '/log/webapp'
INDEX_FILE = %[1]q + '/index'
DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': %[1]q + '/graphite.db'}}
CARBONLINK_HOSTS = ['127.0.0.1:%[2]d']
ALLOWED_HOSTS = ['*']
`, storage, p[3]),
		"carbon/carbon.conf": fmt.Sprintf(`[cache]
STORAGE_DIR = %[1]s/
LOCAL_DATA_DIR = %[1]s/whisper/
CONF_DIR = %[2]s/carbon/
LOG_DIR = %[2]s/carbon/log/
PID_DIR = %[2]s/carbon/
DATABASE = whisper
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 5000
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = %[3]d
ENABLE_UDP_LISTENER = True
UDP_RECEIVER_INTERFACE = 127.0.0.1
UDP_RECEIVER_PORT = %[3]d
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = %[4]d
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = %[5]d
WHISPER_FALLOCATE_CREATE = False
`, storage, dir, p[1], p[2], p[3]),
		"carbon/storage-schemas.conf": "[default]\npattern = .*\nretentions = 1s:1h\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fail(err)
		}
	}
	env := append(os.Environ(), "PYTHONPATH="+filepath.Join(dir, "py"), "GRAPHITE_SETTINGS_MODULE=rig_graphite_settings",
		"DJANGO_SETTINGS_MODULE=graphite.settings")
	migrate := exec.Command("/usr/bin/python3", "/usr/bin/graphite-manage", "migrate", "--run-syncdb", "--noinput")
	migrate.Env = env
	if out, err := migrate.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("graphite-manage migrate: %v\n%s", err, out))
	}
	carbon := exec.Command("/usr/bin/python3", "/usr/bin/carbon-cache", "--config="+filepath.Join(dir, "carbon/carbon.conf"), "--debug", "start")
	carbon.Env = env
	cp, err := g.start(dir, "carbon", carbon)
	if err != nil {
		return fail(err)
	}
	web := exec.Command("/usr/bin/python3", "/usr/bin/graphite-manage", "runserver", "--noreload", fmt.Sprintf("127.0.0.1:%d", p[0]))
	web.Env = env
	wp, err := g.start(dir, "web", web)
	if err != nil {
		return fail(err)
	}
	if err := awaitListening([]listener{{p[0], wp}, {p[1], cp}}, 60*time.Second); err != nil {
		return fail(fmt.Errorf("graphite: %w", err))
	}
	if err := waitHTTP(g.URL+"/events/get_data", 60*time.Second, ok200); err != nil {
		return fail(fmt.Errorf("graphite-web: %w\n%s", err, tail(filepath.Join(dir, "web.log"))))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", g.CarbonAddr)
		if err == nil {
			c.Close()
			return g, nil
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("carbon: %v\n%s", err, tail(filepath.Join(dir, "carbon.log"))))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills graphite-web and carbon and removes their data.
func (g *Graphite) Stop() { g.stop() }
