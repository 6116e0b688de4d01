#!/usr/bin/env bash
# A distributed clustersync on this machine: etcd, one coordinator and N workers, each its own
# process with its own log, like a real deployment squeezed onto one host. Ctrl-C stops
# everything.
#
#   deploy/local-cluster.sh --cluster0 URI --cluster1 URI [--workers N]
#   deploy/local-cluster.sh --demo [--workers N]      # against two local test replica sets
#
# Options:
#   --cluster0 URI, --cluster1 URI   the two clusters (or CLUSTERSYNC_CLUSTER0 / CLUSTERSYNC_CLUSTER1)
#   --demo             start two fake-mongod test replica sets (target/release/fake-mongod) and
#                      load sample data into the first one (when python3 has pymongo)
#   --workers N        worker processes (default 2)
#   --logs DIR         where the logs go (default: a new directory under /tmp)
#   --migration NAME   migration name (default: default)
#   --bin PATH         the clustersync binary (default: target/release/clustersync, else
#                      target/debug/clustersync)
#   --keep             keep etcd's data directory when stopping
#
# etcd comes from PATH (Debian: apt-get install etcd-server) or $ETCD. Every port is picked
# free at start. The URIs are handed to the processes through the environment, never on their
# command line (where `ps` would show credentials).
set -euo pipefail

cd "$(dirname "$0")/.."

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

cluster0="${CLUSTERSYNC_CLUSTER0:-}"
cluster1="${CLUSTERSYNC_CLUSTER1:-}"
demo=false
workers=2
logs=""
migration=default
bin=""
keep=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cluster0) cluster0="${2:?--cluster0 needs a URI}"; shift 2 ;;
        --cluster1) cluster1="${2:?--cluster1 needs a URI}"; shift 2 ;;
        --demo) demo=true; shift ;;
        --workers) workers="${2:?--workers needs a number}"; shift 2 ;;
        --logs) logs="${2:?--logs needs a directory}"; shift 2 ;;
        --migration) migration="${2:?--migration needs a name}"; shift 2 ;;
        --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) usage 0 ;;
        *) echo "error: unknown option $1" >&2; usage 2 ;;
    esac
done

die() { echo "error: $*" >&2; exit 2; }

[[ "$workers" =~ ^[0-9]+$ ]] || die "--workers must be a number, got $workers"
if $demo; then
    [[ -z "$cluster0$cluster1" ]] || die "--demo starts its own clusters: do not give --cluster0/--cluster1"
    fake_mongod="${CARGO_TARGET_DIR:-target}/release/fake-mongod"
    [[ -x "$fake_mongod" ]] || die "$fake_mongod not found: cargo build --release -p fake-mongod"
else
    [[ -n "$cluster0" && -n "$cluster1" ]] || die "give --cluster0 and --cluster1 (or --demo)"
fi
if [[ -z "$bin" ]]; then
    for candidate in "${CARGO_TARGET_DIR:-target}/release/clustersync" "${CARGO_TARGET_DIR:-target}/debug/clustersync"; do
        if [[ -x "$candidate" ]]; then bin="$candidate"; break; fi
    done
fi
[[ -n "$bin" && -x "$bin" ]] || die "no clustersync binary: cargo build --release -p clustersync-coordinator (or --bin PATH)"
etcd_bin="${ETCD:-$(command -v etcd || true)}"
[[ -n "$etcd_bin" ]] || die "etcd not found: apt-get install etcd-server (or set ETCD=/path/to/etcd)"
command -v curl >/dev/null || die "curl not found"

logs="${logs:-$(mktemp -d "${TMPDIR:-/tmp}/clustersync-local.XXXXXX")}"
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"
etcd_data="$(mktemp -d "${TMPDIR:-/tmp}/clustersync-etcd.XXXXXX")"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# name -> pid, in start order (stopped in reverse).
names=()
pids=()
stopping=false

