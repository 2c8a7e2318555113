#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the viewer's browser tests (tests/test_ui.py), which
# drive them through Selenium; nothing downloads a browser of its own. Idempotent: a second run
# only checks that both answer. Needs root (or sudo) and apt-get; elsewhere it says what to install
# and exits 0, and the browser tests skip (outside CI) or fail (in CI).
set -euo pipefail

have() { /usr/bin/chromium --version >/dev/null 2>&1 && /usr/bin/chromedriver --version >/dev/null 2>&1; }

if have; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get here: install chromium and its chromedriver yourself (RSTAR_CHROMIUM, RSTAR_CHROMEDRIVER name them)" >&2
    exit 0
fi
sudo=""
if [[ $(id -u) != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_chromium: not root and no sudo: run 'apt-get install chromium chromium-driver' as root" >&2
        exit 0
    fi
    sudo="sudo"
fi
echo "install_chromium: apt-get install chromium chromium-driver (once per machine)"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; then
    $sudo apt-get update >/dev/null
    $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null
fi
have || { echo "install_chromium: chromium or chromedriver does not run after the install" >&2; exit 1; }
/usr/bin/chromium --version
