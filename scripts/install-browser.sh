#!/usr/bin/env bash
# Installs Debian's headless browser for the status page's browser tests (`make test` runs this).
# Nothing is downloaded outside the distribution's own packages: chromium and its matching
# chromedriver come from apt. Without root or apt the tests skip and say why; this never fails.
set -u

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: chromium/chromedriver missing and cannot install them here" \
        "(needs root and apt-get); the browser tests will be skipped" >&2
    exit 0
fi
echo "install-browser: installing chromium and chromium-driver (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/tmp/install-browser.log 2>&1; then
    echo "install-browser: apt-get failed (see /tmp/install-browser.log);" \
        "the browser tests will be skipped" >&2
fi
exit 0
