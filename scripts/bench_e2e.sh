#!/usr/bin/env bash
# End-to-end benchmark with an independent load generator and external peers:
#
#   wrk (POST /v1/commands) → release `hookrelay serve` → nginx "upstream"
#                                        ↘ signed callback → nginx "receiver"
#
# Everything is measured from outside the process under test: accept latency by
# wrk, callback arrival times by nginx's access log ($msec, with the webhook-id
# header), Postgres work by pg_stat_database and the WAL position, CPU by
# /proc/<pid>/stat. `pgbench -N` runs in the same script (before and after the
# load) so the result can be compared across machines as a ratio.
#
# Reports: commands/s to the last callback, accept p50/p99, POST → callback
# p50/p99, lost and duplicated callbacks, commits and WAL bytes per command, CPU
# split between hookrelay, Postgres, nginx and wrk, pgbench tps and the ratio.
# docs/performance.md explains each number and records results.
#
# Needs: wrk, nginx, psql, pgbench, curl, cargo (unless --bin), and a local
# Postgres (PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432, user postgres, trust
# auth) where it may create and drop databases named hookrelay_bench_<random>.
# Installs nothing: a missing tool is named with the apt-get command to install it.
#
# Usage: scripts/bench_e2e.sh [options]
#   --threads N        wrk threads (default 1)
#   --connections N    wrk connections (default 32)
#   --duration D       wrk duration, wrk syntax: 5s, 1m (default 5s)
#   --body-bytes N     size of each POST /v1/commands body in bytes (default 200)
#   --warmup D         warm-up load before the measured run, 0 = none (default 1s)
#   --timeout S        seconds to wait for the last callback (default 120)
#   --pgbench-clients N   pgbench -c (default 8)
#   --pgbench-time S      pgbench -T, seconds (default 5)
#   --set KEY=VALUE    override a hookrelay setting, e.g. --set dispatcher.concurrency=1024
#                      (passed as HOOKRELAY__DISPATCHER__CONCURRENCY; repeatable)
#   --bin PATH         use this hookrelay binary instead of `cargo build --release`
#   --port-base P      API on P, upstream on P+1, receiver on P+2 (default 18580)
#   --json FILE        also write the results as one JSON object to FILE
#   --keep             keep the databases and the work directory (printed) for inspection
#   --read-status D    after the run, also read one command's (cached) status with
#                      wrk -c64 for D (e.g. 10s) and report reads/s and p50/p99
#   --drain N          instead of the run: fill a backlog of N commands with
#                      `serve --role api` alone (admission control off), then start
#                      one `serve --role worker` and report how fast it drains them
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=1
CONNS=32
DURATION=5s
BODY_BYTES=200
WARMUP=1s
TIMEOUT=120
PGB_CLIENTS=8
PGB_TIME=5
BIN=""
PORT_BASE=18580
JSON_OUT=""
KEEP=0
SETTINGS=()
READ_STATUS=""
DRAIN=0

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --body-bytes) BODY_BYTES="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --pgbench-clients) PGB_CLIENTS="$2"; shift 2 ;;
        --pgbench-time) PGB_TIME="$2"; shift 2 ;;
        --set) SETTINGS+=("$2"); shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --port-base) PORT_BASE="$2"; shift 2 ;;
        --json) JSON_OUT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --read-status) READ_STATUS="$2"; shift 2 ;;
        --drain) DRAIN="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# --- tools -------------------------------------------------------------------
missing=()
packages=()
need() { # $1 = command, $2 = Debian package
    command -v "$1" >/dev/null 2>&1 || { missing+=("$1"); packages+=("$2"); }
}
need wrk wrk
need nginx nginx-light
need psql postgresql-client
need pgbench postgresql-client
need curl curl
[ -n "$BIN" ] || need cargo rustup
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    apt=$(printf '%s\n' "${packages[@]}" | grep -v rustup | sort -u | tr '\n' ' ')
    [ -n "$apt" ] && echo "install with: sudo apt-get install -y $apt" >&2
    [[ " ${missing[*]} " == *" cargo "* ]] && echo "cargo: install Rust (https://rustup.rs) or pass --bin PATH" >&2
    exit 2
