#!/usr/bin/env bash
# The system prerequisites of building auditgate and of running its tests, in one place.
#
#   scripts/prereqs.sh --check [build|test]     say what is missing (one line each), exit 1 if any
#   scripts/prereqs.sh --install [build|test]   install what is missing: with apt-get as root on
#                                               Debian/Ubuntu; elsewhere print the one command to
#                                               run and exit 1
#
# build: cmake (pingora's zlib-ng and aws-lc), a C and C++ compiler, make, pkg-config and the
#        OpenSSL headers (the TLS backend links the system OpenSSL: .cargo/config.toml).
# test:  build, plus Python >= 3.11 with venv (the FHIR server, LocalStack, the deploy checkers),
#        npm (the HL7 R4 examples), prometheus and promtool (metrics and alert-rule tests),
#        systemd-analyze (the systemd unit's check), Chromium and ChromeDriver (the console's
#        browser tests).
# The Rust toolchain itself comes from rustup (https://rustup.rs); this script does not install it.
set -euo pipefail

mode="${1:---check}"
scope="${2:-test}"
case "$mode" in --check | --install) ;; *)
    echo "usage: scripts/prereqs.sh --check|--install [build|test]" >&2
    exit 2
    ;;
esac
case "$scope" in build | test) ;; *)
    echo "usage: scripts/prereqs.sh --check|--install [build|test]" >&2
    exit 2
    ;;
esac

say() { printf 'prereqs: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# missing: "what (Debian package)" lines; packages: the Debian packages that provide them.
missing=()
packages=()
need() { # need DESCRIPTION DEBIAN_PACKAGE
    missing+=("$1 (Debian/Ubuntu package: $2)")
    packages+=("$2")
}

have cmake || need "cmake" cmake
have cc || need "a C compiler (cc)" gcc
have c++ || need "a C++ compiler (c++)" g++
have make || need "make" make
if have pkg-config; then
    pkg-config --exists openssl 2>/dev/null || need "the OpenSSL development headers (pkg-config openssl)" libssl-dev
else
    need "pkg-config" pkg-config
    need "the OpenSSL development headers" libssl-dev
fi

if [[ "$scope" == test ]]; then
    if have python3 && python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need "the Python venv module" python3-venv
    else
        need "Python >= 3.11 (python3)" python3
        need "the Python venv module" python3-venv
    fi
    # Debian's npm conflicts with a nodejs installed from elsewhere: only ask for it when absent.
    have npm || need "npm" npm
    if ! have prometheus || ! have promtool; then
        need "prometheus and promtool" prometheus
    fi
    have systemd-analyze || need "systemd-analyze" systemd
    # The console's browser tests: headless Chromium and its WebDriver.
    have chromium || need "Chromium (headless browser)" chromium
    have chromedriver || need "ChromeDriver" chromium-driver
    # Spark (the documented SQL's test in local mode) needs Java 17 or newer.
    if ! have java || ! java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
        need "a Java 17+ runtime (java)" openjdk-17-jre-headless
    fi
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    say "all $scope prerequisites are installed"
    exit 0
fi

for m in "${missing[@]}"; do say "missing: $m"; done
# One package may cover two lines (python3-venv, libssl-dev): install each once.
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

fedora="sudo dnf install -y cmake gcc gcc-c++ make pkgconf-pkg-config openssl-devel python3 npm golang-github-prometheus systemd chromium chromedriver"
macos="brew install cmake pkg-config openssl@3 python@3.12 node prometheus chromium chromedriver"
debian="sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}"

if [[ "$mode" == --check ]]; then
    say "install them with: $debian"
    say "  (Fedora: $fedora; macOS: $macos)"
    exit 1
fi

if [[ $(id -u) -eq 0 ]] && have apt-get && [[ -r /etc/os-release ]] && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; then
    say "installing: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
    exit 0
fi

say "not root on Debian/Ubuntu, so not installing; run:"
say "  $debian"
say "  (Fedora: $fedora; macOS: $macos)"
exit 1
