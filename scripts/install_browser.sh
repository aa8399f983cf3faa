#!/usr/bin/env bash
# Installs what the browser test (tests/test_explorer_browser.py) needs: Debian's chromium.
#
#   bash scripts/install_browser.sh          # as root (CI), or with sudo available
#
# Playwright's Python package comes from the dev extra of pyproject.toml; it drives this
# chromium through executable_path=/usr/bin/chromium. Never run `playwright install`:
# it downloads a browser build of its own, which fails offline and is not needed.
# Exit status 0 when /usr/bin/chromium is usable afterwards, 1 otherwise (with a reason).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install chromium: apt-get not found (not a Debian/Ubuntu machine)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "cannot install chromium: not root and no password-less sudo" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
