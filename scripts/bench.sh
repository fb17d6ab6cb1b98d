#!/usr/bin/env bash
# End-to-end benchmark (see benches/e2e.rs): accepted → callback delivered.
# Needs the local Postgres (postgres://postgres@127.0.0.1:5432, or HOOKRELAY_TEST_PG).
# Usage: scripts/bench.sh [--commands N] [--concurrency C]
# For the benchmark with an independent load generator (wrk), nginx peers and
# the release binary, see scripts/bench_e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench e2e -- "$@"
