#!/usr/bin/env bash
# Install Debian's chromium via apt-get if it is missing: the console's browser tests drive it with
# Playwright (executable_path=/usr/bin/chromium). Playwright's own browser download is never used.
# Like ensure_mosquitto.sh: `apt-get update` only when a first install attempt fails; waits for other
# apt users (DPkg::Lock::Timeout); never fails the caller (the browser tests then fail with a clear line).
set -u

have_chromium() { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; }

if have_chromium; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: WARNING: chromium missing and apt-get unavailable; install it manually" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: WARNING: chromium missing and not root (no passwordless sudo); skipping" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
APT="$SUDO apt-get -o DPkg::Lock::Timeout=600"
try_install() { $APT install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
echo "ensure_chromium: installing Debian's chromium for the console's browser tests (about 100 MB)" >&2
if ! try_install; then
    $APT update -qq >/dev/null 2>&1
    try_install
fi
if have_chromium; then
    echo "ensure_chromium: installed $(chromium --version 2>/dev/null | head -n1 || echo chromium)" >&2
else
    echo "ensure_chromium: WARNING: could not install chromium via apt-get" >&2
fi
exit 0
