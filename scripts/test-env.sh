#!/usr/bin/env bash
# Installs the integration-test kit into the repository, idempotently:
#
#   .venv/      Python venv with tests/requirements.txt (sekmet-fhir, the FHIR server the gateway
#               proxies to in tests, plus the FHIR clients fhirclient and fhirpy), every
#               dependency pinned.
#   .venv-localstack/
#               Python venv with tests/requirements-localstack.txt (LocalStack 4.13.1, the S3
#               server with Object Lock that tests/support/s3.rs runs, and boto3), every
#               dependency pinned; separate from .venv because the two pin sets clash. Also
#               LocalStack's prebuilt service catalog, in .venv-localstack/localstack-catalog/.
#   .venv-deploy/
#               Python venv with tests/requirements-deploy.txt (kubernetes-validate, hadolint,
#               check-jsonschema): the checkers tests/integration/deploy.rs runs on deploy/.
#   .venv-sql/  Python venv with tests/requirements-sql.txt (duckdb, pyspark, sqlglot): the engines
#               tests/integration/sql.rs runs the documented SQL of deploy/sql/ with.
#   .venv-synthea/
#               Python venv with tests/requirements-synthea.txt (tietai-synthea, a Python port of
#               Synthea): the synthetic patients the attribution corpus loads.
#   .testdata/  npm install of tests/testdata/package-lock.json: the official HL7 FHIR R4
#               examples (hl7.fhir.r4.examples@4.0.1) under
#               .testdata/node_modules/hl7.fhir.r4.examples/.
#
# Each part is stamped with the hash of its pin file (and the Python version); a part whose stamp
# matches is left alone, so a second run does no network I/O and takes well under a second.
# Needs: python3 (>= 3.11) with the venv module, npm, and the PyPI and npm registries.
# Environment: PYTHON (default python3) picks the interpreter the venv is made from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
REQUIREMENTS=tests/requirements.txt
VENV=.venv
LOCALSTACK_REQUIREMENTS=tests/requirements-localstack.txt
LOCALSTACK_VENV=.venv-localstack
DEPLOY_REQUIREMENTS=tests/requirements-deploy.txt
DEPLOY_VENV=.venv-deploy
SYNTHEA_REQUIREMENTS=tests/requirements-synthea.txt
SYNTHEA_VENV=.venv-synthea
SQL_REQUIREMENTS=tests/requirements-sql.txt
SQL_VENV=.venv-sql
NPM_MANIFEST_DIR=tests/testdata
TESTDATA=.testdata
EXAMPLES="$TESTDATA/node_modules/hl7.fhir.r4.examples"

