#!/bin/sh
# After hook for a zero-downtime cut-over behind nginx (see app.hcl).
# Runs in the new release's directory with DROPSHIP_* in the environment.
# Each release runs as the systemd template unit app@PORT (ExecStart uses
# %i as its port and /srv/app as its code).
#
# What starts and stops a release and what tests and reloads nginx can be
# replaced through the environment (the hook's env = { … }), where systemd
# is not the service manager; each command gets the port as $1:
#   START_RELEASE   default: systemctl restart "app@$1"
#   STOP_RELEASE    default: systemctl stop "app@$1"
#   NGINX_TEST      default: nginx -t
#   NGINX_RELOAD    default: nginx -s reload
set -eu
: "${PORTS:=8081 8082}" "${HEALTH_PATH:=/health}" "${DRAIN_SECONDS:=30}" "${HEALTH_TRIES:=60}"
: "${NGINX_UPSTREAM:=/etc/nginx/conf.d/app-upstream.conf}"
: "${START_RELEASE:=systemctl restart \"app@\$1\"}"
: "${STOP_RELEASE:=systemctl stop \"app@\$1\"}"
: "${NGINX_TEST:=nginx -t}"
: "${NGINX_RELOAD:=nginx -s reload}"

start_release() { sh -c "$START_RELEASE" cutover "$1"; }
stop_release() { sh -c "$STOP_RELEASE" cutover "$1"; }
healthy() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1$HEALTH_PATH" 2>/dev/null; }
upstream() { printf 'upstream app {\n    server 127.0.0.1:%s;\n    keepalive 16;\n}\n' "$1"; }

# The port nginx sends traffic to now, if any.
current=$(sed -n 's/.*server 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$NGINX_UPSTREAM" 2>/dev/null || true)
new=""
for p in $PORTS; do
  [ "$p" != "$current" ] && { new=$p; break; }
done
[ -n "$new" ] || { echo "no free port among $PORTS" >&2; exit 1; }

# On a rollback the previous release is already serving: nothing to do.
if [ "${DROPSHIP_PHASE:-}" = rollback ] && [ -n "$current" ] && healthy "$current"; then
  echo "rollback: release on port $current still serves"
  exit 0
fi

start_release "$new"
i=0
until healthy "$new"; do
  i=$((i + 1))
  if [ $i -ge "$HEALTH_TRIES" ]; then
    echo "release on port $new never became healthy; nginx still sends traffic to port ${current:-none}" >&2
    stop_release "$new" || true
    exit 1
  fi
  sleep 1
done

tmp="$NGINX_UPSTREAM.dropship-tmp"
upstream "$new" >"$tmp"
mv "$tmp" "$NGINX_UPSTREAM"
if ! sh -c "$NGINX_TEST"; then
  echo "nginx rejected the new upstream; keeping port $current" >&2
  [ -n "$current" ] && upstream "$current" >"$NGINX_UPSTREAM"
  stop_release "$new" || true
  exit 1
fi
sh -c "$NGINX_RELOAD"
echo "nginx now sends traffic to port $new (release $DROPSHIP_RELEASE)"

# Old connections finish on the old release, then it stops.
if [ -n "$current" ]; then
  sleep "$DRAIN_SECONDS"
  stop_release "$current" || true
fi
