#!/bin/sh
# LocalStack ready hook: the archive bucket, created with Object Lock (it cannot be turned on
# later), and a default retention of 6 years in COMPLIANCE mode as a safety net (auditgate also
# sets retention on every object it stores).
set -eu
bucket=auditgate-archive
if ! awslocal s3api head-bucket --bucket "$bucket" 2>/dev/null; then
    awslocal s3api create-bucket --bucket "$bucket" --object-lock-enabled-for-bucket
fi
awslocal s3api put-object-lock-configuration --bucket "$bucket" \
    --object-lock-configuration '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"COMPLIANCE","Years":6}}}'
