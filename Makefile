# The two commands of the README:
#   make demo   run the agent on examples/quickstart and watch a deploy
#   make test   install what the tests need (only what is missing), then
#               go vet and the whole suite with the race detector
GO        ?= go
export GOTOOLCHAIN := local
RIG_DIR   ?= $(HOME)/.cache/dropship-rig
export DROPSHIP_RIG_DIR := $(RIG_DIR)
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

.PHONY: all build demo test rig vet fmt-check bench bench-delta bench-idle bench-watch bench-rollout bench-scale bench-stage fuzz deb clean

all: build

# Static and stripped: no libc mapped, fewer pages resident. Every store
# and Consul speak HTTP/1.1 to the agent, so net/http's HTTP/2 is left out
# (nethttpomithttp2): half a megabyte less binary, and less of it resident.
BUILD_TAGS := nethttpomithttp2
OUT ?= dropship
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags $(BUILD_TAGS) -ldflags '-s -w $(LDFLAGS)' -o $(OUT) ./cmd/dropship

demo:
	sh examples/quickstart/demo.sh

rig:
	bash internal/rig/install.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# -count=1: every run runs every test. A cached result would let a run
# pass without talking to a single server. -parallel: the tests that
# mark themselves parallel mostly wait on agents' timers and servers, not
# the CPU, so more of them run at once than there are cores; -p: so do
# most packages' test binaries.
TEST_PARALLEL ?= 8
TEST_PACKAGES ?= 4
test: rig fmt-check vet
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) test -race -count=1 -p $(TEST_PACKAGES) -parallel $(TEST_PARALLEL) -timeout 20m ./...
	$(MAKE) fuzz FUZZTIME=10000x

# The Debian package: ../dropship_<version>_<arch>.deb
deb:
	dpkg-buildpackage -b -us -uc

# Install benchmark: 1 GiB artifact from MinIO, dropship against curl | tar
# on tmpfs, three rounds of each format (with the install's peak resident
# memory); then chunked deltas (bench-delta), a rollout staged ahead of the
# slot against one that is not (bench-stage), and the agent's footprint at
# rest with 10 S3 services (bench-idle, 3 minutes). Not part of `make test`.
bench: rig
	PATH="$(RIG_DIR)/bench:$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/install
	$(MAKE) bench-delta
	$(MAKE) bench-stage
	$(MAKE) bench-idle IDLE_SOURCE=s3 IDLE_DURATION=3m

# Staging ahead: 10 agents at concurrency = 1 roll out a 256 MiB release,
# with stage = "off" and stage = "ahead", each host on a 50 MiB/s link
# and then with no limit.
bench-stage: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/stage

# Chunked deltas: a 1 GiB tree with one 5 MB file changed, fetched as a
# delta against the whole archive, and the first install with an empty
# chunk cache.
bench-delta: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/delta

# The agent at rest: resident memory and CPU time with 10 services, each
# installed once, over 10 minutes at a 10 s interval. IDLE_SOURCE=s3 puts
# the artifacts in MinIO instead of local files.
IDLE_SOURCE ?= file
IDLE_DURATION ?= 10m
bench-idle: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/idle -source $(IDLE_SOURCE) -duration $(IDLE_DURATION)

# Watch mode: 1,000 watchers on one Consul agent, key write to wake-up.
bench-watch: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/watch

# Progressive rollout: 10 agents, 3 waves, 2 s bake, against the ideal;
# then a fleet revert, breaker to the last host switched back.
bench-rollout: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/rollout

# Fleet slots at scale: N simulated hosts (goroutines, one Consul client
# each) against one Consul agent; the consul/api semaphore beside.
SCALE_HOSTS ?= 100,1000,5000
SCALE_BASELINE ?= 200,500
SCALE_ROLLOUT ?= 100,1000,5000
bench-scale: rig
	PATH="$(RIG_DIR)/bin:$$PATH" $(GO) run ./bench/scale -hosts $(SCALE_HOSTS) -baseline $(SCALE_BASELINE) -rollout $(SCALE_ROLLOUT)

# Fuzz the archive reader, the config loader and the state loader
# (FUZZTIME each; `make test` runs 10,000 inputs of each: a count, not a
# time, because a pass timed out while a worker is still minimising a
# new input fails with "context deadline exceeded" on a loaded machine). A crasher lands in
# testdata/fuzz/ and is replayed by every `go test` from then on. Each
# new input is minimised for at most FUZZMINTIME: Go's default of 60 s
# would spend a short pass minimising its first find instead of fuzzing.
FUZZTIME ?= 10m
FUZZMINTIME ?= 3s
fuzz:
	$(GO) test ./artifact/archive -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME)
	$(GO) test ./agent -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME)
	$(GO) test ./agent -run '^$$' -fuzz '^FuzzLoadState$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME)

clean:
	rm -f dropship
	rm -rf examples/quickstart/run
