#!/usr/bin/env bash
# The console over the query bench's archive (`cargo bench --bench query` makes it: 10 million
# records, 3 nodes, 10 days). A release gateway (node `console-bench`, an empty journal of its
# own) is given the archive (hard-linked: its own archiver can write beside the bench's files,
# never into them) and the three nodes' public keys ([auditors] node_keys), with the console on.
#
# Measured, 3 runs each, medians:
#   * the first result of a patient search: sign in, then POST /search for a typical patient
#     (rank 400,000), the whole answer page timed by curl; against the peer, `auditgate report
#     access --patient` for the same patient over the same archive (the CLI process whole);
#   * the page's weight (bytes, one request: no script, no style sheet, no image to fetch);
#   * the gateway's memory (VmRSS) idle after start and sign-in, and its peak while 10 auditors
#     search at once (10 concurrent curl clients, 3 searches each, different patients).
# Output: a table, and target/bench-results/console.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '[console.sh] %s\n' "$*" >&2; }

RECORDS="${AUDITGATE_BENCH_RECORDS:-10000000}"
DATA="$ROOT/target/bench-data/query-$RECORDS"
if [[ ! -d "$DATA/archive" ]]; then
    say "no archive of $RECORDS records yet: making it with the query bench"
    AUDITGATE_BENCH_ONLY=reports AUDITGATE_BENCH_RECORDS="$RECORDS" cargo bench --bench query >&2
fi
cargo build --release --bin auditgate >&2
BIN="$ROOT/target/release/auditgate"

mkdir -p "$ROOT/target/bench-tmp" "$ROOT/target/bench-results"
WORK="$(mktemp -d "$ROOT/target/bench-tmp/console.XXXXXX")"
cp -al "$DATA/archive" "$WORK/archive"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
CONSOLE="$(free_port)"
ADMIN="$(free_port)"
export BENCH_CONSOLE_SECRET="console-bench-secret-of-at-least-32-bytes!"
cat >"$WORK/auditgate.toml" <<EOF
[server]
node = "console-bench"
listen = ["127.0.0.1:$PORT"]
threads = 2
pid_file = "$WORK/pid"
upgrade_sock = "$WORK/upgrade.sock"
[upstream]
url = "http://127.0.0.1:9"
[journal]
dir = "$WORK/journal"
[checkpoint]
key_file = "$WORK/checkpoint.key"
create_key_if_missing = true
[archive]
kind = "dir"
dir = "$WORK/archive"
prefix = "bench"
[identity]
[[identity.issuers]]
issuer = "https://console-bench.invalid"
audiences = ["auditgate"]
algorithms = ["HS256"]
hmac_secrets = [{ env_var = "BENCH_CONSOLE_SECRET" }]
[rules]
files = ["$ROOT/rules/fhir-r4.toml"]
[auditors]
roles = ["auditor"]
node_keys = ["$DATA/gw-1.key.pub", "$DATA/gw-2.key.pub", "$DATA/gw-3.key.pub"]
[console]
enabled = true
listen = "127.0.0.1:$CONSOLE"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
format = "json"
EOF

