#!/usr/bin/env bash
# HTTP benchmark of auditgate against nginx and a bare pingora proxy, on loopback.
#
#   benches/http.sh
#
# Targets, all in front of the same nginx upstream that answers a fixed 1 KiB JSON body:
#   (a) direct   wrk -> nginx upstream
#   (b) nginx    wrk -> nginx reverse proxy with a JSON access_log on disk -> upstream
#   (c) gateway  wrk -> auditgate (RS256 JWT, rules/fhir-r4.toml, fsync'd journal) -> upstream
#   (d) bare     wrk -> bare pingora proxy (benches/bare_proxy.rs) -> upstream
#   (e) gateway over TLS: (c) through auditgate's TLS listener (same process; ECDSA P-256
#       certificate, keep-alive connections: the steady-state cost of TLS, handshakes amortised)
#   (f) gateway, buffered path: (c)'s process, GET of a ~200 KiB searchset Bundle of 100
#       Observations; the rules read the whole response for patients before releasing it
#   (g) gateway, streaming path: a second auditgate process whose rules are rules/fhir-r4.toml
#       without inspect_body/inspect_response, same request: the peer of (f)
#   (h) durability floor: the bare proxy writing 1 KiB + fdatasync inline before each response
#       head (bare-proxy's SYNC_FILE), on the journal's disk; paced load only (no group commit)
#
# Two loads, identical wrk settings for every target: saturation (no pacing) and a paced
# moderate load (a wrk Lua `delay()` that holds about PACED_RATE req/s in total). For each run
# it reports req/s, p50, p99 and the CPU per request of the process under test (utime+stime
# from /proc/PID/stat, nginx workers included), then the ratios c/b and c/d. Results also go to
# target/bench-results/http.json. See benches/README.md.
#
# Every run is repeated ROUNDS times, interleaved (round 1: saturation a b c d, paced a b c d;
# round 2: ...), and the table shows the median of the rounds, so one disturbed run does not
# decide a ratio.
#
# Knobs (environment): ROUNDS (3), DURATION (8s), WARMUP (1s), CONNECTIONS (32),
# WRK_THREADS (2), PACED_RATE (2000), THREADS (2: auditgate/bare-proxy threads and nginx
# worker_processes), QUIET_WAIT (10: seconds at most to wait for an idle machine before each
# run), QUIET_BUDGET (60: seconds at most for all those waits together),
# SKIP_BUILD=1 (use the existing release binaries), KEEP_TMP=1 (keep the run directory),
# PROFILE=1 (perf profiles and flame graphs, see benches/README.md), COMMIT_DELAY_US (0: the
# gateway's journal.commit_delay_us, the default; 200 measures with a commit delay).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-2}
PACED_RATE=${PACED_RATE:-2000}
THREADS=${THREADS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
PROFILE=${PROFILE:-0}
COMMIT_DELAY_US=${COMMIT_DELAY_US:-0} # journal.commit_delay_us of (c), (e), (f) (0: off)
PROFILE_FREQ=${PROFILE_FREQ:-499}
REQUEST_PATH=/fhir/Patient/example
BODY_BYTES=1024
# (f) and (g): a search whose answer is a Bundle of 100 Observations (about 200 KiB).
BIG_PATH='/fhir/Observation?code=29463-7&_count=100'
CPU_TARGET=1.5 # issue: full-path CPU per request within 1.5x of the bare proxy

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=$ROOT/target/bench-results
RESULTS_JSON=$RESULTS_DIR/http.json

say() { printf '[http.sh] %s\n' "$*" >&2; }
die() {
    printf '[http.sh] error: %s\n' "$*" >&2
    exit 1
}

# --- requirements ----------------------------------------------------------------------------
missing=()
for tool in nginx wrk openssl curl cargo getconf awk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    hint=""
    for t in "${missing[@]}"; do
        case $t in nginx | wrk) hint="apt-get install -y nginx wrk" ;; esac
    done
    die "missing: ${missing[*]}${hint:+ (install: $hint)}"
fi
[[ -r /proc/self/stat ]] || die "needs Linux /proc"
if [[ $PROFILE == 1 ]]; then
    for tool in perf inferno-collapse-perf inferno-flamegraph python3; do
        command -v "$tool" >/dev/null 2>&1 || die "PROFILE=1 needs $tool (Debian: apt-get install -y linux-perf python3; cargo install inferno)"
    done
fi
CLK_TCK=$(getconf CLK_TCK)

# --- build -----------------------------------------------------------------------------------
# Two separate builds on purpose: the example pulls in dev-dependencies, which would change the
# feature set of the auditgate binary if both were built by one command.
if [[ $SKIP_BUILD != 1 ]]; then
    say "building release auditgate and bare-proxy (nice -n 10)"
    (cd "$ROOT" && nice -n 10 cargo build --release --bin auditgate)
    (cd "$ROOT" && nice -n 10 cargo build --release --example bare-proxy)
fi
AUDITGATE=$ROOT/target/release/auditgate
BARE=$ROOT/target/release/examples/bare-proxy
[[ -x $AUDITGATE ]] || die "$AUDITGATE not built"
[[ -x $BARE ]] || die "$BARE not built"

# --- run directory (real disk, not tmpfs) and cleanup ----------------------------------------
mkdir -p "$ROOT/target/bench-tmp" "$RESULTS_DIR"
RUN=$(mktemp -d "$ROOT/target/bench-tmp/http-XXXXXX")
chmod 755 "$RUN" # nginx workers may run as an unprivileged user
PIDS=()
ok=0

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    if [[ $ok == 1 && $KEEP_TMP != 1 ]]; then
        rm -rf "$RUN"
    else
        say "run directory kept: $RUN"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- free ports --------------------------------------------------------------------------------
