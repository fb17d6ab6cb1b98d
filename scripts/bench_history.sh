#!/usr/bin/env bash
# Flat cost as history grows: the database cost of intake, claim and status
# read on an empty database and after 1,000,000 finished commands.
#
# What grows with history is the tables and indexes hookrelay's statements
# touch; the HTTP and Rust work per request does not depend on it. So this
# script replays hookrelay's own statements with `pgbench` (an independent
# load generator, custom scripts, -c clients for -T seconds) against a
# database migrated with migrations/*.sql:
#
#   intake  one command + its execute job in one transaction, as the intake
#           writer does (UUIDv7 ids made in SQL, so the primary key grows at
#           its right edge as in production; the statement triggers run);
#   claim   the dispatcher's claim statement (src/outbox, 32 jobs, FOR UPDATE
#           SKIP LOCKED, joined with commands and deliveries) over a fixed
#           ready set of 10,000 jobs; the lease is 0 s so the same jobs are
#           claimed again and the ready set stays the same size;
#   status  GET /v1/commands/{id}'s query (commands LEFT JOIN deliveries by
#           id) for random ids among 10,000 known commands.
#
# Two databases are migrated: one stays empty, the other is pre-filled with
# 1,000,000 finished commands created over the last 30 days (each with a
# delivered delivery, one attempt and one event; generate_series, then VACUUM
# ANALYZE). The measurements alternate between the two (--rounds times, each
# statement in turn), so load from anything else on the machine hits both
# alike, and the median of each is reported with the change; the issue's bar
# is ±20%.
# pgbench runs with synchronous_commit off (see run() below): the commit's
# WAL flush does not depend on history. Durable commit rates are measured by
# scripts/bench_e2e.sh.
# With --explain it also prints EXPLAIN (ANALYZE, BUFFERS) of one claim and
# one status read in each state.
#
# Needs psql and pgbench, and a local Postgres (PGHOST/PGPORT/PGUSER, default
# 127.0.0.1:5432, user postgres, trust) where it may create and drop a
# database named hookrelay_bench_history_<random>.
#
# Usage: scripts/bench_history.sh [--rows N] [--clients C] [--time S] [--rounds R] [--explain] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=1000000
CLIENTS=4
TIME=10
ROUNDS=3
EXPLAIN=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --time) TIME="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --explain) EXPLAIN=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '/^# Usage:/p' "$0" | sed 's/^# //'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in psql pgbench; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install postgresql-client)" >&2; exit 2; }
done
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
BASE="hookrelay_bench_history_$$_$RANDOM"
EMPTY="${BASE}_empty" HISTORY="${BASE}_full"
DB=""
WORK="$(mktemp -d)"
cleanup() {
    if [ "$KEEP" = 1 ]; then
        echo "kept databases $EMPTY, $HISTORY and $WORK"
    else
        for d in "$EMPTY" "$HISTORY"; do
            psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true
        done
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
q() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

for DB in "$EMPTY" "$HISTORY"; do
    psql -X -q -d postgres -c "CREATE DATABASE $DB" >/dev/null
    for m in migrations/*.sql; do q -1 -f "$m" >/dev/null; done
    # A UUIDv7 of a time (random low bits), as the application makes them.
    q <<'SQL'
CREATE FUNCTION bench_uuid7(ts timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(random()::text), 1, 3)
            || '8' || substr(md5(random()::text), 1, 15))::uuid
$$;
CREATE TABLE bench_ids (k int PRIMARY KEY, id uuid NOT NULL);
SQL
done

cat >"$WORK/intake.sql" <<'SQL'
WITH ins AS (
    INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                          body, callback_url, idempotency_key, request_hash, seal)
    VALUES (bench_uuid7(clock_timestamp()), 'bench-intake', 'httpbin', 'create_thing', 'POST',
            '/anything/things/1', '{"thing_id":"1"}', '{"payload":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}',
            'http://127.0.0.1:18582/hook', NULL, '\x00', 'k-seal')
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING id, created_at
), jobs AS (
    INSERT INTO jobs (kind, command_id, run_at) SELECT 'execute', id, now() + interval '1 day' FROM ins
)
SELECT id, created_at FROM ins;
SQL
cat >"$WORK/claim.sql" <<'SQL'
WITH claimed AS (
    UPDATE jobs
       SET run_at = now() + make_interval(secs => 0),
           locked_until = now() + make_interval(secs => 0),
           lease_token = gen_random_uuid(),
           attempts = attempts + 1
     WHERE id IN (SELECT id FROM jobs
                   WHERE run_at <= now()
                   ORDER BY run_at
                   LIMIT 32
                   FOR UPDATE SKIP LOCKED)
 RETURNING id, kind, command_id, delivery_id, attempts, lease_token, trigger
), started AS (
    UPDATE commands SET status = 'in_progress', updated_at = now()
     WHERE id IN (SELECT command_id FROM claimed WHERE kind = 'execute')
       AND status = 'accepted'
)
SELECT cl.id, cl.kind, cl.command_id, cl.delivery_id, cl.attempts, cl.lease_token, cl.trigger,
       c.client_id, c.integration, c.operation, c.method, c.path, c.body,
       c.idempotency_key, c.params, c.created_at AS command_created_at,
       c.status AS command_status,
       d.url, d.payload, d.status AS delivery_status,
       c.callback_url, c.seal AS command_seal, d.seal AS delivery_seal,
       CASE WHEN cl.kind = 'deliver' THEN
           ARRAY(SELECT s.secret FROM signing_secrets s
                  WHERE s.client_id = c.client_id
                    AND (s.expires_at IS NULL OR s.expires_at > now())
                  ORDER BY s.created_at DESC)
       END AS secrets
  FROM claimed cl
  JOIN commands c ON c.id = cl.command_id
  LEFT JOIN deliveries d ON d.id = cl.delivery_id;
SQL
cat >"$WORK/status.sql" <<'SQL'
\set k random(1, 10000)
SELECT c.id, c.client_id, c.status, c.integration, c.operation, c.created_at, c.updated_at,
       c.result, c.callback_url,
       d.id AS delivery_id, d.status AS delivery_status, d.attempts AS delivery_attempts
  FROM commands c
  LEFT JOIN deliveries d ON d.command_id = c.id
 WHERE c.id = (SELECT id FROM bench_ids WHERE k = :k);
SQL

# The live set both databases share: 10,000 accepted commands with ready
# jobs (claimed in turn) whose ids the status reads pick from. Made afresh
# before each statement's run, so every run starts from the same state.
live_set() {
    q <<'SQL'
DELETE FROM jobs;
DELETE FROM bench_ids;
WITH ins AS (
    INSERT INTO commands (id, client_id, integration, operation, method, path, params, body,
                          callback_url, request_hash, seal)
    SELECT bench_uuid7(clock_timestamp()), 'bench-live', 'httpbin', 'create_thing', 'POST',
           '/anything/things/' || n, '{}', '{}', 'http://127.0.0.1:18582/hook', '\x00', 'k-seal'
      FROM generate_series(1, 10000) n
    RETURNING id
), ids AS (
    INSERT INTO bench_ids (k, id) SELECT row_number() OVER (ORDER BY id), id FROM ins
)
INSERT INTO jobs (kind, command_id) SELECT 'execute', id FROM ins;
VACUUM ANALYZE jobs;
VACUUM ANALYZE bench_ids;
SQL
}

# pgbench one script on $DB: prints "tps mean_latency_ms". The sessions run
# with synchronous_commit off: the WAL flush a commit waits for costs the same
# whatever the history (and on a shared machine it is mostly other people's
# I/O), so it would only drown the statements' own cost, which is what history
# can change. Nothing here is hookrelay's durable state.
run() {
    PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$TIME" -f "$WORK/$1.sql" "$DB" 2>&1 |
        awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%.0f %.3f\n", tps, lat}'
}

echo "pre-filling $HISTORY with $ROWS finished commands (30 days) ..."
start=$(date +%s)
DB="$HISTORY"
q <<SQL
SET session_replication_role = replica;  -- no triggers: the events are written below
INSERT INTO commands (id, client_id, integration, operation, method, path, params, body,
                      callback_url, request_hash, status, result, created_at, updated_at)
SELECT bench_uuid7(t), 'client-' || (n % 100), 'httpbin', 'create_thing', 'POST',
       '/anything/things/' || n, '{"thing_id":"' || n || '"}', '{"payload":"xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}',
       'http://127.0.0.1:18582/hook', '\x00', 'succeeded', '{"status_code":200,"body":{"ok":true}}', t, t
  FROM (SELECT n, now() - interval '30 days' + (n * interval '30 days' / $ROWS) AS t
          FROM generate_series(1, $ROWS) n) g;
INSERT INTO deliveries (id, command_id, client_id, url, payload, status, attempts,
                        created_at, updated_at, delivered_at, seal)
SELECT gen_random_uuid(), id, client_id, callback_url, '{"type":"command.succeeded"}', 'delivered', 1,
       created_at, created_at, created_at, 'k-seal'
  FROM commands WHERE client_id LIKE 'client-%';
INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, response_status)
SELECT id, 1, created_at, 3, 204 FROM deliveries;
INSERT INTO command_events (command_id, client_id, type, data, created_at)
SELECT id, client_id, 'command.succeeded', '{}', updated_at FROM commands WHERE client_id LIKE 'client-%';
SQL
q -c "VACUUM ANALYZE" >/dev/null
# Flush the pre-fill's ~1 GB of dirty pages now, not during the first runs
# (a checkpoint in progress makes every commit wait on the disk).
q -c "CHECKPOINT" >/dev/null
echo "pre-filled in $(( $(date +%s) - start )) s: $(q -At -c 'SELECT count(*) FROM commands') commands," \
     "$(q -At -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"

echo "pgbench -c $CLIENTS -T $TIME per statement, $ROUNDS rounds alternating empty / full"
declare -A SAMPLES
for round in $(seq "$ROUNDS"); do
    for s in intake claim status; do
        for DB in "$EMPTY" "$HISTORY"; do
            live_set
            r="$(run "$s")"
            SAMPLES["$DB,$s"]+="$r"$'\n'
            echo "round $round $s ${DB##*_}: tps, mean ms = $r"
            # The intake run's commands stay (history); its jobs must not
            # join the claimed ready set.
            if [ "$s" = intake ]; then
                q -c "DELETE FROM jobs WHERE run_at > now() + interval '1 hour'" >/dev/null
            fi
        done
    done
done
if [ "$EXPLAIN" = 1 ]; then
    for DB in "$EMPTY" "$HISTORY"; do
        live_set
        echo "== ${DB##*_}: one claim, one status read"
        q -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $(sed '$s/;$//' "$WORK/claim.sql")"
        q -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $(sed '1d;$s/;$//;s/:k/5000/' "$WORK/status.sql")"
    done
fi

median() { # stdin: "tps ms" lines → "tps ms" of the median latency
    sort -k2 -g | awk 'NF {a[n++] = $0} END {print a[int((n - 1) / 2)]}'
}
echo
echo "| statement | empty: tps / mean ms | $ROWS finished: tps / mean ms | change in mean latency |"
echo "| --- | --- | --- | --- |"
for s in intake claim status; do
    read -r t0 l0 <<<"$(printf '%s' "${SAMPLES[$EMPTY,$s]}" | median)"
    read -r t1 l1 <<<"$(printf '%s' "${SAMPLES[$HISTORY,$s]}" | median)"
    change=$(awk -v a="$l0" -v b="$l1" 'BEGIN {printf "%+.0f%%", (b - a) / a * 100}')
    echo "| $s | $t0 / $l0 | $t1 / $l1 | $change |"
done
