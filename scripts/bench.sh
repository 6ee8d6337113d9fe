#!/usr/bin/env bash
# Runs a benchmark after setting up what a fresh machine lacks: benches/pipeline.rs by default
# (a table and target/bench/pipeline.json; a few minutes), or the one named with --bench
# (durability, push). Other arguments go to cargo bench.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
case " $* " in
  *" --bench "*) exec cargo bench --locked "$@" ;;
  *) exec cargo bench --locked --bench pipeline "$@" ;;
esac
