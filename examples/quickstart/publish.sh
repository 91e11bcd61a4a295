#!/bin/sh
# Builds a tiny demo app and publishes it to the quick start's local store.
# Usage: publish.sh MESSAGE
set -eu
here=$(cd "$(dirname "$0")" && pwd)
msg=${1:-"hello from $(date -u +%H:%M:%S)"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$here/run/store"
cat >"$work/bin/hello" <<APP
#!/bin/sh
echo "hello app says: $msg (running from \$(cd "\$(dirname "\$0")/.." && pwd -P))"
APP
chmod 755 "$work/bin/hello"
echo "$msg" >"$work/VERSION"
# Write next to the target and rename: the agent never sees half a file.
tar -czf "$here/run/store/.hello.tar.gz.tmp" -C "$work" .
mv "$here/run/store/.hello.tar.gz.tmp" "$here/run/store/hello.tar.gz"
echo "published: $msg ($(md5sum "$here/run/store/hello.tar.gz" | cut -d' ' -f1))"
