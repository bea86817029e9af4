#!/usr/bin/env bash
# ensure_apt.sh PACKAGE COMMAND [PATH...]: install a Debian package with apt-get when COMMAND is not
# on PATH (nor any of the PATHs exists: a data-only package is checked by one of its files). Runs `apt-get update` only when a first install attempt fails and
# waits for other apt users (DPkg::Lock::Timeout). Never fails the caller: without apt (or root) it
# prints a warning and exits 0, and what needs the package then fails with a clear message.
set -u
pkg=$1 cmd=$2
shift 2

have() {
    command -v "$cmd" >/dev/null 2>&1 && return 0
    for p in "$@"; do [ -e "$p" ] && return 0; done
    return 1
}

if have "$@"; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure $pkg: WARNING: $pkg missing and apt-get unavailable; install it manually" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure $pkg: WARNING: $pkg missing and not root (no passwordless sudo); skipping" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
APT="$SUDO apt-get -o DPkg::Lock::Timeout=600"
try_install() { $APT install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; }
echo "ensure $pkg: installing it with apt-get" >&2
if ! try_install; then
    $APT update -qq >/dev/null 2>&1
    try_install
fi
if have "$@"; then
    echo "ensure $pkg: installed" >&2
else
    echo "ensure $pkg: WARNING: could not install $pkg via apt-get" >&2
fi
exit 0