fi
NGINX=$(command -v nginx)

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
psql -d postgres -Atqc 'SELECT 1' >/dev/null || {
    echo "cannot reach Postgres at $PGUSER@$PGHOST:$PGPORT (start it, or set PGHOST/PGPORT/PGUSER)" >&2
    exit 2
}

if [ -z "$BIN" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    echo "building the release binary (cargo build --release) ..." >&2
    cargo build --release --quiet
    BIN="$CARGO_TARGET_DIR/release/hookrelay"
fi
[ -x "$BIN" ] || { echo "no executable at $BIN" >&2; exit 2; }

# More connections than the default 1024 descriptors: wrk, nginx and the dispatcher.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- work directory, databases, cleanup ------------------------------------------
WORK=$(mktemp -d -t hookrelay-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as an unprivileged user when started as root
SUFFIX=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="hookrelay_bench_$SUFFIX"
PGB_DB="hookrelay_bench_${SUFFIX}_pgbench"
API_PORT=$PORT_BASE; UP_PORT=$((PORT_BASE + 1)); RX_PORT=$((PORT_BASE + 2))
SERVER=""; NGINX_PID=""
cleanup() {
    set +e
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    if [ "$KEEP" = 1 ]; then
        echo "kept: $WORK, databases $DB and $PGB_DB" >&2
    else
        psql -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
        psql -d postgres -qc "DROP DATABASE IF EXISTS $PGB_DB WITH (FORCE)" 2>/dev/null || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
sql() { psql -d "$DB" -Atqc "$1"; }

# CPU time of a process (utime + stime; with $2 = 1 also its reaped children),
# in clock ticks. The command name in /proc/<pid>/stat may contain spaces, so
# fields are counted after its closing parenthesis.
TICKS_PER_S=$(getconf CLK_TCK)
ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    awk -v c="${2:-0}" '{ print $12 + $13 + (c ? $14 + $15 : 0) }' <<<"$stat"
}
# A process tree: the parent with its reaped children plus its live children.
tree_ticks() {
    local total child
    total=$(ticks "$1" 1)
    for child in $(pgrep -P "$1" || true); do total=$((total + $(ticks "$child"))); done
    echo "$total"
}

# Postgres CPU spent for this run alone, robust to other databases' work on
# the same server: the backends connected to the run's database plus the
# server's background processes (WAL writer, checkpointer, autovacuum, ...).
# `pg_cpu_mark` records their counters; `pg_cpu_since` prints the ticks used
# since by those processes and by new ones (a backend that exited meanwhile
# is not counted).
declare -A PG_MARK
pg_own_pids() {
    psql -d postgres -Atc "SELECT pid FROM pg_stat_activity
                           WHERE datname = '$DB' OR backend_type <> 'client backend'"
}
pg_cpu_mark() {
    local pid
    PG_MARK=()
    for pid in $(pg_own_pids); do PG_MARK[$pid]=$(ticks "$pid"); done
}
pg_cpu_since() {
    local pid now total=0
    for pid in $(pg_own_pids); do
        now=$(ticks "$pid")
        [ "$now" -gt 0 ] && total=$((total + now - ${PG_MARK[$pid]:-0}))
    done
    echo "$total"
}

# --- the machine -------------------------------------------------------------------
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
MEM_GIB=$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)
PG_VERSION=$(psql -d postgres -Atc 'SHOW server_version' | awk '{print $1}')
PG_FSYNC=$(psql -d postgres -Atc 'SHOW fsync')
PG_SYNC_COMMIT=$(psql -d postgres -Atc 'SHOW synchronous_commit')
# The postmaster is the parent of every Postgres process (here found through the
# long-lived checkpointer); its CPU counters cover all of them (live children +
# reaped ones), if it runs on this machine.
PG_CHECKPOINTER=$(psql -d postgres -Atc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
PG_MASTER=$(ps -o ppid= -p "$PG_CHECKPOINTER" 2>/dev/null | xargs || true)
if [ -z "$PG_MASTER" ] || [ "$(cat "/proc/$PG_MASTER/comm" 2>/dev/null)" != postgres ]; then
    PG_MASTER="" # Postgres is not a local process: no CPU figure for it
fi

# --- pgbench -N, the machine's yardstick ----------------------------------------------
pgbench_tps() {
    pgbench -N -c "$PGB_CLIENTS" -T "$PGB_TIME" "$PGB_DB" 2>/dev/null |
        awk '/^tps = / {printf "%.0f", $3}'
}
psql -d postgres -qc "CREATE DATABASE $PGB_DB"
pgbench -i -q -s 1 "$PGB_DB" > "$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; exit 1; }
echo "pgbench -N -c$PGB_CLIENTS -T$PGB_TIME (before) ..." >&2
PGB_BEFORE=$(pgbench_tps)

# --- peers: nginx as upstream and receiver --------------------------------------------
mkdir -p "$WORK/nginx/tmp"
cat > "$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    # The third-party API: 200 with a small JSON body to any method and path.
    server {
        listen 127.0.0.1:$UP_PORT;
        default_type application/json;
        location / { return 200 '{"ok":true}'; }
    }
    # The webhook receiver: 204 to everything; one unbuffered log line per
    # callback with its arrival time (seconds, ms resolution) and webhook-id.
    log_format callbacks '\$msec \$http_webhook_id \$status';
    server {
        listen 127.0.0.1:$RX_PORT;
        access_log $WORK/nginx/callbacks.log callbacks;
        location / { return 204; }
    }
}
NGINX
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx/stderr.log" &
NGINX_PID=$!
for _ in $(seq 1 50); do
    curl -fs -o /dev/null "http://127.0.0.1:$RX_PORT/" && curl -fs -o /dev/null "http://127.0.0.1:$UP_PORT/" && break
    sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$RX_PORT/" || {
    echo "nginx did not start:" >&2; cat "$WORK/nginx/stderr.log" "$WORK/nginx/error.log" >&2 2>/dev/null; exit 1
}

