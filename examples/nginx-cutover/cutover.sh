#!/bin/sh
# After hook for a zero-downtime cut-over behind nginx (see app.hcl).
# Runs in the new release's directory with DROPSHIP_* in the environment.
# Each release runs as the systemd template unit app@PORT (ExecStart uses
# %i as its port and /srv/app as its code).
set -eu
: "${PORTS:=8081 8082}" "${HEALTH_PATH:=/health}" "${DRAIN_SECONDS:=30}"
: "${NGINX_UPSTREAM:=/etc/nginx/conf.d/app-upstream.conf}"

# The port nginx sends traffic to now, if any.
current=$(sed -n 's/.*server 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$NGINX_UPSTREAM" 2>/dev/null || true)
new=""
for p in $PORTS; do
  [ "$p" != "$current" ] && { new=$p; break; }
done
[ -n "$new" ] || { echo "no free port among $PORTS" >&2; exit 1; }

# On a rollback the previous release is already serving: nothing to do.
if [ "${DROPSHIP_PHASE:-}" = rollback ] && [ -n "$current" ] && curl -fsS "http://127.0.0.1:$current$HEALTH_PATH" >/dev/null 2>&1; then
  echo "rollback: release on port $current still serves"
  exit 0
fi

systemctl restart "app@$new"
i=0
until curl -fsS "http://127.0.0.1:$new$HEALTH_PATH" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -ge 60 ] && { echo "release on port $new never became healthy" >&2; systemctl stop "app@$new"; exit 1; }
  sleep 1
done

tmp="$NGINX_UPSTREAM.dropship-tmp"
printf 'upstream app {\n    server 127.0.0.1:%s;\n}\n' "$new" >"$tmp"
mv "$tmp" "$NGINX_UPSTREAM"
if ! nginx -t; then
  echo "nginx rejected the new upstream; keeping port $current" >&2
  [ -n "$current" ] && printf 'upstream app {\n    server 127.0.0.1:%s;\n}\n' "$current" >"$NGINX_UPSTREAM"
  systemctl stop "app@$new"
  exit 1
fi
nginx -s reload
echo "nginx now sends traffic to port $new (release $DROPSHIP_RELEASE)"

# Old connections finish on the old release, then it stops.
if [ -n "$current" ]; then
  sleep "$DRAIN_SECONDS"
  systemctl stop "app@$current"
fi