"$BIN" run --config "$WORK/auditgate.toml" >"$WORK/gateway.log" 2>&1 &
GW=$!
cleanup() { kill -9 "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$CONSOLE/" && break
    kill -0 "$GW" 2>/dev/null || { say "the gateway stopped:"; tail -5 "$WORK/gateway.log" >&2; exit 1; }
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
# Records of the gateway's own come under a checkpoint within a few seconds.
sleep 3

TOKEN="$("$BIN" token --config "$WORK/auditgate.toml" --sub bench-auditor --role auditor)"
sign_in() { # sign_in COOKIEJAR -> prints the session's form token
    curl -s -c "$1" -o /dev/null --data-urlencode "token=$TOKEN" "http://127.0.0.1:$CONSOLE/login"
    curl -s -b "$1" "http://127.0.0.1:$CONSOLE/" | grep -o 'name="form_token" value="[0-9a-f]*"' | head -1 | sed 's/.*value="\([0-9a-f]*\)"/\1/' || true
}
search() { # search COOKIEJAR FORM_TOKEN PATIENT -> "seconds bytes status"
    curl -s -b "$1" -o /dev/null -w '%{time_total} %{size_download} %{http_code}\n' \
        --data-urlencode "form_token=$2" --data-urlencode "by=patient" --data-urlencode "value=$3" \
        "http://127.0.0.1:$CONSOLE/search"
}
patient() { # patient RANK: the bench's patient IDs
    python3 -c "import sys; r=int(sys.argv[1]); print('pt-%07d' % ((r * 2654435761) % 10000000))" "$1"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

JAR="$WORK/cookies"
FORM="$(sign_in "$JAR")"
[[ -n "$FORM" ]] || { say "sign-in failed:"; tail -5 "$WORK/gateway.log" >&2; exit 1; }
TYPICAL="$(patient 400000)"
# The gateway's own first records (its start, the sign-in) wait for its first signed checkpoint
# (checkpoint.interval_secs): until then a search answers 503.
for _ in $(seq 1 120); do
    read -r _secs _bytes code < <(search "$JAR" "$FORM" "$TYPICAL")
    [[ "$code" == 503 ]] || break
    sleep 0.5
done
IDLE_KIB="$(rss)"
TIMES=()
for _ in 1 2 3; do
    read -r secs bytes code < <(search "$JAR" "$FORM" "$TYPICAL")
    [[ "$code" == 200 ]] || { say "search answered $code"; tail -5 "$WORK/gateway.log" >&2; exit 1; }
    TIMES+=("$secs")
    PAGE_BYTES="$bytes"
done
CONSOLE_SECS="$(printf '%s\n' "${TIMES[@]}" | median)"
PEER=()
for _ in 1 2 3; do
    start="$(date +%s.%N)"
    "$BIN" report access --patient "$TYPICAL" --archive "$WORK/archive" --prefix bench \
        --node gw-1 --node gw-2 --node gw-3 \
        --key "$DATA/gw-1.key.pub" --key "$DATA/gw-2.key.pub" --key "$DATA/gw-3.key.pub" >/dev/null
    PEER+=("$(printf '%.6f' "$(echo "$(date +%s.%N) - $start" | bc)")")
done
PEER_SECS="$(printf '%s\n' "${PEER[@]}" | median)"

# Ten auditors at once, each signed in, three searches each.
for i in $(seq 1 10); do
    jar="$WORK/cookies-$i"
    form="$(sign_in "$jar")"
    (for j in 1 2 3; do search "$jar" "$form" "$(patient $((100000 * i + j)))" >/dev/null; done) &
done
PEAK_KIB="$IDLE_KIB"
LOAD_START="$(date +%s.%N)"
while [[ -n "$(jobs -rp | grep -v "^$GW$" || true)" ]]; do
    now="$(rss)"
    (( now > PEAK_KIB )) && PEAK_KIB="$now"
    sleep 0.05
done
LOAD_SECS="$(printf '%.3f' "$(echo "$(date +%s.%N) - $LOAD_START" | bc)")"
AFTER_KIB="$(rss)"

printf '\n%-44s %s\n' "console, first result of a patient search" "$CONSOLE_SECS s (page $PAGE_BYTES bytes)"
printf '%-44s %s\n' "peer: auditgate report access, same patient" "$PEER_SECS s"
printf '%-44s %.2f\n' "ratio" "$(echo "scale=4; $CONSOLE_SECS / $PEER_SECS" | bc)"
printf '%-44s %s\n' "memory idle (signed in)" "$((IDLE_KIB / 1024)) MiB"
printf '%-44s %s\n' "memory peak, 10 auditors x 3 searches" "$((PEAK_KIB / 1024)) MiB (all done in $LOAD_SECS s; after: $((AFTER_KIB / 1024)) MiB)"
cat >"$ROOT/target/bench-results/console.json" <<EOF
{"records": $RECORDS, "console_first_result_secs": $CONSOLE_SECS, "console_runs": [$(IFS=,; echo "${TIMES[*]}")],
 "page_bytes": $PAGE_BYTES, "peer_report_access_secs": $PEER_SECS, "peer_runs": [$(IFS=,; echo "${PEER[*]}")],
 "rss_idle_kib": $IDLE_KIB, "rss_peak_10_auditors_kib": $PEAK_KIB, "rss_after_kib": $AFTER_KIB,
 "ten_auditors_secs": $LOAD_SECS}
EOF
