#!/usr/bin/env bash
# Runs every test against real servers, after setting up what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Independent CloudEvents readers for the interop tests: official SDKs from PyPI and npm, pinned.
# The integrator examples under examples/ run in the tests too, with their own pinned packages.
if ! python3 -c 'import cloudevents.core, nats, nkeys, jsonschema, referencing, prometheus_client, standardwebhooks' 2>/dev/null; then
  echo "test: installing the Python readers' and example's packages" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    -r tests/interop/requirements.txt -r examples/python/requirements.txt \
    -r examples/push/requirements.txt >&2
fi
for dir in tests/interop examples/javascript examples/push; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "test: installing $dir's npm packages" >&2
    npm ci --prefix "$dir" --no-audit --no-fund --silent >&2
  fi
done
# Prometheus's own linter for the relay's /metrics (`promtool check metrics`), from Debian.
if ! command -v promtool >/dev/null; then
  echo "test: installing promtool (Debian's prometheus package)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y --no-install-recommends prometheus >&2 ||
      { apt-get update >&2 && apt-get install -y --no-install-recommends prometheus >&2; }
  else
    sudo apt-get install -y --no-install-recommends prometheus >&2
  fi
fi
exec cargo test --locked "$@"
