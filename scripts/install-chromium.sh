#!/bin/sh
# Installs Debian's `chromium` where it is missing, for the inspector's browser test
# (tests/tests/inspector.rs). Idempotent: exits at once when chromium is already there.
# Prints the path of the browser on its last line.
set -eu

found() {
    for b in chromium chromium-browser; do
        if command -v "$b" >/dev/null 2>&1; then
            command -v "$b"
            return 0
        fi
    done
    return 1
}

if found >/dev/null; then
    found
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: chromium is missing and apt-get is not available; install chromium by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-chromium: chromium is missing and this is not root (no sudo): install the chromium package" >&2
        exit 1
    fi
fi

# One installer at a time (tests may call this side by side).
LOCK=/tmp/hmr-install-chromium.lock
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if found >/dev/null; then
    found
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium >&2; then
    $SUDO apt-get update >&2 || {
        echo "install-chromium: apt-get update failed (no network to the Debian mirrors?)" >&2
        exit 1
    }
    $SUDO apt-get install -y --no-install-recommends chromium >&2 || {
        echo "install-chromium: apt-get install chromium failed" >&2
        exit 1
    }
fi
found || {
    echo "install-chromium: chromium was installed but is not on PATH" >&2
    exit 1
}