say() { printf 'test-env: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Two test runs starting at once must not build the same venv side by side.
if command -v flock >/dev/null 2>&1; then
    lock="${TMPDIR:-/tmp}/auditgate-test-env-$(printf '%s' "$ROOT" | sha256sum | cut -c1-16).lock"
    exec 9>"$lock"
    flock 9
fi

# ---- Python venvs ----------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "sekmet-fhir and LocalStack need Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"
py_version="$("$PYTHON" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"

# ensure_venv VENV REQUIREMENTS SMOKE_CHECK: makes VENV (anew if its Python is broken or another
# version) and installs REQUIREMENTS into it, unless its stamp already matches; then runs the
# shell function SMOKE_CHECK, which must fail (die) if the venv does not work.
ensure_venv() {
    local venv="$1" requirements="$2" smoke_check="$3"
    local want stamp start
    want="$(hash_of "$requirements") python-$py_version"
    stamp="$venv/.auditgate-test-env"

    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        say "$venv is up to date"
        return
    fi
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1 \
        || [[ "$("$venv/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')" != "$py_version" ]]; then
        say "creating $venv with $PYTHON ($py_version)"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv" \
            || die "'$PYTHON -m venv' failed; on Debian: apt-get install -y python3-venv"
    fi
    say "installing $requirements into $venv"
    rm -f "$stamp"
    start=$SECONDS
    "$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
        -r "$requirements" || die "pip install -r $requirements into $venv failed"
    "$smoke_check" "$venv"
    printf '%s\n' "$want" > "$stamp"
    say "$venv ready in $((SECONDS - start)) s"
}

check_fhir_venv() {
    "$1/bin/sekmet" --version >/dev/null || die "sekmet does not run from $1"
    "$1/bin/python" -c 'import fhirclient, fhirpy, selenium' || die "fhirclient/fhirpy/selenium do not import"
}

# Also prebuilds LocalStack's service catalog (an index of every botocore service spec) into
# $1/localstack-catalog/, which tests/support/s3.rs links into each server's folder: a LocalStack
# that finds none builds it at start, taking ~2.5 s longer and ~350 MB more memory.
check_localstack_venv() {
    "$1/bin/python" -c 'import localstack, localstack.runtime.main, boto3' \
        || die "localstack (or boto3) does not import in $1"
    rm -rf "$1/localstack-catalog" "$1/localstack-catalog.tmp"
    mkdir -p "$1/localstack-catalog.tmp"
    OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$1/localstack-catalog.tmp/fs" "$1/bin/python" -c '
import os, sys
from localstack.aws.spec import _get_catalog_filename, build_service_index_cache
build_service_index_cache(os.path.join(sys.argv[1], _get_catalog_filename()))
' "$1/localstack-catalog.tmp" || die "building the LocalStack service catalog in $1 failed"
    rm -rf "$1/localstack-catalog.tmp/fs"
    mv "$1/localstack-catalog.tmp" "$1/localstack-catalog"
}

ensure_venv "$VENV" "$REQUIREMENTS" check_fhir_venv
ensure_venv "$LOCALSTACK_VENV" "$LOCALSTACK_REQUIREMENTS" check_localstack_venv

check_deploy_venv() {
    "$1/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run from $1"
    "$1/bin/hadolint" --version >/dev/null || die "hadolint does not run from $1"
    "$1/bin/check-jsonschema" --version >/dev/null || die "check-jsonschema does not run from $1"
}
ensure_venv "$DEPLOY_VENV" "$DEPLOY_REQUIREMENTS" check_deploy_venv

check_sql_venv() {
    "$1/bin/python" -c 'import duckdb, pyspark, sqlglot' || die "duckdb, pyspark or sqlglot does not import in $1"
    command -v java >/dev/null 2>&1 || die "no java on PATH: Spark needs a Java 17+ runtime (apt-get install -y openjdk-17-jre-headless)"
}
ensure_venv "$SQL_VENV" "$SQL_REQUIREMENTS" check_sql_venv

check_synthea_venv() {
    "$1/bin/synthea" --help >/dev/null || die "synthea does not run from $1"
}
ensure_venv "$SYNTHEA_VENV" "$SYNTHEA_REQUIREMENTS" check_synthea_venv

# ---- HL7 FHIR R4 examples (npm) --------------------------------------------------------------
command -v npm >/dev/null 2>&1 || die "npm not found (on Debian: apt-get install -y npm)"
npm_want="$(hash_of "$NPM_MANIFEST_DIR/package.json" "$NPM_MANIFEST_DIR/package-lock.json")"
npm_stamp="$TESTDATA/.auditgate-test-env"

if [[ -f "$npm_stamp" && "$(cat "$npm_stamp")" == "$npm_want" && -f "$EXAMPLES/Patient-example.json" ]]; then
    say "$TESTDATA is up to date"
else
    say "installing the HL7 FHIR R4 examples into $TESTDATA"
    start=$SECONDS
    rm -rf "$TESTDATA"
    mkdir -p "$TESTDATA"
    cp "$NPM_MANIFEST_DIR/package.json" "$NPM_MANIFEST_DIR/package-lock.json" "$TESTDATA/"
    # npm ci installs exactly the locked version and checks its integrity hash.
    (cd "$TESTDATA" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    [[ -f "$EXAMPLES/Patient-example.json" ]] || die "npm ci did not produce $EXAMPLES"
    printf '%s\n' "$npm_want" > "$npm_stamp"
    say "$TESTDATA ready in $((SECONDS - start)) s ($(find "$EXAMPLES" -maxdepth 1 -name '*.json' | wc -l) files)"
fi