stop_all() {
    $stopping && return
    stopping=true
    echo
    echo "stopping..."
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        # Let each process finish cleanly (a worker hands its tasks back) before the next one.
        for _ in $(seq 1 100); do
            kill -0 "${pids[$i]}" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "  ${names[$i]} did not stop within 10 s; killing it"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        wait "${pids[$i]}" 2>/dev/null || true
    done
    if $keep; then
        echo "etcd data kept in $etcd_data"
    else
        rm -rf "$etcd_data"
    fi
    echo "logs are in $logs"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: runs COMMAND in the background, stdout and stderr to $logs/NAME.log.
# Each process gets its own session, so Ctrl-C in the terminal reaches only this script, which
# then stops them in order: workers first (they hand their tasks back), etcd last.
start() {
    local name="$1"
    shift
    if command -v setsid >/dev/null; then
        setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
    else
        "$@" >"$logs/$name.log" 2>&1 </dev/null &
    fi
    names+=("$name")
    pids+=("$!")
}

# wait_for WHAT SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "error: $what did not come up within ${seconds}s; see $logs" >&2
            exit 1
        fi
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- etcd ------------------------------------------------------------------------------------
etcd_client_port="$(free_port)"
etcd_peer_port="$(free_port)"
etcd_url="http://127.0.0.1:$etcd_client_port"
start etcd "$etcd_bin" --name local --data-dir "$etcd_data" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer_port" \
    --auto-compaction-mode periodic --auto-compaction-retention 1h \
    --quota-backend-bytes $((2 * 1024 * 1024 * 1024))
wait_for etcd 30 curl -fsS "$etcd_url/health"
echo "etcd          $etcd_url  (data: $etcd_data)"

# --- demo clusters ---------------------------------------------------------------------------
if $demo; then
    source_port="$(free_port)"
    destination_port="$(free_port)"
    start fake-mongod-source "$fake_mongod" --port "$source_port" --replSet rs0 --noopIntervalMs 1000
    start fake-mongod-destination "$fake_mongod" --port "$destination_port" --replSet rs1 --noopIntervalMs 1000
    wait_for "the source test replica set" 30 port_open "$source_port"
    wait_for "the destination test replica set" 30 port_open "$destination_port"
    cluster0="mongodb://127.0.0.1:$source_port/?replicaSet=rs0"
    cluster1="mongodb://127.0.0.1:$destination_port/?replicaSet=rs1"
    echo "cluster0      $cluster0  (test replica set)"
    echo "cluster1      $cluster1  (test replica set)"
    if python3 -c 'import pymongo' 2>/dev/null; then
        python3 - "$cluster0" <<'PY'
import sys
import pymongo

client = pymongo.MongoClient(sys.argv[1])
shop = client["shop"]
shop["orders"].insert_many(
    [{"_id": i, "item": f"item-{i % 500}", "qty": i % 9, "note": "x" * 200} for i in range(50_000)]
)
shop["users"].insert_many([{"_id": f"user-{i}", "name": f"user {i}"} for i in range(5_000)])
shop["users"].create_index("name", unique=True)
client["logs"]["events"].insert_many([{"n": i, "level": "info"} for i in range(20_000)])
print("sample data   shop.orders (50000), shop.users (5000), logs.events (20000) in cluster0")
PY
    else
        echo "sample data   none (pip install pymongo to have some loaded)"
    fi
fi

# --- clustersync -----------------------------------------------------------------------------
export CLUSTERSYNC_CLUSTER0="$cluster0" CLUSTERSYNC_CLUSTER1="$cluster1"
rest_port="$(free_port)"
grpc_port="$(free_port)"
common=(--etcd "$etcd_url" --migrationName "$migration" --verbosity INFO)
start coordinator-1 "$bin" coordinator "${common[@]}" --id coordinator-1 --logPath "$logs/coordinator-1" \
    --port "$rest_port" --grpcPort "$grpc_port" --acceptDisclaimer
for i in $(seq 1 "$workers"); do
    start "worker-$i" "$bin" worker "${common[@]}" --id "worker-$i" --logPath "$logs/worker-$i"
done
wait_for "the coordinator's REST API" 60 curl -fsS "http://127.0.0.1:$rest_port/api/v1/progress"
wait_for "the coordinator's gRPC API" 30 "$bin" ctl --address "http://127.0.0.1:$grpc_port" progress

cat <<EOF
coordinator   coordinator-1 and $workers worker(s), migration "$migration"
REST API      http://127.0.0.1:$rest_port/api/v1
                curl -s http://127.0.0.1:$rest_port/api/v1/start -XPOST --data '{"source": "cluster0", "destination": "cluster1"}'
gRPC API      http://127.0.0.1:$grpc_port
                $bin ctl --address http://127.0.0.1:$grpc_port start
                $bin ctl --address http://127.0.0.1:$grpc_port progress --watch
logs          $logs
Press Ctrl-C to stop everything.
EOF

# Report processes that exit on their own; keep the rest running until Ctrl-C.
declare -A reported=()
while true; do
    for i in "${!pids[@]}"; do
        if [[ -z "${reported[$i]:-}" ]] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
            reported[$i]=1
            status=0
            wait "${pids[$i]}" 2>/dev/null || status=$?
            echo "warning: ${names[$i]} exited with status $status; see $logs/${names[$i]}.log" >&2
        fi
    done
    sleep 1
done
