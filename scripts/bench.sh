#!/usr/bin/env bash
# End-to-end benchmark (see benches/e2e.rs): accepted → callback delivered.
# Needs the local Postgres (postgres://postgres@127.0.0.1:5432, or HOOKRELAY_TEST_PG).
# Usage: scripts/bench.sh [--commands N] [--concurrency C]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench e2e -- "$@"
