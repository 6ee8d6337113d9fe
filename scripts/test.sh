#!/usr/bin/env bash
# Runs every test against real servers, after setting up what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo test --locked "$@"
