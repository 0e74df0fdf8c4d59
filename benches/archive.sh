#!/usr/bin/env bash
# The journal benchmark with its archive on a real S3 server that enforces Object Lock:
# starts LocalStack 4.13.1 (from .venv-localstack, made by scripts/test-env.sh) on a free
# 127.0.0.1 port, creates a bucket with Object Lock, runs `cargo bench --bench journal` against
# it, and stops LocalStack by its PID. Output: the bench's table and JSON lines.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '[archive.sh] %s\n' "$*" >&2; }

scripts/test-env.sh >/dev/null
VENV="$ROOT/.venv-localstack"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/auditgate-bench-s3.XXXXXX")"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$STATE/fs/usr/lib/localstack"
# The service catalog test-env.sh prebuilt (a 0.9 s start instead of 3.4 s).
for f in "$VENV"/localstack-catalog/*; do ln -sf "$f" "$STATE/fs/usr/lib/localstack/"; done

# Niced: LocalStack stands in for a remote S3, whose CPU is not the gateway's. On this 2-core
# machine an un-niced Python S3 server receiving 64 MiB uploads competes with the journal.
nice -n 10 env -i PATH="$PATH" HOME="$STATE" TMPDIR="$STATE" SERVICES=s3 GATEWAY_LISTEN="127.0.0.1:$PORT" \
    GATEWAY_SERVER=hypercorn DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 \
    EAGER_SERVICE_LOADING=1 OVERRIDE_IN_DOCKER=0 LOCALSTACK_VOLUME_DIR="$STATE" \
    FILESYSTEM_ROOT="$STATE/fs" "$VENV/bin/python" -m localstack.runtime.main \
    >"$STATE/localstack.log" 2>&1 &
LS_PID=$!
cleanup() { kill -9 "$LS_PID" 2>/dev/null || true; wait "$LS_PID" 2>/dev/null || true; rm -rf "$STATE"; }
trap cleanup EXIT

for _ in $(seq 1 100); do
    if curl -s "http://127.0.0.1:$PORT/_localstack/health" | grep -q '"s3": "running"'; then break; fi
    sleep 0.2
done
curl -s "http://127.0.0.1:$PORT/_localstack/health" | grep -q '"s3": "running"' \
    || { say "LocalStack did not start:"; tail -20 "$STATE/localstack.log" >&2; exit 1; }
"$VENV/bin/python" - "$PORT" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test",
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="bench", ObjectLockEnabledForBucket=True)
PY
say "LocalStack S3 on 127.0.0.1:$PORT (pid $LS_PID), bucket 'bench' with Object Lock"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
    AUDITGATE_BENCH_S3_ENDPOINT="http://127.0.0.1:$PORT" AUDITGATE_BENCH_S3_BUCKET=bench \
    cargo bench --bench journal "$@"
