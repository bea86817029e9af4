#!/usr/bin/env bash
# Install Debian's chromium via apt-get if it is missing: the console's browser tests drive it with
# Playwright (executable_path=/usr/bin/chromium). Playwright's own browser download is never used.
exec bash "$(dirname "$0")/ensure_apt.sh" chromium chromium /usr/bin/chromium