TAKEN=" "
free_port() { # free_port VAR: a port nothing on 127.0.0.1 listens on
    local p i
    for i in $(seq 500); do
        p=$((20000 + RANDOM % 40000))
        [[ $TAKEN == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            TAKEN+="$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}
free_port UP_PORT
free_port NGX_PORT
free_port AG_PORT
free_port BARE_PORT
free_port AG_TLS_PORT
free_port AG2_PORT
free_port SYNC_PORT

# --- the 1 KiB bodies ------------------------------------------------------------------------
pad() { head -c "$1" /dev/zero | tr '\0' 'x'; }
patient_json() {
    printf '{"resourceType":"Patient","id":"example","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},"identifier":[{"system":"urn:oid:1.2.36.146.595.217.0.1","value":"12345"}],"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25","address":[{"use":"home","line":["534 Erewhon St"],"city":"PleasantVille","state":"Vic","postalCode":"3999"}],"text":{"status":"generated","div":"<div>%s</div>"}}' "$1"
}
bundle_json() {
    printf '{"resourceType":"Bundle","type":"searchset","total":1,"entry":[{"fullUrl":"http://127.0.0.1/fhir/Observation/example","resource":{"resourceType":"Observation","id":"example","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body Weight"}]},"subject":{"reference":"Patient/example"},"effectiveDateTime":"2016-03-28","valueQuantity":{"value":67.5,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"note":[{"text":"%s"}]},"search":{"mode":"match"}}]}' "$1"
}
fixed_size() { # fixed_size FUNC: the FUNC document padded to exactly BODY_BYTES
    local base
    base=$("$1" "")
    ((${#base} <= BODY_BYTES)) || die "$1 is longer than $BODY_BYTES bytes"
    "$1" "$(pad $((BODY_BYTES - ${#base})))"
}
PATIENT_BODY=$(fixed_size patient_json)
BUNDLE_BODY=$(fixed_size bundle_json)
# nginx `return` takes the body as a quoted string: it must hold no quote, `$` or backslash
# that nginx would interpret.
[[ $PATIENT_BODY$BUNDLE_BODY != *[\'\$\\]* ]] || die "body holds a character nginx interprets"

# --- the ~200 KiB Bundle of (f) and (g): 100 Observations of 11 patients, shaped like the HL7
# examples (narrative, codings, quantity, reference range, performer), served from a file.
big_observation() { # big_observation I
    local i=$1 p=$(($1 % 11))
    printf '{"fullUrl":"http://127.0.0.1/fhir/Observation/obs-%d","resource":{"resourceType":"Observation","id":"obs-%d","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000+00:00","profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},' "$i" "$i"
    printf '"text":{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\"><p><b>Generated Narrative with Details</b></p><p><b>id</b>: obs-%d</p><p><b>status</b>: final</p><p><b>category</b>: Vital Signs <span>(Details : {http://terminology.hl7.org/CodeSystem/observation-category code &#39;vital-signs&#39; = &#39;Vital Signs&#39;})</span></p><p><b>code</b>: Body Weight <span>(Details : {LOINC code &#39;29463-7&#39; = &#39;Body weight&#39;})</span></p><p><b>subject</b>: <a>Patient/pat-%d</a></p><p><b>effective</b>: 28/03/2016</p><p><b>value</b>: 67.%d kg</p></div>"},' "$i" "$p" "$i"
    printf '"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body Weight"},{"system":"http://loinc.org","code":"3141-9","display":"Body weight Measured"},{"system":"http://snomed.info/sct","code":"27113001","display":"Body weight"}]},'
    printf '"subject":{"reference":"Patient/pat-%d","display":"Peter James Chalmers"},"encounter":{"reference":"Encounter/enc-%d"},"effectiveDateTime":"2016-03-28","issued":"2016-03-28T10:00:00.000+00:00","performer":[{"reference":"Practitioner/f005","display":"A. Langeveld"}],' "$p" "$i"
    printf '"valueQuantity":{"value":67.%d,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"interpretation":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation","code":"N","display":"Normal"}]}],"note":[{"text":"Measured on the ward scale after breakfast; patient in hospital gown, no shoes."}],' "$i"
    printf '"referenceRange":[{"low":{"value":50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"high":{"value":90,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"text":"adult range"}]},"search":{"mode":"match"}}'
}
{
    printf '{"resourceType":"Bundle","id":"big","type":"searchset","total":100,"link":[{"relation":"self","url":"http://127.0.0.1/fhir/Observation?code=29463-7&_count=100"}],"entry":['
    for i in $(seq 0 99); do
        ((i == 0)) || printf ','
        big_observation "$i"
    done
    printf ']}'
} >"$RUN/big-bundle.json"
BIG_BYTES=$(stat -c %s "$RUN/big-bundle.json")

# --- nginx: upstream (a) and reverse proxy with a JSON access log (b) ------------------------
NGX_USER=""
if [[ $EUID -eq 0 ]]; then
    NGX_USER="user nobody $(id -gn nobody);"
fi
nginx_common() { # nginx_common NAME: main and events blocks, temp paths in the run dir
    local name=$1
    mkdir -p "$RUN/$name-temp"
    chmod 755 "$RUN/$name-temp"
    cat <<EOF
$NGX_USER
worker_processes $THREADS;
daemon off;
master_process on;
pid $RUN/$name.pid;
error_log $RUN/$name-error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
    local name=$1
    cat <<EOF
    client_body_temp_path $RUN/$name-temp/client;
    proxy_temp_path $RUN/$name-temp/proxy;
    fastcgi_temp_path $RUN/$name-temp/fastcgi;
    uwsgi_temp_path $RUN/$name-temp/uwsgi;
    scgi_temp_path $RUN/$name-temp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
EOF
}

{
    nginx_common upstream
    cat <<EOF
http {
$(nginx_http_common upstream)
    access_log off;
    server {
        listen 127.0.0.1:$UP_PORT;
        default_type application/fhir+json;
        location /fhir/Patient/ { return 200 '$PATIENT_BODY'; }
        location /fhir/Observation {
            # (f) and (g): the 200 KiB Bundle for _count=100.
            if (\$arg__count = 100) { rewrite ^ /big-bundle.json last; }
            return 200 '$BUNDLE_BODY';
        }
        location = /big-bundle.json { internal; root $RUN; }
        location / { return 404; }
    }
}
EOF
} >"$RUN/upstream.conf"

{
    nginx_common proxy
    cat <<EOF
http {
$(nginx_http_common proxy)
    log_format audit_json escape=json '{"time":"\$time_iso8601","request_id":"\$request_id",'
        '"remote_addr":"\$remote_addr","x_forwarded_for":"\$proxy_add_x_forwarded_for",'
        '"method":"\$request_method","uri":"\$request_uri","protocol":"\$server_protocol",'
        '"status":\$status,"bytes_sent":\$bytes_sent,"body_bytes_sent":\$body_bytes_sent,'
        '"request_time":\$request_time,"upstream_addr":"\$upstream_addr",'
        '"upstream_status":"\$upstream_status",'
        '"upstream_response_time":"\$upstream_response_time",'
        '"user_agent":"\$http_user_agent","host":"\$host"}';
    access_log $RUN/nginx-access.jsonl audit_json;
    upstream ehr {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://ehr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
} >"$RUN/proxy.conf"

# --- RS256 key and token -----------------------------------------------------------------------
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$RUN/jwt-key.pem" 2>/dev/null
openssl pkey -in "$RUN/jwt-key.pem" -pubout -out "$RUN/jwt-pub.pem"
ISSUER=https://idp.bench.invalid/realms/clinical
AUDIENCE=auditgate-bench
now=$(date +%s)
jwt_header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench-1"}' | b64url)
jwt_payload=$(printf '{"iss":"%s","aud":"%s","sub":"practitioner-bench","name":"Bench User","roles":["physician"],"client_id":"wrk","purpose_of_use":"TREAT","jti":"bench-%s","iat":%d,"nbf":%d,"exp":%d}' \
    "$ISSUER" "$AUDIENCE" "$now" "$now" "$((now - 60))" "$((now + 10 * 365 * 86400))" | b64url)
jwt_sig=$(printf '%s.%s' "$jwt_header" "$jwt_payload" |
    openssl dgst -sha256 -sign "$RUN/jwt-key.pem" -binary | b64url)
TOKEN=$jwt_header.$jwt_payload.$jwt_sig
AUTH="Authorization: Bearer $TOKEN"

# --- TLS certificate for (e) ----------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$RUN/tls.key" -out "$RUN/tls.crt" -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1,DNS:localhost 2>/dev/null

# --- auditgate config --------------------------------------------------------------------------
JOURNAL=$RUN/journal
cat >"$RUN/auditgate.toml" <<EOF
[server]
node = "bench"
listen = ["127.0.0.1:$AG_PORT"]
threads = $THREADS
drain_timeout_secs = 2
pid_file = "$RUN/auditgate.pid"
upgrade_sock = "$RUN/auditgate-upgrade.sock"

[upstream]
url = "http://127.0.0.1:$UP_PORT"

[journal]
dir = "$JOURNAL"
commit_delay_us = $COMMIT_DELAY_US

[checkpoint]
key_file = "$RUN/checkpoint.key"
create_key_if_missing = true

[identity]
[[identity.issuers]]
issuer = "$ISSUER"
audiences = ["$AUDIENCE"]
algorithms = ["RS256"]
pem_keys = [{ path = "$RUN/jwt-pub.pem", kid = "bench-1" }]

[rules]
files = ["$ROOT/rules/fhir-r4.toml"]

[tls]
listen = ["127.0.0.1:$AG_TLS_PORT"]
cert_file = "$RUN/tls.crt"
key_file = "$RUN/tls.key"

[admin]
enabled = false

[log]
format = "json"
level = "warn"
EOF
# (g): the same gateway, but its rules read neither bodies nor responses (the streaming path).
grep -v -e '^inspect_body' -e '^inspect_response' "$ROOT/rules/fhir-r4.toml" >"$RUN/fhir-r4-streaming.toml"
JOURNAL2=$RUN/journal-streaming
sed -e "s#127.0.0.1:$AG_PORT#127.0.0.1:$AG2_PORT#" -e "s#^dir = \"$JOURNAL\"#dir = \"$JOURNAL2\"#" \
    -e "s#$ROOT/rules/fhir-r4.toml#$RUN/fhir-r4-streaming.toml#" \
    -e "s#$RUN/auditgate.pid#$RUN/auditgate-streaming.pid#" \
    -e "s#$RUN/auditgate-upgrade.sock#$RUN/auditgate-streaming-upgrade.sock#" \
    -e "s#$RUN/checkpoint.key#$RUN/checkpoint-streaming.key#" \
    -e '/^\[tls\]/,/^key_file/d' "$RUN/auditgate.toml" >"$RUN/auditgate-streaming.toml"
! grep -q -e '^inspect_' "$RUN/fhir-r4-streaming.toml" || die "the streaming rules still inspect"

# --- start everything --------------------------------------------------------------------------
wait_http() { # wait_http PID URL: until URL answers (any status), or PID died
    local pid=$1 url=$2 i
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    return 1
}

nginx -p "$RUN" -e "$RUN/upstream-error.log" -c "$RUN/upstream.conf" &
UP_PID=$!
PIDS+=("$UP_PID")
nginx -p "$RUN" -e "$RUN/proxy-error.log" -c "$RUN/proxy.conf" &
NGX_PID=$!
PIDS+=("$NGX_PID")
"$AUDITGATE" run --config "$RUN/auditgate.toml" >"$RUN/auditgate.log" 2>&1 &
AG_PID=$!
PIDS+=("$AG_PID")
"$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" "$THREADS" >"$RUN/bare-proxy.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
"$AUDITGATE" run --config "$RUN/auditgate-streaming.toml" >"$RUN/auditgate-streaming.log" 2>&1 &
AG2_PID=$!
PIDS+=("$AG2_PID")
"$BARE" "127.0.0.1:$SYNC_PORT" "127.0.0.1:$UP_PORT" "$THREADS" "$RUN/sync-floor.dat" >"$RUN/bare-proxy-sync.log" 2>&1 &
SYNC_PID=$!
PIDS+=("$SYNC_PID")

wait_http "$UP_PID" "http://127.0.0.1:$UP_PORT/" || die "nginx upstream did not start: $(cat "$RUN/upstream-error.log")"
wait_http "$NGX_PID" "http://127.0.0.1:$NGX_PORT/" || die "nginx proxy did not start: $(cat "$RUN/proxy-error.log")"
wait_http "$AG_PID" "http://127.0.0.1:$AG_PORT/" || die "auditgate did not start: $(cat "$RUN/auditgate.log")"
wait_http "$BARE_PID" "http://127.0.0.1:$BARE_PORT/" || die "bare-proxy did not start: $(cat "$RUN/bare-proxy.log")"
wait_http "$AG2_PID" "http://127.0.0.1:$AG2_PORT/" || die "auditgate (streaming) did not start: $(cat "$RUN/auditgate-streaming.log")"
wait_http "$SYNC_PID" "http://127.0.0.1:$SYNC_PORT/" || die "bare-proxy (h) did not start: $(cat "$RUN/bare-proxy-sync.log")"

# Requests this script sent to auditgate (checked against the journal at the end).
AG_SENT=0
wait_http_count=1 # wait_http's successful probe of auditgate
AG_SENT=$((AG_SENT + wait_http_count))
AG2_SENT=$wait_http_count # the same for the streaming gateway (g)

NAMES=(a b c d e f g h)
declare -A LABEL=([a]="(a) nginx direct" [b]="(b) nginx proxy+JSON log" [c]="(c) auditgate full path" [d]="(d) bare pingora" [e]="(e) auditgate full path TLS"
    [f]="(f) auditgate 200K buffered" [g]="(g) auditgate 200K streaming" [h]="(h) bare + fdatasync floor")
declare -A URL=([a]="http://127.0.0.1:$UP_PORT" [b]="http://127.0.0.1:$NGX_PORT"
    [c]="http://127.0.0.1:$AG_PORT" [d]="http://127.0.0.1:$BARE_PORT" [e]="https://127.0.0.1:$AG_TLS_PORT"
    [f]="http://127.0.0.1:$AG_PORT" [g]="http://127.0.0.1:$AG2_PORT" [h]="http://127.0.0.1:$SYNC_PORT")
declare -A PID_OF=([a]=$UP_PID [b]=$NGX_PID [c]=$AG_PID [d]=$BARE_PID [e]=$AG_PID [f]=$AG_PID [g]=$AG2_PID [h]=$SYNC_PID)
declare -A PATH_OF=([a]=$REQUEST_PATH [b]=$REQUEST_PATH [c]=$REQUEST_PATH [d]=$REQUEST_PATH
    [e]=$REQUEST_PATH [f]=$BIG_PATH [g]=$BIG_PATH [h]=$REQUEST_PATH)
measured() { # measured LOAD TARGET: is TARGET run at LOAD? ((h), one fsync per request: paced only)
    [[ ! ($1 == saturation && $2 == h) ]]
}
count_sent() { # count_sent TARGET N: N more requests reached auditgate (c, e, f) or (g)
    case $1 in
    [cef]) AG_SENT=$((AG_SENT + $2)) ;;
    g) AG2_SENT=$((AG2_SENT + $2)) ;;
    esac
}

# Every target must answer the benchmark request with 200 and the 1 KiB body ((f), (g): the
# 200 KiB Bundle, byte for byte).
for t in "${NAMES[@]}"; do
    if [[ $t == [fg] ]]; then
        curl -sk -o "$RUN/big-check.json" -H "$AUTH" "${URL[$t]}$BIG_PATH"
        count_sent "$t" 1
        cmp -s "$RUN/big-check.json" "$RUN/big-bundle.json" || die "${LABEL[$t]} did not answer the 200 KiB Bundle unchanged"
        continue
    fi
    for path in "$REQUEST_PATH" "/fhir/Observation?patient=example&code=29463-7"; do
        got=$(curl -sk -o /dev/null -w '%{http_code} %{size_download}' -H "$AUTH" "${URL[$t]}$path")
        count_sent "$t" 1
        [[ $got == "200 $BODY_BYTES" ]] || die "${LABEL[$t]} answered '$got' to GET $path (want 200 $BODY_BYTES)"
    done
done
got=$(curl -s -o /dev/null -w '%{http_code}' "${URL[c]}$REQUEST_PATH")
AG_SENT=$((AG_SENT + 1))
[[ $got == 401 ]] || die "auditgate answered $got without a token (want 401)"
say "all targets answer 200 with $BODY_BYTES bytes; auditgate refuses a request without token (401)"

# --- measurement helpers -----------------------------------------------------------------------
proc_ticks() { # proc_ticks PID: utime+stime (+cutime+cstime) of PID and its child processes
    # Children are found by their ppid (/proc/PID/task/*/children needs CONFIG_PROC_CHILDREN).
    local pid=$1 total=0 st s f
    for st in /proc/[0-9]*/stat; do
        { s=$(<"$st"); } 2>/dev/null || continue # the task may be gone
        s=${s##*) }
        read -ra f <<<"$s"
        # after "pid (comm) ": f[0] state, f[1] ppid, f[11] utime, f[12] stime, f[13..14] c*
        if [[ $st == "/proc/$pid/stat" || ${f[1]} == "$pid" ]]; then
            total=$((total + f[11] + f[12] + f[13] + f[14]))
        fi
    done
    echo "$total"
}
calc() { awk "BEGIN { printf \"%${1}\", $2 }"; }
own_ticks() { # own_ticks PID: utime+stime of PID (its threads, living and exited)
    local s f
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    read -ra f <<<"$s"
    echo $((f[11] + f[12]))
}
settle_gateway() { # settle_gateway PID: wait (at most 30 s) until auditgate's background work
    # that the run's records caused (a sealed segment's columnar copy, a checkpoint) is done, so
    # it is counted in this run and does not land in the next one
    local pid=$1 i before after
    for ((i = 0; i < 120; i++)); do
        before=$(own_ticks "$pid")
        sleep 0.25
        after=$(own_ticks "$pid")
        ((after - before <= 1)) && return 0
    done
}
thread_ticks() { # thread_ticks PID: "name ticks" per thread name (utime+stime summed)
    local st s f comm
    for st in /proc/"$1"/task/*/stat; do
        { s=$(<"$st"); } 2>/dev/null || continue # the task may be gone
        comm=${s#*\(}
        comm=${comm%\)*}
        s=${s##*) }
        read -ra f <<<"$s"
        printf '%s %s\n' "${comm// /_}" $((f[11] + f[12]))
    done | awk '{ t[$1] += $2 } END { for (n in t) print n, t[n] }'
}
host_ticks() { # busy ticks of the whole machine: user nice system irq softirq steal
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}
QUIET_WAIT=${QUIET_WAIT:-10}
QUIET_BUDGET=${QUIET_BUDGET:-60}
quiet_waited=0
wait_quiet() { # wait until the machine is nearly idle: at most QUIET_WAIT s per run and
    # QUIET_BUDGET s per benchmark, so that a busy machine cannot stretch the run for long
    local start=$SECONDS h0 h1 busy
    while :; do
        h0=$(host_ticks)
        sleep 0.5
        h1=$(host_ticks)
        busy=$(((h1 - h0) * 200 / CLK_TCK))
        ((busy <= 20)) && break
        if ((SECONDS - start >= QUIET_WAIT || quiet_waited + SECONDS - start >= QUIET_BUDGET)); then
            say "WARNING: the machine is busy (${busy}% of one core) with the targets idle; measuring anyway"
            break
        fi
    done
    quiet_waited=$((quiet_waited + SECONDS - start))
}
child_us() { # child_us VAR: CPU microseconds of this shell's finished children (wrk is one)
    # `times` must run in this shell, not in a $(...) subshell.
    times >"$RUN/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60e6 + a[2] * 1e6 }
        printf "%.0f", t }' "$RUN/times")"
}

# The wrk Lua scripts: `done` prints one machine-readable line; the paced one adds `delay`.
PACED_DELAY_MS=$(((CONNECTIONS * 1000 + PACED_RATE / 2) / PACED_RATE))
((PACED_DELAY_MS >= 2)) || die "PACED_RATE too high for CONNECTIONS=$CONNECTIONS"
cat >"$RUN/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
{
    cat <<EOF
-- Each connection waits a random 1..$((2 * PACED_DELAY_MS - 1)) ms (mean $PACED_DELAY_MS ms) before
-- each request: $CONNECTIONS connections make about $PACED_RATE req/s, minus the latency.
local mean_ms = $PACED_DELAY_MS
EOF
    cat <<'EOF'
local n = 0
setup = function(thread) n = n + 1; thread:set("thread_id", n) end
init = function(args) math.randomseed(os.time() * 1000 + (thread_id or 0)) end
delay = function() return math.random(1, 2 * mean_ms - 1) end
EOF
    cat "$RUN/report.lua"
} >"$RUN/paced.lua"

metric() { # metric LOAD TARGET NAME ROUND: one run's figure
    local k=$1.$2.$4 req dur up
    req=${R[$k.requests]}
    dur=${R[$k.duration_us]}
    case $3 in
    rps) calc .0f "$req / ($dur / 1e6)" ;;
    p50) calc .3f "${R[$k.p50_us]} / 1000" ;;
    p90) calc .3f "${R[$k.p90_us]} / 1000" ;;
    p99) calc .3f "${R[$k.p99_us]} / 1000" ;;
    mean) calc .3f "${R[$k.mean_us]} / 1000" ;;
    max) calc .3f "${R[$k.max_us]} / 1000" ;;
    cpu) calc .1f "${R[$k.cpu_ticks]} * 1e6 / $CLK_TCK / $req" ;;
    upcpu) calc .1f "${R[$k.upstream_ticks]} * 1e6 / $CLK_TCK / $req" ;;
    hostcpu) calc .1f "${R[$k.host_ticks]} * 1e6 / $CLK_TCK / $req" ;;
    wrkcpu) calc .1f "${R[$k.wrk_us]} / $req" ;;
    other) # busy CPU of everything else on the machine (other processes, irq), % of one core
        up=${R[$k.upstream_ticks]}
        [[ $2 == a ]] && up=0 # (a): the process under test is the upstream
        calc .0f "((${R[$k.host_ticks]} - ${R[$k.cpu_ticks]} - $up) * 1e6 / $CLK_TCK - ${R[$k.wrk_us]}) / $dur * 100"
        ;;
    errors) echo $((R[$k.connect] + R[$k.read] + R[$k.write] + R[$k.status] + R[$k.timeout])) ;;
    requests_raw) echo "$req" ;;
    esac
}
per_round() { # per_round LOAD TARGET NAME: the figure of every round, space-separated
    local r out=()
    for ((r = 1; r <= ROUNDS; r++)); do out+=("$(metric "$1" "$2" "$3" "$r")"); done
    echo "${out[*]}"
}
med() { # med LOAD TARGET NAME: the median over the rounds (errors: the sum)
    local values
    values=$(per_round "$@")
    if [[ $3 == errors ]]; then
        tr ' ' '\n' <<<"$values" | awk '{ s += $1 } END { print s }'
        return
    fi
    tr ' ' '\n' <<<"$values" | sort -g | awk -v dec="$(case $3 in rps | other) echo 0 ;;
        cpu | upcpu | hostcpu | wrkcpu) echo 1 ;; *) echo 3 ;; esac)" '
        { v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.*f\n", dec, m }'
}
ratio() { # ratio LOAD METRIC NUM DEN: of the medians
    local n d
    n=$(med "$1" "$3" "$2")
    d=$(med "$1" "$4" "$2")
    calc .2f "($d > 0) ? $n / $d : 0"
}

declare -A R # R[load.target.round.field]
run_wrk() { # run_wrk LOAD TARGET ROUND: one measured run
    local load=$1 t=$2 r=$3 k=$1.$2.$3 script out line kv before after ubefore uafter hbefore
    local hafter wbefore wafter
    script=$RUN/report.lua
    [[ $load == paced ]] && script=$RUN/paced.lua
    # Warm-up: connections, pools, token cache.
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$RUN/report.lua" -H "$AUTH" \
        "${URL[$t]}${PATH_OF[$t]}")
    line=$(grep '^WRKRESULT' <<<"$out") || die "wrk printed no result (warm-up $t): $out"
    count_sent "$t" "$(sed -n 's/.* requests=\([0-9]*\) .*/\1/p' <<<"$line")"
    wait_quiet
    [[ $t == [cde] ]] && thread_ticks "${PID_OF[$t]}" >"$RUN/threads-before"
    before=$(proc_ticks "${PID_OF[$t]}")
    ubefore=$(proc_ticks "$UP_PID")
    hbefore=$(host_ticks)
    child_us wbefore
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" -H "$AUTH" \
        "${URL[$t]}${PATH_OF[$t]}")
    child_us wafter
    [[ $t == [cefg] ]] && settle_gateway "${PID_OF[$t]}"
    after=$(proc_ticks "${PID_OF[$t]}")
    [[ $t == [cde] ]] && thread_ticks "${PID_OF[$t]}" >"$RUN/threads-after"
    uafter=$(proc_ticks "$UP_PID")
    hafter=$(host_ticks)
    printf '%s\n' "=== round $r $load ${LABEL[$t]}, ended $(date -u +%H:%M:%S)Z" "$out" >>"$RUN/wrk.log"
    line=$(grep '^WRKRESULT' <<<"$out") || die "wrk printed no result for $load $t: $out"
    for kv in ${line#WRKRESULT }; do R[$k.${kv%%=*}]=${kv#*=}; done
    R[$k.cpu_ticks]=$((after - before))
    R[$k.upstream_ticks]=$((uafter - ubefore))
    R[$k.host_ticks]=$((hafter - hbefore))
    R[$k.wrk_us]=$((wafter - wbefore))
    count_sent "$t" "${R[$k.requests]}"
    if [[ $t == [cde] ]]; then
        # CPU by thread name (pingora workers, journal-writer, ...), summed over the rounds.
        awk 'NR == FNR { b[$1] = $2; next } { if ($2 > b[$1]) print $1, $2 - b[$1] }' \
            "$RUN/threads-before" "$RUN/threads-after" >>"$RUN/threads-$load-$t"
        R[$load.$t.all_requests]=$((${R[$load.$t.all_requests]:-0} + R[$k.requests]))
    fi
    say "$(printf 'round %s %-10s %-26s %8d requests, %6s req/s, %6s CPU us/req, other%% %s' \
        "$r" "$load" "${LABEL[$t]}" "${R[$k.requests]}" "$(metric "$load" "$t" rps "$r")" \
        "$(metric "$load" "$t" cpu "$r")" "$(metric "$load" "$t" other "$r")")"
    if (($(metric "$load" "$t" other "$r") > 25)); then
        say "WARNING: something else used the CPUs during this run (other% above 25)"
    fi
}
by_thread() { # by_thread LOAD TARGET: "name=us/req ..." over all rounds
    awk -v req="${R[$1.$2.all_requests]}" -v hz="$CLK_TCK" '
        { t[$1] += $2 }
        END { for (n in t) printf "%s=%.1f\n", n, t[n] * 1e6 / hz / req }' "$RUN/threads-$1-$2" |
        sort -t= -k2 -g -r | tr '\n' ' ' | sed 's/ $//'
}

# Is anything else using the CPUs? (The benchmark shares the machine with whatever runs.)
h0=$(host_ticks)
sleep 2
h1=$(host_ticks)
IDLE_BUSY_PCT=$(calc .0f "($h1 - $h0) * 100 / $CLK_TCK / 2")
say "machine busy before the runs: ${IDLE_BUSY_PCT}% of one core (over 2 s)"
if ((IDLE_BUSY_PCT > 20)); then
    say "WARNING: something else is using the CPUs; results will be noisy (see the other% column)"
fi

say "$ROUNDS rounds of: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP each) against (a) to (h) ((h): paced only), saturation then paced (~$PACED_RATE req/s: delay mean ${PACED_DELAY_MS} ms per connection)"
for ((round = 1; round <= ROUNDS; round++)); do
    for load in saturation paced; do
        for t in "${NAMES[@]}"; do
            measured "$load" "$t" && run_wrk "$load" "$t" "$round"
        done
    done
done

# --- profiles (PROFILE=1) ----------------------------------------------------------------------
# After the measured rounds, one more run of (c), (d) and (f) at each load, with the same wrk
# settings, while `perf record` samples the process under test (cpu-clock, PROFILE_FREQ Hz,
# DWARF call graphs). Each profile becomes a flame graph (inferno) and a table of CPU per
# request by stage (benches/profile_stages.py): the CPU time of each stage's samples divided by
# the requests answered during the profiled run.
PROFILED=()
declare -A PROFILE_REQUESTS
profile_run() { # profile_run LOAD TARGET
    local load=$1 t=$2 script=$RUN/report.lua name=$1-$2 out data
    [[ $load == paced ]] && script=$RUN/paced.lua
    data=$RUN/perf-$name.data
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$RUN/report.lua" -H "$AUTH" \
        "${URL[$t]}${PATH_OF[$t]}")
    count_sent "$t" "$(sed -n 's/.* requests=\([0-9]*\) .*/\1/p' <<<"$(grep '^WRKRESULT' <<<"$out")")"
    wait_quiet
    perf record -q -e cpu-clock -F "$PROFILE_FREQ" --call-graph dwarf,32768 -p "${PID_OF[$t]}" \
        -o "$data" -- sleep "${DURATION%s}" 2>>"$RUN/perf.log" &
    local perf_pid=$!
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$script" -H "$AUTH" \
        "${URL[$t]}${PATH_OF[$t]}")
    wait "$perf_pid" || die "perf record failed: $(cat "$RUN/perf.log")"
    PROFILE_REQUESTS[$name]=$(sed -n 's/.* requests=\([0-9]*\) .*/\1/p' <<<"$(grep '^WRKRESULT' <<<"$out")")
    count_sent "$t" "${PROFILE_REQUESTS[$name]}"
    perf script -i "$data" --no-inline 2>>"$RUN/perf.log" |
        inferno-collapse-perf --all >"$RESULTS_DIR/profile-$name.folded"
    inferno-flamegraph --title "${LABEL[$t]}, $load: auditgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" \
        <"$RESULTS_DIR/profile-$name.folded" >"$RESULTS_DIR/flame-$name.svg"
    PROFILED+=("$name")
    say "profiled $load ${LABEL[$t]}: $RESULTS_DIR/flame-$name.svg"
}
if [[ $PROFILE == 1 ]]; then
    for load in saturation paced; do
        for t in c d f; do profile_run "$load" "$t"; done
    done
fi

# --- journal check and verify ------------------------------------------------------------------
ag_log_errors=$(grep -c '"level":"ERROR"' "$RUN/auditgate.log" || true)
ag_log_warns=$(grep -c '"level":"WARN"' "$RUN/auditgate.log" || true)
ag_threads=$(ls "/proc/$AG_PID/task" | wc -l)
stop_pid "$AG_PID" # stop it so the journal is quiet while it is counted and verified
stop_pid "$AG2_PID"
journal2_records=$(cat "$JOURNAL2"/seg-*.jsonl 2>/dev/null | wc -l)
set +e
verify2_out=$("$AUDITGATE" verify --journal "$JOURNAL2" --key "$RUN/checkpoint-streaming.key.pub" 2>&1)
verify2_rc=$?
set -e
nginx_log_lines=$(wc -l <"$RUN/nginx-access.jsonl")
shopt -s nullglob
segments=("$JOURNAL"/seg-*.jsonl)
shopt -u nullglob
journal_records=0
journal_200=0
if ((${#segments[@]})); then
    journal_records=$(cat "${segments[@]}" | wc -l)
    journal_200=$(cat "${segments[@]}" | grep -c '"status":200' || true)
fi
journal_bytes=$(du -sb "$JOURNAL" | cut -f1)
set +e
verify_out=$("$AUDITGATE" verify --journal "$JOURNAL" --key "$RUN/checkpoint.key.pub" 2>&1)
verify_rc=$?
set -e

# --- report ------------------------------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
cp "$RUN/auditgate.log" "$RESULTS_DIR/http-auditgate.log"
cp "$RUN/wrk.log" "$RESULTS_DIR/http-wrk.log"

report=$(
    printf '\n'
    printf 'auditgate HTTP benchmark: GET %s (Bearer RS256), %d B JSON body, loopback, %s CPUs\n' \
        "$REQUEST_PATH" "$BODY_BYTES" "$(nproc)"
    printf 'wrk -t%s -c%s -d%s --latency, %s rounds (figures: median of the rounds; errors: sum)\n' \
        "$WRK_THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS"
    printf 'paced: delay mean %s ms per connection (~%s req/s); server threads / nginx workers: %s\n\n' \
        "$PACED_DELAY_MS" "$PACED_RATE" "$THREADS"
    fmt='%-10s  %-26s %8s %7s %7s %10s %9s %7s %8s %6s %6s\n'
    printf "$fmt" load target "req/s" "p50 ms" "p99 ms" "CPU us/req" "upstr us" "wrk us" \
        "host us" "other%" errors
    for load in saturation paced; do
        for t in "${NAMES[@]}"; do
            measured "$load" "$t" || continue
            printf "$fmt" "$load" "${LABEL[$t]}" \
                "$(med "$load" "$t" rps)" "$(med "$load" "$t" p50)" \
                "$(med "$load" "$t" p99)" "$(med "$load" "$t" cpu)" \
                "$(med "$load" "$t" upcpu)" "$(med "$load" "$t" wrkcpu)" \
                "$(med "$load" "$t" hostcpu)" "$(med "$load" "$t" other)" \
                "$(med "$load" "$t" errors)"
        done
    done
    printf '\nratios                 CPU/req c/b   req/s c/b   CPU/req c/d   req/s c/d   target c/d CPU <= %s\n' "$CPU_TARGET"
    for load in saturation paced; do
        cd_cpu=$(ratio "$load" cpu c d)
        printf '%-22s %13s %11s %13s %11s   %s\n' "$load" "$(ratio "$load" cpu c b)x" \
            "$(ratio "$load" rps c b)x" "${cd_cpu}x" "$(ratio "$load" rps c d)x" \
            "$(awk -v r="$cd_cpu" -v t="$CPU_TARGET" 'BEGIN { print (r <= t) ? "met" : "NOT met" }')"
    done
    printf '\ndurability floor (paced)   CPU/req h/d   CPU/req c/h   added CPU c-h us   added CPU h-d us\n'
    printf '%-26s %12sx %12sx %18s %18s\n' paced "$(ratio paced cpu h d)" "$(ratio paced cpu c h)" \
        "$(calc .1f "$(med paced c cpu) - $(med paced h cpu)")" "$(calc .1f "$(med paced h cpu) - $(med paced d cpu)")"
    printf '\nTLS termination     CPU/req e/c   req/s e/c   p50 e/c   p99 e/c\n'
    for load in saturation paced; do
        printf '%-22s %10sx %10sx %8sx %8sx\n' "$load" "$(ratio "$load" cpu e c)" \
            "$(ratio "$load" rps e c)" "$(ratio "$load" p50 e c)" "$(ratio "$load" p99 e c)"
    done
    printf '\n%s B search Bundle, buffered (f) vs streaming (g)\n' "$BIG_BYTES"
    printf '                    CPU/req f/g  added CPU us  p50 f/g  added p50 ms  p99 f/g  added p99 ms\n'
    for load in saturation paced; do
        printf '%-22s %8sx %12s %7sx %13s %7sx %13s\n' "$load" "$(ratio "$load" cpu f g)" \
            "$(calc .1f "$(med "$load" f cpu) - $(med "$load" g cpu)")" "$(ratio "$load" p50 f g)" \
            "$(calc .3f "$(med "$load" f p50) - $(med "$load" g p50)")" "$(ratio "$load" p99 f g)" \
            "$(calc .3f "$(med "$load" f p99) - $(med "$load" g p99)")"
    done
    printf '\nCPU us/req: utime+stime of the process under test (nginx: master + workers; auditgate:\n'
    printf 'all threads incl. the journal writer) / requests completed. upstr us, wrk us: the same\n'
    printf 'per request for the nginx upstream and for wrk. host us: all busy CPU of the machine\n'
    printf '(/proc/stat) per request. other%%: busy CPU not accounted to the proxy, upstream or wrk\n'
    printf '(irq time, kernel workers, other processes) in %% of one core: a noise indicator.\n'
    printf 'errors: wrk socket errors + non-2xx answers.\n\n'
    printf 'per round (CPU us/req | req/s):\n'
    for load in saturation paced; do
        for t in "${NAMES[@]}"; do
            measured "$load" "$t" || continue
            printf '  %-10s %-26s %s | %s\n' "$load" "${LABEL[$t]}" \
                "$(per_round "$load" "$t" cpu)" "$(per_round "$load" "$t" rps)"
        done
    done
    printf '\nCPU us/req by thread name, all rounds (pingora workers carry the service name):\n'
    for load in saturation paced; do
        for t in c d e; do
            printf '  %-10s %-26s %s\n' "$load" "${LABEL[$t]}" "$(by_thread "$load" "$t")"
        done
    done
    printf '\nauditgate journal: %s records (%s with status 200) for %s requests sent; %s bytes\n' \
        "$journal_records" "$journal_200" "$AG_SENT" "$journal_bytes"
    printf 'auditgate log: %s ERROR, %s WARN lines; %s threads\n' "$ag_log_errors" "$ag_log_warns" "$ag_threads"
    printf 'nginx access log: %s lines\n' "$nginx_log_lines"
    printf 'auditgate verify --journal --key (exit %s):\n%s\n' "$verify_rc" "$(sed 's/^/  /' <<<"$verify_out")"
    printf 'streaming auditgate (g) journal: %s records for %s requests sent; verify exit %s\n' \
        "$journal2_records" "$AG2_SENT" "$verify2_rc"
    printf '\nperformance targets (medians)                          measured     target\n'
    printf '%-52s %8sx   <= 1.25x\n' "saturation CPU/req, auditgate / bare pingora (c/d)" "$(ratio saturation cpu c d)"
    printf '%-52s %8sx   >= 0.6x\n' "saturation req/s, auditgate / nginx + JSON log (c/b)" "$(ratio saturation rps c b)"
    printf '%-52s %8sx   <= 1.15x\n' "paced CPU/req over the durability floor (c/h)" "$(ratio paced cpu c h)"
    printf '%-52s %7s ms   <= +0.3 ms\n' "paced p50 added over bare pingora (c-d)" \
        "+$(calc .3f "$(med paced c p50) - $(med paced d p50)")"
    printf '%-52s %8sx   <= 1.8x\n' "200 KiB search, buffered / streaming CPU (f/g, sat.)" "$(ratio saturation cpu f g)"
    printf '%-52s %8sx\n' "for scale: bare pingora / nginx + JSON log req/s (d/b)" "$(ratio saturation rps d b)"
    if ((${#PROFILED[@]})); then
        printf '\nCPU us per request by stage (PROFILE=1: perf record -e cpu-clock -F %s, DWARF call\n' "$PROFILE_FREQ"
        printf 'graphs; flame graphs: target/bench-results/flame-LOAD-TARGET.svg)\n\n'
        args=()
        for name in "${PROFILED[@]}"; do
            args+=("$name=$RESULTS_DIR/profile-$name.folded:${PROFILE_REQUESTS[$name]}:$(med "${name%-*}" "${name##*-}" cpu)")
        done
        python3 "$ROOT/benches/profile_stages.py" "${args[@]}"
    fi
)
printf '%s\n' "$report"
printf '%s\n' "$report" >"$RESULTS_DIR/http.txt"

# JSON (hand-written: no jq needed).
json_str() { # a JSON string literal
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}
{
    printf '{\n'
    printf '  "benchmark": "http",\n'
    printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '  "host": {"cpus": %s, "kernel": %s, "clk_tck": %s},\n' "$(nproc)" \
        "$(json_str "$(uname -r)")" "$CLK_TCK"
    printf '  "versions": {"nginx": %s, "wrk": %s, "pingora": "0.9.1"},\n' \
        "$(json_str "$(nginx -v 2>&1)")" "$(json_str "$(wrk -v 2>&1 | head -1 | sed 's/ *$//')")"
    printf '  "machine_busy_before_pct_of_one_core": %s,\n' "$IDLE_BUSY_PCT"
    printf '  "settings": {"rounds": %s, "aggregate": "median of the rounds", "wrk_threads": %s, "connections": %s, "duration": "%s", "warmup": "%s", "paced_rate_target": %s, "paced_delay_mean_ms": %s, "server_threads": %s, "request": "GET %s", "auth": "Bearer RS256 JWT", "body_bytes": %s},\n' \
        "$ROUNDS" "$WRK_THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP" "$PACED_RATE" "$PACED_DELAY_MS" \
        "$THREADS" "$REQUEST_PATH" "$BODY_BYTES"
    printf '  "results": [\n'
    first=1
    for load in saturation paced; do
        for t in "${NAMES[@]}"; do
            measured "$load" "$t" || continue
            ((first)) || printf ',\n'
            first=0
            printf '    {"load": "%s", "target": "%s", "label": %s,' "$load" "$t" "$(json_str "${LABEL[$t]}")"
            printf ' "req_per_s": %s, "p50_ms": %s, "p90_ms": %s, "p99_ms": %s, "mean_ms": %s, "max_ms": %s,' \
                "$(med "$load" "$t" rps)" "$(med "$load" "$t" p50)" "$(med "$load" "$t" p90)" \
                "$(med "$load" "$t" p99)" "$(med "$load" "$t" mean)" "$(med "$load" "$t" max)"
            printf ' "cpu_us_per_req": %s, "upstream_cpu_us_per_req": %s, "wrk_cpu_us_per_req": %s, "host_cpu_us_per_req": %s, "other_cpu_pct_of_one_core": %s, "errors": %s,' \
                "$(med "$load" "$t" cpu)" "$(med "$load" "$t" upcpu)" "$(med "$load" "$t" wrkcpu)" \
                "$(med "$load" "$t" hostcpu)" "$(med "$load" "$t" other)" "$(med "$load" "$t" errors)"
            printf ' "rounds": {"requests": [%s], "req_per_s": [%s], "p50_ms": [%s], "p99_ms": [%s], "cpu_us_per_req": [%s], "other_cpu_pct_of_one_core": [%s]}}' \
                "$(per_round "$load" "$t" requests_raw | tr ' ' ',')" \
                "$(per_round "$load" "$t" rps | tr ' ' ',')" "$(per_round "$load" "$t" p50 | tr ' ' ',')" \
                "$(per_round "$load" "$t" p99 | tr ' ' ',')" "$(per_round "$load" "$t" cpu | tr ' ' ',')" \
                "$(per_round "$load" "$t" other | tr ' ' ',')"
        done
    done
    printf '\n  ],\n'
    printf '  "ratios": {\n'
    sep=""
    for load in saturation paced; do
        cd_cpu=$(ratio "$load" cpu c d)
        printf '%s    "%s": {"c_over_b": {"cpu_per_req": %s, "req_per_s": %s}, "c_over_d": {"cpu_per_req": %s, "req_per_s": %s}, "e_over_c": {"cpu_per_req": %s, "req_per_s": %s, "p50": %s, "p99": %s}, "f_over_g": {"bundle_bytes": %s, "cpu_per_req": %s, "p50": %s, "p99": %s}, "cpu_target_c_over_d_max": %s, "cpu_target_met": %s}' \
            "$sep" "$load" "$(ratio "$load" cpu c b)" "$(ratio "$load" rps c b)" "$cd_cpu" \
            "$(ratio "$load" rps c d)" "$(ratio "$load" cpu e c)" "$(ratio "$load" rps e c)" \
            "$(ratio "$load" p50 e c)" "$(ratio "$load" p99 e c)" "$BIG_BYTES" \
            "$(ratio "$load" cpu f g)" "$(ratio "$load" p50 f g)" "$(ratio "$load" p99 f g)" "$CPU_TARGET" \
            "$(awk -v r="$cd_cpu" -v t="$CPU_TARGET" 'BEGIN { print (r <= t) ? "true" : "false" }')"
        sep=$',\n'
    done
    printf ',\n    "paced_durability_floor": {"h_over_d_cpu_per_req": %s, "c_over_h_cpu_per_req": %s}' \
        "$(ratio paced cpu h d)" "$(ratio paced cpu c h)"
    printf '\n  },\n'
    printf '  "cpu_us_per_req_by_thread": {'
    sep=""
    for load in saturation paced; do
        for t in c d; do
            printf '%s"%s.%s": {' "$sep" "$load" "$t"
            sep2=""
            for kv in $(by_thread "$load" "$t"); do
                printf '%s%s: %s' "$sep2" "$(json_str "${kv%%=*}")" "${kv#*=}"
                sep2=", "
            done
            printf '}'
            sep=", "
        done
    done
    printf '},\n'
    printf '  "auditgate": {"journal_records": %s, "journal_records_status_200": %s, "requests_sent": %s, "journal_bytes": %s, "log_error_lines": %s, "log_warn_lines": %s, "threads": %s, "verify_exit": %s, "verify_output": %s},\n' \
        "$journal_records" "$journal_200" "$AG_SENT" "$journal_bytes" "$ag_log_errors" \
        "$ag_log_warns" "$ag_threads" "$verify_rc" "$(json_str "$verify_out")"
    printf '  "nginx_access_log_lines": %s\n' "$nginx_log_lines"
    printf '}\n'
} >"$RESULTS_JSON"
say "results: $RESULTS_JSON (table: $RESULTS_DIR/http.txt, logs: $RESULTS_DIR/http-*.log)"

# Sanity: every request must have been journaled, the journal must verify.
status=0
if ((journal_records < AG_SENT)); then
    say "FAIL: the journal holds $journal_records records but $AG_SENT requests were answered"
    status=1
fi
if ((verify_rc != 0)); then
    say "FAIL: auditgate verify exited $verify_rc"
    status=1
fi
if ((journal2_records < AG2_SENT || verify2_rc != 0)); then
    say "FAIL: the streaming gateway's journal: $journal2_records records for $AG2_SENT requests, verify exit $verify2_rc"
    status=1
fi
((ag_log_errors == 0)) || say "auditgate logged $ag_log_errors ERROR lines: see $RESULTS_DIR/http-auditgate.log"
ok=1
exit "$status"
