#!/usr/bin/env bash
# API schema fuzzing: starts `hookrelay serve` on a free port against a fresh
# database and runs schemathesis against its /openapi.json twice, once with a
# `client` token and once with an `admin` token (the two roles see different
# answers: 403 on the other's routes, 200/202 on their own). It fails on any
# 5xx, a response body that violates the documented schema, a status the
# operation does not document, or a Content-Type it does not document for
# that status. Called by .ci/run; also runnable by hand (needs the local
# Postgres, python3 with venv).
#
# The SSE streams (`/v1/events`, `/v1/commands/{id}/events`) are excluded:
# a stream stays open by design, so a request to it never completes for
# schemathesis to check; tests/api/events.rs covers them.
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 20 per operation),
# SCHEMATHESIS_TIME_LIMIT_S (default 600, each of the two runs).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookrelay-target}"
SCHEMATHESIS_VERSION="4.32.5"
# Pinned with it: hypothesis changes internals that its JSON-schema strategies use.
HYPOTHESIS_VERSION="6.170.15"
VENV=".venv-schemathesis"
PG="${HOOKRELAY_TEST_PG:-postgres://postgres@127.0.0.1:5432}"

if [ ! -x "$VENV/bin/schemathesis" ] ||
    ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"
fi

cargo build -q --bin hookrelay
BIN="$CARGO_TARGET_DIR/debug/hookrelay"

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
# A stand-in upstream and receiver (scripts/dev_peers.py), so commands and
# upstream queries run their whole path, not only their 4xx answers.
upstream_port=$(free_port)
receiver_port=$(free_port)
db="hookrelay_test_schemathesis_$(date +%s)_$$"
cat >"$work/config.toml" <<TOML
[server]
bind = "127.0.0.1:$port"
workers = 2
[database]
url = "$PG/$db"
[telemetry]
filter = "warn"
# schemathesis sends requests as fast as it can from one address.
[limits]
per_ip_per_s = 0
per_client_per_s = 0
[security]
allow_private_callbacks = true
[integrations.httpbin]
base_url = "http://127.0.0.1:$upstream_port"
[integrations.httpbin.operations.create_thing]
method = "POST"
path = "/anything/things/{thing_id}"
[integrations.httpbin.queries.get_json]
path = "/json"
TOML

server=""
peers=""
cleanup() {
    for pid in $server $peers; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 scripts/dev_peers.py --upstream-port "$upstream_port" --receiver-port "$receiver_port" \
    >"$work/peers.log" 2>&1 &
peers=$!
"$BIN" --config "$work/config.toml" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || {
    cat "$work/server.log"
    exit 1
}
# One worker: with two, schemathesis draws in two threads, and CPython 3.11's
# `ast` module keeps its recursion-depth counter per interpreter, not per
# thread, so hypothesis's lambda reprs (which call ast.parse) can race and
# abort the run with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905 and follow-ups). One thread also makes `--seed 1`
# reproduce the same cases on every run.
status=0
for role in client admin; do
    token=$("$BIN" --config "$work/config.toml" token --sub "ci-$role" --role "$role" --ttl 3600)
    echo "== schemathesis as $role"
    run_status=0
    timeout "${SCHEMATHESIS_TIME_LIMIT_S:-600}" "$VENV/bin/schemathesis" run \
        "http://127.0.0.1:$port/openapi.json" \
        --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
        --header "Authorization: Bearer $token" \
        --exclude-path-regex '/events$' \
        --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-20}" \
        --seed 1 \
        --workers 1 \
        --request-timeout 30 \
        --no-shrink \
        --warnings off ||
        run_status=$?
    if [ "$run_status" -ne 0 ]; then
        echo "schemathesis as $role failed (exit $run_status); server log tail:"
        tail -n 50 "$work/server.log"
        status=$run_status
    fi
done
exit "$status"
