#!/usr/bin/env bash
# Runs the demo (mes-events demo), after setting up what a fresh machine lacks.
# Arguments go to the demo: scripts/demo.sh --duration 30s --rate 100
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked --quiet
exec target/release/mes-events demo "$@"
