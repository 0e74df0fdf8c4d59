#!/usr/bin/env bash
# The project's test command: checks the system prerequisites and installs what is missing when
# run as root on Debian/Ubuntu (scripts/prereqs.sh; elsewhere it says the one command to run),
# installs or checks the integration-test kit (scripts/test-env.sh; well under a second when it
# is current), then runs the unit, integration and doc tests with cargo test.
# Extra arguments go to cargo test, e.g.:
#   scripts/test.sh --release
#   scripts/test.sh -- seeded          (only tests whose name contains "seeded")
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/prereqs.sh --install test
scripts/test-env.sh
exec cargo test "$@"