# --- hookrelay ---------------------------------------------------------------------------
cat > "$WORK/hookrelay.toml" <<TOML
# Generated by scripts/bench_e2e.sh: defaults except what the benchmark needs.
[server]
bind = "127.0.0.1:$API_PORT"
[database]
url = "postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
[security]
# The receiver is on loopback.
allow_private_callbacks = true
[limits]
# API rate limits off: the benchmark measures the pipeline, not the limiter.
per_ip_per_s = 0
per_client_per_s = 0
[delivery]
# Every callback goes to one receiver host: the per-host cap is raised to the
# dispatcher's concurrency (512 by default) so it does not bound the run.
max_in_flight_per_host = 512
[telemetry]
filter = "warn"
[integrations.bench]
base_url = "http://127.0.0.1:$UP_PORT"
trusted = true
[integrations.bench.operations.create]
method = "POST"
path = "/things/{thing_id}"
TOML
ENV_SETTINGS=()
for kv in "${SETTINGS[@]+"${SETTINGS[@]}"}"; do
    key=${kv%%=*}; value=${kv#*=}
    [ "$key" != "$kv" ] && [[ "$key" == *.* ]] || { echo "--set wants section.key=value, got $kv" >&2; exit 2; }
    ENV_SETTINGS+=("HOOKRELAY__$(tr '[:lower:]' '[:upper:]' <<<"${key//./__}")=$value")
done
ROLE_ARGS=()
if [ "$DRAIN" -gt 0 ]; then
    # The backlog is filled by the API alone; admission control would refuse it.
    ROLE_ARGS=(--role api)
    ENV_SETTINGS+=(HOOKRELAY__ADMISSION__MAX_READY_BACKLOG=0 HOOKRELAY__ADMISSION__MAX_OUTBOX_LAG_MS=0)
fi
env "${ENV_SETTINGS[@]+"${ENV_SETTINGS[@]}"}" "$BIN" serve "${ROLE_ARGS[@]+"${ROLE_ARGS[@]}"}" --config "$WORK/hookrelay.toml" > "$WORK/hookrelay.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
    curl -fs -o /dev/null "http://127.0.0.1:$API_PORT/readyz" && break
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.2
done
curl -fs -o /dev/null "http://127.0.0.1:$API_PORT/readyz" || {
    echo "hookrelay did not start:" >&2; tail -20 "$WORK/hookrelay.log" >&2; exit 1
}
token() { "$BIN" token --config "$WORK/hookrelay.toml" --sub "$1" --role client --ttl 3600; }

# --- load ----------------------------------------------------------------------------------
cat > "$WORK/post_command.lua" <<'LUA'
-- POST /v1/commands with a fixed-size JSON body; each request has its own thing_id.
local token = os.getenv("BENCH_TOKEN")
local callback = os.getenv("BENCH_CALLBACK")
local size = tonumber(os.getenv("BENCH_BODY_BYTES"))
local threads = 0
local counter = 0

function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end

function init(args)
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
    counter = counter + 1
    local head = string.format(
        '{"integration":"bench","operation":"create","params":{"thing_id":"t%d-%09d"},"body":{"pad":"',
        tid or 0, counter)
    local tail = '"},"callback_url":"' .. callback .. '"}'
    local pad = size - #head - #tail
    if pad < 0 then pad = 0 end
    return wrk.format(nil, nil, nil, head .. string.rep("x", pad) .. tail)
end
LUA
export BENCH_CALLBACK="http://127.0.0.1:$RX_PORT/hooks" BENCH_BODY_BYTES="$BODY_BYTES"
run_wrk() { # $1 = token, $2 = duration, $3 = connections, $4 = output file
    BENCH_TOKEN="$1" wrk -t"$THREADS" -c"$3" -d"$2" --timeout 30s --latency \
        -s "$WORK/post_command.lua" "http://127.0.0.1:$API_PORT/v1/commands" > "$4"
}
# Callbacks of one client's commands, as delivered by the database.
delivered() {
    sql "SELECT count(*) FROM deliveries d JOIN commands c ON c.id = d.command_id
         WHERE c.client_id = '$1' AND d.status = 'delivered'"
}
commands_of() { sql "SELECT count(*) FROM commands WHERE client_id = '$1'"; }

# --- drain mode: a backlog of N commands, then one worker --------------------------------
if [ "$DRAIN" -gt 0 ]; then
    TOKEN=$(token bench)
    echo "filling a backlog of $DRAIN commands (serve --role api) ..." >&2
    T_FILL=$(now)
    while [ "$(commands_of bench)" -lt "$DRAIN" ]; do
        run_wrk "$TOKEN" 2s "$CONNS" "$WORK/wrk-fill.txt"
    done
    FILLED=$(commands_of bench)
    FILL_RATE=$(awk "BEGIN { printf \"%.0f\", $FILLED / ($(now) - $T_FILL) }")
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    RX_BASE=$(wc -l < "$WORK/nginx/callbacks.log")
    echo "draining $FILLED commands with one serve --role worker ..." >&2
    T0=$(now)
    env "${ENV_SETTINGS[@]+"${ENV_SETTINGS[@]}"}" "$BIN" serve --role worker --config "$WORK/hookrelay.toml" > "$WORK/worker.log" 2>&1 &
    SERVER=$!
    arrived() { tail -n +"$((RX_BASE + 1))" "$WORK/nginx/callbacks.log" | awk '$3 ~ /^2/ {print $2}' | sort -u | wc -l; }
    deadline=$(( $(date +%s) + TIMEOUT ))
    TIMED_OUT=0
    until [ $(($(wc -l < "$WORK/nginx/callbacks.log") - RX_BASE)) -ge "$FILLED" ] && [ "$(arrived)" -ge "$FILLED" ]; do
        [ "$(date +%s)" -ge "$deadline" ] && { TIMED_OUT=1; break; }
        sleep 0.2
    done
    T1=$(now)
    GOT=$(arrived)
    LAST=$(tail -n +"$((RX_BASE + 1))" "$WORK/nginx/callbacks.log" | awk 'BEGIN {m = 0} $1 > m {m = $1} END {print m}')
    DRAIN_RATE=$(awk "BEGIN { s = $LAST - $T0; printf \"%.0f\", (s > 0) ? $GOT / s : 0 }")
    cat <<REPORT

machine: $(nproc) CPUs ($CPU_MODEL), $MEM_GIB GiB RAM; Postgres $PG_VERSION (fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC_COMMIT)
binary:  $BIN${SETTINGS[*]+; settings: ${SETTINGS[*]}}

| metric                                   | value |
| ---------------------------------------- | ----- |
| backlog filled by serve --role api       | $FILLED commands at $FILL_RATE commands/s |
| callbacks after one worker started       | $GOT of $FILLED$([ "$TIMED_OUT" = 1 ] && echo " (timed out after ${TIMEOUT}s)") |
| drain rate (worker start → last callback)| $DRAIN_RATE commands/s |
REPORT
    exit 0
fi

if [ "$WARMUP" != 0 ]; then
    echo "warm-up ($WARMUP) ..." >&2
    run_wrk "$(token bench-warmup)" "$WARMUP" 4 "$WORK/wrk-warmup.txt"
    sleep 0.5
    want=$(commands_of bench-warmup)
    for _ in $(seq 1 $((TIMEOUT * 5))); do
        [ "$(delivered bench-warmup)" -ge "$want" ] && break
        sleep 0.2
    done
fi

TOKEN=$(token bench)
# Let pg_stat_database catch up with the warm-up: a backend that goes idle
# reports its last transactions after up to 10 s.
sleep 11
RX_BASE=$(wc -l < "$WORK/nginx/callbacks.log")
XACT_0=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
LSN_0=$(sql "SELECT pg_current_wal_lsn()")
CPU_HR_0=$(ticks "$SERVER"); CPU_NGINX_0=$(tree_ticks "$NGINX_PID")
CPU_PG_0=$([ -n "$PG_MASTER" ] && tree_ticks "$PG_MASTER" || echo 0)
[ -n "$PG_MASTER" ] && pg_cpu_mark
T0=$(now)
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, $BODY_BYTES-byte bodies ..." >&2
TIMEFORMAT='%3U %3S'
{ time run_wrk "$TOKEN" "$DURATION" "$CONNS" "$WORK/wrk.txt"; } 2> "$WORK/wrk-cpu.txt"
T_WRK=$(now)
sleep 1 # requests wrk cut off at its deadline may still be committed
ACCEPTED=$(commands_of bench)

# Wait for the callbacks, counted from the receiver's log (distinct webhook-ids
# that arrived since the run started).
echo "waiting for $ACCEPTED callbacks (up to ${TIMEOUT}s) ..." >&2
# The cheap line count is checked first, so polling costs little CPU meanwhile.
arrived() { tail -n +"$((RX_BASE + 1))" "$WORK/nginx/callbacks.log" | awk '$3 ~ /^2/ {print $2}' | sort -u | wc -l; }
all_arrived() {
    [ $(($(wc -l < "$WORK/nginx/callbacks.log") - RX_BASE)) -ge "$ACCEPTED" ] && [ "$(arrived)" -ge "$ACCEPTED" ]
}
deadline=$(( $(date +%s) + TIMEOUT ))
TIMED_OUT=0
until all_arrived; do
    [ "$(date +%s)" -ge "$deadline" ] && { TIMED_OUT=1; break; }
    sleep 0.1
done
T1=$(now)
CPU_HR_1=$(ticks "$SERVER"); CPU_NGINX_1=$(tree_ticks "$NGINX_PID")
CPU_PG_1=$([ -n "$PG_MASTER" ] && tree_ticks "$PG_MASTER" || echo 0)
CPU_PG_OWN_TICKS=$([ -n "$PG_MASTER" ] && pg_cpu_since || echo 0)
LSN_1=$(sql "SELECT pg_current_wal_lsn()")
DELIVERED_DB=$(delivered bench)

# Cached status reads under no write load: one command's status document.
READS_PER_S=""; READ_P50=""; READ_P99=""
if [ -n "$READ_STATUS" ]; then
    ONE_ID=$(sql "SELECT id FROM commands WHERE client_id = 'bench' LIMIT 1")
    # A reader, not the owner: the owner's reads skip the cache for
    # query.read_your_writes_ms after its last POST.
    READER=$("$BIN" token --config "$WORK/hookrelay.toml" --sub bench-reader --role reader --ttl 3600)
    echo "status reads: wrk -c64 -d$READ_STATUS GET /v1/commands/$ONE_ID ..." >&2
    wrk -t"$THREADS" -c64 -d"$READ_STATUS" --latency -H "Authorization: Bearer $READER" \
        "http://127.0.0.1:$API_PORT/v1/commands/$ONE_ID" > "$WORK/wrk-read.txt"
    READS_PER_S=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk-read.txt")
    READ_P50=$(awk '$1 == "50%" {print $2}' "$WORK/wrk-read.txt")
    READ_P99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk-read.txt")
fi

# Stop hookrelay so its connections report their last transaction counts.
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
sleep 1
XACT_1=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
kill -QUIT "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""

# --- join arrivals with the commands -------------------------------------------------------
tail -n +"$((RX_BASE + 1))" "$WORK/nginx/callbacks.log" > "$WORK/callbacks-run.log"
sql "CREATE TABLE bench_arrivals (msec numeric NOT NULL, webhook_id text NOT NULL, status int NOT NULL)"
psql -d "$DB" -qc "\\copy bench_arrivals FROM '$WORK/callbacks-run.log' WITH (FORMAT text, DELIMITER ' ')"
# One line: distinct callbacks, duplicate arrivals, last arrival (epoch s),
# POST → callback p50/p99 in ms (first arrival − commands.created_at), failed commands.
read -r CALLBACKS DUPLICATES LAST_ARRIVAL LAT_P50 LAT_P99 FAILED <<<"$(psql -d "$DB" -AtF ' ' -c "
    WITH per_delivery AS (
        SELECT d.id, min(a.msec) AS first_at, count(*) AS n, extract(epoch FROM c.created_at) AS created
        FROM bench_arrivals a
        JOIN deliveries d ON d.id::text = a.webhook_id
        JOIN commands c ON c.id = d.command_id AND c.client_id = 'bench'
        WHERE a.status BETWEEN 200 AND 299
        GROUP BY d.id, c.created_at)
    SELECT count(*), coalesce(sum(n - 1), 0), coalesce(max(first_at), 0),
           coalesce(round(percentile_disc(0.5) WITHIN GROUP (ORDER BY (first_at - created) * 1000)::numeric, 1), 0),
           coalesce(round(percentile_disc(0.99) WITHIN GROUP (ORDER BY (first_at - created) * 1000)::numeric, 1), 0),
           (SELECT count(*) FROM commands WHERE client_id = 'bench' AND status = 'failed')
    FROM per_delivery")"
LOST=$((ACCEPTED - CALLBACKS))
WAL_BYTES=$(sql "SELECT pg_wal_lsn_diff('$LSN_1', '$LSN_0')::bigint")

echo "pgbench -N -c$PGB_CLIENTS -T$PGB_TIME (after) ..." >&2
PGB_AFTER=$(pgbench_tps)

# --- report -------------------------------------------------------------------------------
# wrk prints latencies as 812.00us, 18.52ms, 1.02s or 1.50m; convert to ms.
to_ms() { awk '{ v = $1 + 0; u = $1; sub(/^[0-9.]+/, "", u);
                 f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : 0;
                 printf "%.2f", v * f }' <<<"$1"; }
ACC_P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt")")
ACC_P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")")
WRK_RPS=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk.txt")
WRK_NON2XX=$(awk '/Non-2xx/ {print $5}' "$WORK/wrk.txt"); WRK_NON2XX=${WRK_NON2XX:-0}
WRK_ERRORS=$(awk '/Socket errors/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt"); WRK_ERRORS=${WRK_ERRORS:-0}
read -r WRK_USER WRK_SYS <<<"$(tail -n 1 "$WORK/wrk-cpu.txt")"

calc() { awk "BEGIN { printf \"$1\", $2 }"; }
WINDOW=$(calc %.3f "$T1 - $T0")
if [ "$CALLBACKS" -gt 0 ]; then
    E2E_SPAN=$(calc %.3f "$LAST_ARRIVAL - $T0")
    CMDS_PER_S=$(calc %.0f "$CALLBACKS / $E2E_SPAN")
else
    E2E_SPAN=0; CMDS_PER_S=0
fi
per_cmd() { [ "$ACCEPTED" -gt 0 ] && calc "$2" "($1) / $ACCEPTED" || echo 0; }
COMMITS_PER_CMD=$(per_cmd "$XACT_1 - $XACT_0" %.2f)
WAL_PER_CMD=$(per_cmd "$WAL_BYTES" %.0f)
CPU_HR=$(calc %.2f "($CPU_HR_1 - $CPU_HR_0) / $TICKS_PER_S")
CPU_PG_SERVER=$(calc %.2f "($CPU_PG_1 - $CPU_PG_0) / $TICKS_PER_S")
CPU_PG=$(calc %.2f "$CPU_PG_OWN_TICKS / $TICKS_PER_S")
CPU_NGINX=$(calc %.2f "($CPU_NGINX_1 - $CPU_NGINX_0) / $TICKS_PER_S")
CPU_WRK=$(calc %.2f "$WRK_USER + $WRK_SYS")
PGB_MEAN=$(calc %.0f "($PGB_BEFORE + $PGB_AFTER) / 2")
RATIO=$( [ "${PGB_MEAN:-0}" -gt 0 ] && calc %.2f "$CMDS_PER_S / $PGB_MEAN" || echo 0)
CPU_ALL=$(calc %.3f "$CPU_HR + $CPU_PG + $CPU_NGINX + $CPU_WRK")
# seconds, share of the CPU used by the four, and CPU time per accepted command
cpu_text() {
    local share=0 per=0
    [ "$(calc %.0f "$CPU_ALL * 1000")" -gt 0 ] && share=$(calc %.0f "100 * $1 / $CPU_ALL")
    [ "$ACCEPTED" -gt 0 ] && per=$(calc %.0f "1000000 * $1 / $ACCEPTED")
    echo "$1 s, ${share}%, $per µs/command"
}
CPU_PG_TEXT="$(cpu_text "$CPU_PG") (whole server: $CPU_PG_SERVER s)"
[ -n "$PG_MASTER" ] || CPU_PG_TEXT="n/a (Postgres is not a local process)"

cat <<REPORT

machine: $(nproc) CPUs ($CPU_MODEL), $MEM_GIB GiB RAM; Postgres $PG_VERSION (fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC_COMMIT)
load:    wrk -t$THREADS -c$CONNS -d$DURATION --latency, $BODY_BYTES-byte POST /v1/commands bodies; warm-up $WARMUP
binary:  $BIN${SETTINGS[*]+; settings: ${SETTINGS[*]}}

| metric                                   | value |
| ---------------------------------------- | ----- |
| commands accepted (202, in the database) | $ACCEPTED |
| callbacks received (distinct webhook-id) | $CALLBACKS |
| lost / duplicated callbacks              | $LOST / $DUPLICATES$([ "$TIMED_OUT" = 1 ] && echo " (timed out after ${TIMEOUT}s)") |
| commands/s to the last callback          | $CMDS_PER_S ($CALLBACKS in $E2E_SPAN s) |
| intake (wrk requests/s)                  | $WRK_RPS ($WRK_NON2XX non-2xx, $WRK_ERRORS socket errors) |
| accept p50 / p99                         | $ACC_P50 / $ACC_P99 ms |
| POST → callback p50 / p99                | $LAT_P50 / $LAT_P99 ms |
| commits per command                      | $COMMITS_PER_CMD |
| WAL bytes per command                    | $WAL_PER_CMD |
| CPU hookrelay                            | $(cpu_text "$CPU_HR") |
| CPU Postgres (own backends + background) | $CPU_PG_TEXT |
| CPU nginx (upstream + receiver)          | $(cpu_text "$CPU_NGINX") |
| CPU wrk                                  | $(cpu_text "$CPU_WRK") |
| pgbench -N -c$PGB_CLIENTS tps (before / after)     | $PGB_BEFORE / $PGB_AFTER |
| commands/s ÷ pgbench tps                 | $RATIO |

CPU: time used from the first POST until every callback was seen (${WINDOW} s, $(nproc) CPUs);
share of what the four used together; per accepted command.
Latency POST → callback: callback arrival (nginx \$msec) − commands.created_at.
Failed commands (upstream error, callback still sent): $FAILED. Delivered per the database: $DELIVERED_DB.
REPORT
[ -n "$READ_STATUS" ] && echo "Cached status reads (wrk -c64 -d$READ_STATUS, one command): $READS_PER_S reads/s, p50 $READ_P50, p99 $READ_P99."

if [ -n "$JSON_OUT" ]; then
    cat > "$JSON_OUT" <<JSON
{"machine": {"cpus": $(nproc), "cpu_model": "$CPU_MODEL", "mem_gib": $MEM_GIB,
  "postgres": "$PG_VERSION", "fsync": "$PG_FSYNC", "synchronous_commit": "$PG_SYNC_COMMIT"},
 "load": {"threads": $THREADS, "connections": $CONNS, "duration": "$DURATION", "body_bytes": $BODY_BYTES,
  "settings": [$(for s in "${SETTINGS[@]+"${SETTINGS[@]}"}"; do printf '"%s",' "$s"; done | sed 's/,$//')]},
 "accepted": $ACCEPTED, "callbacks": $CALLBACKS, "lost": $LOST, "duplicates": $DUPLICATES, "timed_out": $([ "$TIMED_OUT" = 1 ] && echo true || echo false),
 "commands_per_s": $CMDS_PER_S, "intake_requests_per_s": $WRK_RPS, "non_2xx": $WRK_NON2XX, "socket_errors": $WRK_ERRORS,
 "accept_ms": {"p50": $ACC_P50, "p99": $ACC_P99},
 "post_to_callback_ms": {"p50": $LAT_P50, "p99": $LAT_P99},
 "commits": $((XACT_1 - XACT_0)), "wal_bytes": $WAL_BYTES,
 "commits_per_command": $COMMITS_PER_CMD, "wal_bytes_per_command": $WAL_PER_CMD,
 "cpu_s": {"window_s": $WINDOW, "hookrelay": $CPU_HR, "postgres": $([ -n "$PG_MASTER" ] && echo "$CPU_PG" || echo null), "postgres_server": $([ -n "$PG_MASTER" ] && echo "$CPU_PG_SERVER" || echo null), "nginx": $CPU_NGINX, "wrk": $CPU_WRK},
 "pgbench_tps": {"before": $PGB_BEFORE, "after": $PGB_AFTER, "clients": $PGB_CLIENTS, "seconds": $PGB_TIME},
 "ratio_to_pgbench": $RATIO}
JSON
    echo "wrote $JSON_OUT" >&2
fi
