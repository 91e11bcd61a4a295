#!/bin/sh
# The quick start: publish, deploy, change, restart without redeploying,
# roll back. Everything lives under examples/quickstart/run/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${DROPSHIP:-$here/run/dropship}
cfg="$here/dropship.hcl"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$here/run"
mkdir -p "$here/run"
step "build dropship"
(cd "$here/../.." && go build -o "$bin" ./cmd/dropship)
"$bin" version

step "validate the config"
"$bin" validate -c "$cfg"

step "publish v1 and deploy it"
"$here/publish.sh" "v1"
"$bin" agent -c "$cfg" --once
"$here/run/srv/hello/bin/hello"

step "run the agent; publish v2 while it watches"
"$bin" agent -c "$cfg" 2>"$here/run/agent.log" &
agent=$!
sleep 1
"$here/publish.sh" "v2"
i=0
until grep -q "v2" "$here/run/srv/hello/VERSION" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 50 ] && { echo "agent did not install v2"; cat "$here/run/agent.log"; kill $agent; exit 1; }
  sleep 0.2
done
kill -TERM $agent; wait $agent || true
grep -E 'installing|switched|installed|script finished' "$here/run/agent.log" | cut -c1-200
"$here/run/srv/hello/bin/hello"

step "restart: nothing changed, nothing is installed"
"$bin" agent -c "$cfg" --once --log-level debug 2>&1 | grep 'result=' | cut -c1-200

step "history"
"$bin" history -c "$cfg" hello

step "roll back to v1 (it sticks: v2 is not reinstalled until a new one is published)"
"$bin" rollback -c "$cfg" hello
"$bin" agent -c "$cfg" --once 2>&1 | grep 'result=' | cut -c1-200
"$here/run/srv/hello/bin/hello"
ls -l "$here/run/srv/hello"
