# Sourced by scripts/demo and scripts/test: makes .venv with pumpgw and its
# dev tools, and installs what Debian must provide (python3-venv, mosquitto,
# and for the tests chromium, which the browser tests drive).
# Usage: source scripts/bootstrap.sh [test|demo]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "bootstrap: need root (or sudo) to run: $*" >&2; return 1
    fi
}
apt_install() {
    echo "bootstrap: apt-get install $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
have_chromium() { [ -x /usr/bin/chromium ]; }

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: pumpgw needs Python 3.11 or newer (found $(python3 --version 2>&1))" >&2
    exit 1
}
case "${1:-demo}" in
    test)
        missing=()
        have_mosquitto || missing+=(mosquitto)
        have_chromium || missing+=(chromium)
        [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}" ;;
    demo) have_mosquitto || apt_install mosquitto \
        || echo "bootstrap: no mosquitto; the demo uses its embedded broker" >&2 ;;
    *) echo "bootstrap: unknown mode ${1} (test or demo)" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
