#!/usr/bin/env bash
# Runs every test against real servers, after setting up what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Independent CloudEvents readers for the interop tests: official SDKs from PyPI and npm, pinned.
if ! python3 -c 'import cloudevents.core, nats, jsonschema, referencing' 2>/dev/null; then
  echo "test: installing the Python interop readers' packages" >&2
  python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt >&2
fi
if [ ! -d tests/interop/node_modules ]; then
  echo "test: installing the JavaScript interop readers' packages" >&2
  npm ci --prefix tests/interop --no-audit --no-fund --silent >&2
fi
exec cargo test --locked "$@"
