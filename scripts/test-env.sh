#!/usr/bin/env bash
# Installs the integration-test kit into the repository, idempotently:
#
#   .venv/      Python venv with tests/requirements.txt (sekmet-fhir, the FHIR server the gateway
#               proxies to in tests, plus the FHIR clients fhirclient and fhirpy), every
#               dependency pinned.
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

# ---- Python venv -----------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "sekmet-fhir needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"
py_version="$("$PYTHON" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
venv_want="$(hash_of "$REQUIREMENTS") python-$py_version"
venv_stamp="$VENV/.auditgate-test-env"

if [[ -x "$VENV/bin/python" && -f "$venv_stamp" && "$(cat "$venv_stamp")" == "$venv_want" ]]; then
    say "$VENV is up to date"
else
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
        || [[ "$("$VENV/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')" != "$py_version" ]]; then
        say "creating $VENV with $PYTHON ($py_version)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" \
            || die "'$PYTHON -m venv' failed; on Debian: apt-get install -y python3-venv"
    fi
    say "installing $REQUIREMENTS into $VENV"
    rm -f "$venv_stamp"
    start=$SECONDS
    "$VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
        -r "$REQUIREMENTS"
    "$VENV/bin/sekmet" --version >/dev/null || die "sekmet does not run from $VENV"
    "$VENV/bin/python" -c 'import fhirclient, fhirpy' || die "fhirclient/fhirpy do not import"
    printf '%s\n' "$venv_want" > "$venv_stamp"
    say "$VENV ready in $((SECONDS - start)) s"
fi

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
