#!/usr/bin/env bash
# Runs the end-to-end benchmark (benches/pipeline.rs) after setting up what a fresh machine lacks.
# Prints a table and writes target/bench/pipeline.json. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo bench --locked --bench pipeline "$@"
